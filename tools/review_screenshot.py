"""Pictures of the review app for the README: the sample archive screened as ``make demo`` screens it, its results
served by ``python -m jobs.review``, and the worklist (with ``--case``, also the first case's page) captured by
Debian's Chromium through Playwright, as ``tests/app/test_review.py`` drives it, into PNG files.

    python -m tools.review_screenshot [--output docs/images] [--case] [--max-kb 300]

The archive is screened into a temporary folder under a throwaway pseudonym key (``out/demo`` is left as it is).
There a reviewer, with the keys a radiologist uses, confirms the first flagged series and dismisses the tumor-free
series the model flagged (the false alarm the README describes), so the worklist shows review states. A picture
over ``--max-kb`` is saved with a dithered 256-colour palette. Writes ``review-worklist.png`` (and
``review-case.png``) and prints what it wrote, with the sizes.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``) and the playwright package (the test extra). The pages
show only pseudonymous keys, file references and file names, as the app always does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

from infra.ports import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 860}
REVIEWER = "Dr Example"
START_SECONDS = 300  # Ray, Serve and the heat-map model starting on a small machine


def screen_demo(folder: pathlib.Path, key_file: pathlib.Path) -> pathlib.Path:
    """The sample archive screened into ``folder/results``, as ``make demo`` screens it; the results folder."""
    results = folder / "results"
    done = subprocess.run([sys.executable, "-m", "jobs.screen", "--input", str(ROOT / "samples" / "archive"),
                           "--output", str(results), "--pseudonym-key-file", str(key_file), "--no-report"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"screening the sample archive failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return results


@contextlib.contextmanager
def review_app(results: pathlib.Path, key_file: pathlib.Path, log_file: pathlib.Path) -> Iterator[str]:
    """``python -m jobs.review`` serving ``results`` on a free loopback port until the block ends; its URL."""
    port = free_port()
    with log_file.open("w+") as log:
        process = subprocess.Popen([sys.executable, "-m", "jobs.review", "--results", str(results), "--port",
                                    str(port), "--reviewer", REVIEWER, "--pseudonym-key-file", str(key_file)],
                                   cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + START_SECONDS
            while "listening on" not in log_file.read_text() and process.poll() is None:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the review app did not start within {START_SECONDS} s")
                time.sleep(2)
            if process.poll() is not None:
                raise SystemExit(f"the review app stopped:\n{log_file.read_text()[-3000:]}")
            yield f"http://127.0.0.1:{port}"
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)


def follow(page, act: Callable[[], None]) -> None:
    """An action that leads to another page (a link clicked, a key that posts a form), and that page loaded: its
    script has run, so its keys work."""
    with page.expect_navigation(wait_until="load"):
        act()


def review(page, row, key: str) -> str:
    """Open the case of a worklist row, give it the verdict of ``key``, and go back to the worklist; the case's
    URL."""
    follow(page, row.locator("a.case-link").click)
    case = page.url
    follow(page, lambda: page.keyboard.press(key))
    follow(page, lambda: page.keyboard.press("Escape"))
    return case


def capture(url: str, output: pathlib.Path, case: bool) -> list[pathlib.Path]:
    """Confirm the first flagged series and dismiss the tumor-free one, then the worklist (and the first case's
    page)."""
    from playwright.sync_api import sync_playwright

    written = [output / "review-worklist.png"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(120_000)  # a case page re-reads its slices and draws a heat map
        page.goto(url + "/", wait_until="load")
        series = page.locator("#worklist tr.item[data-kind=series]")
        first_case = review(page, series.first, "c")
        tumor_free = series.filter(has_text="notumor")
        if tumor_free.count():
            review(page, tumor_free.first, "d")
        page.screenshot(path=str(written[0]), full_page=True)
        if case:
            written.append(output / "review-case.png")
            page.goto(first_case, wait_until="load")
            page.screenshot(path=str(written[1]))
        browser.close()
    return written


def fit(path: pathlib.Path, max_kb: int) -> None:
    """The picture as it is when small enough, else with a 256-colour palette, dithered so the heat map's colours
    do not band (text stays sharp); said when even that is over the bound."""
    if path.stat().st_size <= max_kb * 1024:
        return
    from PIL import Image

    with Image.open(path) as image:
        colours = image.convert("RGB")
    palette = colours.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    reduced = colours.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    buffer = io.BytesIO()
    reduced.save(buffer, format="PNG", optimize=True)
    path.write_bytes(buffer.getvalue())
    if path.stat().st_size > max_kb * 1024:
        print(f"{path}: {path.stat().st_size // 1024} KB even with a palette, over {max_kb} KB", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.review_screenshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "docs" / "images"), help="folder for the PNG files")
    parser.add_argument("--case", action="store_true", help="also the first case's page (review-case.png)")
    parser.add_argument("--max-kb", type=int, default=300, help="largest picture kept as captured (KB)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        parser.error(f"no browser at {CHROMIUM}: install Debian's chromium (apt-get install chromium)")
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="review-screenshot-") as folder:
        folder = pathlib.Path(folder)
        key_file = folder / "pseudonym.key"
        key_file.write_text(secrets.token_hex(32) + "\n")
        os.chmod(key_file, 0o600)
        results = screen_demo(folder, key_file)
        with review_app(results, key_file, folder / "review.log") as url:
            written = capture(url, output, args.case)
    for path in written:
        fit(path, args.max_kb)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
