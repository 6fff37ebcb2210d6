"""A small load measurement of the review app's on-demand scoring: concurrent clients each POST one image to
``/api/score`` of a running app (``python -m jobs.review``) after a warm-up, and the latencies are summarised
(median, p95, requests per second). Bounded in count; for the loopback address of an app you started.

    python -m tools.review_load --url http://127.0.0.1:8000 --image samples/archive/loose/glioma-Tr-gl_0470.jpg \
        --clients 4 --requests 50 [--token-file FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import statistics
import time
import urllib.request


def score(url: str, image: pathlib.Path, token: str | None) -> float:
    headers = {"Content-Type": "application/octet-stream", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(f"{url}/api/score?name={image.name}", data=image.read_bytes(), headers=headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        json.loads(response.read())
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", type=pathlib.Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50, help="requests per client, after the warm-up")
    parser.add_argument("--warm-up", type=int, default=10)
    parser.add_argument("--token-file")
    args = parser.parse_args()
    token = pathlib.Path(args.token_file).read_text().strip() if args.token_file else None
    for _ in range(args.warm_up):
        score(args.url, args.image, token)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        latencies = sorted(pool.map(lambda _: score(args.url, args.image, token),
                                    range(args.clients * args.requests)))
    elapsed = time.perf_counter() - started
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * len(latencies))) - 1)]
    print(json.dumps({"clients": args.clients, "requests": len(latencies), "median_ms": round(
        1000 * statistics.median(latencies), 1), "p95_ms": round(1000 * p95, 1), "max_ms": round(
        1000 * latencies[-1], 1), "requests_per_second": round(len(latencies) / elapsed, 1)}))


if __name__ == "__main__":
    main()
