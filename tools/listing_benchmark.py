"""How long a manifest of S3 files takes to list: each file's size and modification time is one request, so the
time is the network's round trips, not the CPU's. A real S3-protocol server (moto in server mode) holds the files;
a forwarding proxy in front of it adds ``--latency-ms`` to every request, standing in for the distance to a real
bucket (a localhost server answers in a few milliseconds, S3 from a data centre in about 10-30).

    python -m tools.listing_benchmark --files 2000 --latency-ms 20 --lookups 1 32

Each line printed is JSON: the lookups at once, the files, the seconds and the files a second.
The figures are in docs/benchmarks.md ("A manifest of S3 files").
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BUCKET = "listing-benchmark"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def s3_server():
    """moto's S3 server on a free localhost port, until the block ends."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@contextlib.contextmanager
def delaying_proxy(upstream: str, latency: float):
    """A threaded HTTP proxy that waits ``latency`` seconds before forwarding each request to ``upstream``."""
    target = urllib.parse.urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def forward(self):
            time.sleep(latency)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            connection.request(self.command, self.path, body, dict(self.headers))
            answer = connection.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():  # a HEAD answer's length is the object's: kept as it is
                if name.lower() not in ("transfer-encoding", "connection") and not (
                        name.lower() == "content-length" and self.command != "HEAD"):
                    self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every request")
    parser.add_argument("--lookups", type=int, nargs="+", default=[1, 32], help="S3 lookups at once, each measured")
    arguments = parser.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "benchmark", "AWS_SECRET_ACCESS_KEY": "benchmark",
                       "AWS_REGION": "us-east-1"})
    import boto3

    from pipeline.listing import iter_manifest

    with s3_server() as endpoint, delaying_proxy(endpoint, arguments.latency_ms / 1000) as proxy, \
            tempfile.TemporaryDirectory() as folder:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        keys = [f"night/p{index // 20}/s{index % 20}.dcm" for index in range(arguments.files)]
        for key in keys:
            client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
        manifest = os.path.join(folder, "manifest.txt")
        with open(manifest, "w") as lines:
            lines.write("".join(f"s3://{BUCKET}/{key}\n" for key in keys))
        os.environ["AWS_ENDPOINT_URL"] = proxy
        for lookups in arguments.lookups:
            started = time.perf_counter()
            files = list(iter_manifest(manifest, lookups=lookups))
            seconds = time.perf_counter() - started
            assert len(files) == len(keys) and all(file.size == 1 for file in files)
            print(json.dumps({"lookups": lookups, "files": len(files), "latency_ms": arguments.latency_ms,
                              "seconds": round(seconds, 2), "files_per_second": round(len(files) / seconds, 1)}))


if __name__ == "__main__":
    main()
