"""Reading an archive from S3, where each request waits on the network rather than the CPU: a manifest's listing
(one request a file for its size and modification time) and the decoding stage's reads (a file's bytes). A real
S3-protocol server (moto in server mode) holds the files; a forwarding proxy in front of it adds ``--latency-ms``
to every request, standing in for the distance to a real bucket (a localhost server answers in a few
milliseconds, S3 from a data centre in about 10-30).

    python -m tools.s3_benchmark --files 2000 --decode-files 480 --latency-ms 20 --lookups 1 8 32 --read-ahead 1 4 8 16

The listing is measured on ``--files`` one-byte objects named by a manifest, once for each ``--lookups``; the
decoding stage (``pipeline.scoring.stages.decode_and_preprocess``, in this process, batches of 64) on ``--decode-files``
copies of the sample archive's files, once for each ``--read-ahead``, and once from local disk for reference.
Each line printed is JSON. The figures are in docs/benchmarks.md ("Reading from S3").
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import os
import pathlib
import tempfile
import threading
import time
import urllib.parse

from tools.local_s3 import s3_server

BUCKET = "s3-benchmark"
ROOT = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def delaying_proxy(upstream: str, latency: float, nodelay: bool = False):
    """A threaded HTTP proxy that waits ``latency`` seconds before forwarding each request to ``upstream``. Its
    answers go out as headers, then body: without ``nodelay`` (TCP_NODELAY) Nagle's algorithm and the client's
    delayed acknowledgement hold each body back about 40 ms more on Linux (measured in front of Orthanc: 43 ms a
    request instead of 1.3)."""
    target = urllib.parse.urlsplit(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = nodelay

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
    parser.add_argument("--decode-files", type=int, default=480)
    parser.add_argument("--read-ahead", type=int, nargs="+", default=[1, 16], help="files read ahead, each measured")
    arguments = parser.parse_args()
    os.environ.update({"AWS_ACCESS_KEY_ID": "benchmark", "AWS_SECRET_ACCESS_KEY": "benchmark",
                       "AWS_REGION": "us-east-1"})
    import boto3

    with s3_server() as endpoint, delaying_proxy(endpoint, arguments.latency_ms / 1000) as proxy, \
            tempfile.TemporaryDirectory() as folder:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        manifest = manifest_of_s3_files(client, arguments.files, pathlib.Path(folder))
        sources = decoding_sources(client, arguments.decode_files, pathlib.Path(folder))
        os.environ["AWS_ENDPOINT_URL"] = proxy  # every request from here on waits --latency-ms
        for lookups in arguments.lookups:
            print(json.dumps({"measured": "manifest listing", "lookups": lookups, "latency_ms": arguments.latency_ms,
                              **listing_rate(manifest, arguments.files, lookups)}))
        for read_ahead in arguments.read_ahead:
            print(json.dumps({"measured": "decoding stage, S3", "read_ahead": read_ahead,
                              "latency_ms": arguments.latency_ms, **decode_rate(sources, 0, read_ahead)}))
        print(json.dumps({"measured": "decoding stage, local disk", "read_ahead": max(arguments.read_ahead),
                          **decode_rate(sources, 1, max(arguments.read_ahead))}))


def manifest_of_s3_files(client, files: int, folder: pathlib.Path) -> str:
    """``files`` one-byte objects, and a manifest naming each of them."""
    keys = [f"night/p{index // 20}/s{index % 20}.dcm" for index in range(files)]
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    manifest = folder / "manifest.txt"
    manifest.write_text("".join(f"s3://{BUCKET}/{key}\n" for key in keys))
    return str(manifest)


def decoding_sources(client, files: int, folder: pathlib.Path) -> list[tuple[str, str, int]]:
    """``files`` copies of the sample archive's files, each on S3 and on local disk: (S3 URI, path, size)."""
    samples = sorted(path for path in (ROOT / "samples" / "archive").rglob("*") if path.is_file())
    local = folder / "archive"
    local.mkdir()
    sources = []
    for index in range(files):
        sample = samples[index % len(samples)]
        name = f"{index:06d}-{sample.name}"
        client.put_object(Bucket=BUCKET, Key=f"decode/{name}", Body=sample.read_bytes())
        (local / name).write_bytes(sample.read_bytes())
        sources.append((f"s3://{BUCKET}/decode/{name}", str(local / name), sample.stat().st_size))
    return sources


def listing_rate(manifest: str, files: int, lookups: int) -> dict:
    from pipeline.sources.listing import iter_manifest

    started = time.perf_counter()
    listed = list(iter_manifest(manifest, lookups=lookups))
    seconds = time.perf_counter() - started
    assert len(listed) == files and all(file.size == 1 for file in listed)
    return {"files": files, "seconds": round(seconds, 2), "files_per_second": round(files / seconds, 1)}


def decode_rate(sources: list[tuple[str, str, int]], which: int, read_ahead: int) -> dict:
    """Files a second through ``decode_and_preprocess`` in batches of 64, reading ``read_ahead`` files ahead."""
    import numpy as np

    from model.decode import DecodeLimits
    from model.preprocessing import PreprocessConfig
    from pipeline import schema as col
    from pipeline.scoring import stages

    stages.READ_AHEAD_FILES = read_ahead
    context = stages.StageContext("benchmark", "2026-11-30", PreprocessConfig(), DecodeLimits(), b"k" * 32, 0.5,
                                  "benchmark", "none")
    started, rows = time.perf_counter(), 0
    for start in range(0, len(sources), 64):
        chunk = sources[start:start + 64]
        batch = {col.SOURCE_URI: np.array([source[which] for source in chunk], dtype=object),
                 col.SOURCE_SIZE: np.array([source[2] for source in chunk], dtype=np.int64)}
        table = stages.decode_and_preprocess(batch, context)
        assert set(table[col.STATUS].to_pylist()) == {col.STATUS_OK}
        rows += table.num_rows
    seconds = time.perf_counter() - started
    return {"files": len(sources), "rows": rows, "seconds": round(seconds, 2),
            "files_per_second": round(len(sources) / seconds, 1)}

if __name__ == "__main__":
    main()
