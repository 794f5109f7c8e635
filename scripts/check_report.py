"""Opens a run's report.html in headless Chromium and checks that it shows every one of its pictures.

    python scripts/check_report.py RUN_DIR [--screenshot PATH] [--chromium /usr/bin/chromium]

Three checks: each <img> of the file is a data URI of a valid PNG; Chromium's DOM (--dump-dom) holds the same
images; and each picture's pixels appear, unchanged, in a full-page screenshot (images are shown at their natural
size, so a picture that failed to decode, was hidden or was scaled is caught). Exit status 0 when all pass.
Chromium runs with the flags this sandboxed, offline machine needs and a fresh profile folder.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import io
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1", "--virtual-time-budget=5000"]
PAGE_MARGIN = 300  # px of window width beyond the widest picture (body margins)
TEXT_HEIGHT = 4000  # px of window height beyond the pictures (headings, tables, captions)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def image_sources(html_text: str) -> list[str]:
    """The src of every <img> of a page."""
    parser = _Images()
    parser.feed(html_text)
    return parser.sources


def decode_png(source: str) -> np.ndarray:
    """RGB pixels of a `data:image/png;base64,` URI; ValueError when it is anything else or does not decode."""
    prefix = "data:image/png;base64,"
    if not source.startswith(prefix):
        raise ValueError(f"not a PNG data URI: {source[:60]!r}")
    try:
        data = base64.b64decode(source[len(prefix):], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise ValueError(f"data URI holds {image.format}, not PNG")
            return np.asarray(image.convert("RGB"))
    except (binascii.Error, OSError) as err:
        raise ValueError(f"data URI does not decode as a PNG ({err})") from err


def chromium(binary: str, profile: Path, *args: str) -> str:
    command = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def find_picture(screenshot: np.ndarray, picture: np.ndarray) -> tuple[int, int] | None:
    """(y, x) where `picture` appears pixel for pixel in `screenshot`, or None."""
    height, width = picture.shape[:2]
    if height > screenshot.shape[0] or width > screenshot.shape[1]:
        return None
    # anchor on the picture's most varied row; a plain row would match anywhere
    anchor = max(range(height), key=lambda r: len(np.unique(picture[r].reshape(-1, 3), axis=0)))
    needle = picture[anchor].tobytes()
    for y in range(anchor, screenshot.shape[0] - (height - anchor) + 1):
        row = screenshot[y].tobytes()
        start = row.find(needle)
        while start != -1:
            if start % 3 == 0:
                top, left = y - anchor, start // 3
                if np.array_equal(screenshot[top:top + height, left:left + width], picture):
                    return top, left
            start = row.find(needle, start + 1)
    return None


def check_report(run_dir: Path, screenshot_path: Path | None = None, binary: str = "/usr/bin/chromium") -> list[str]:
    """The problems found with `run_dir/report.html` (an empty list when it shows all its pictures)."""
    page = run_dir / "report.html" if run_dir.is_dir() else run_dir
    if not page.is_file():
        return [f"{page}: missing"]
    sources = image_sources(page.read_text())
    problems, pictures = [], []
    for i, source in enumerate(sources):
        try:
            pictures.append(decode_png(source))
        except ValueError as err:
            problems.append(f"image {i + 1} of {len(sources)}: {err}")
    if not sources:
        problems.append(f"{page}: no <img> elements")
    if problems:
        return problems
    url = page.resolve().as_uri()
    width = max(p.shape[1] for p in pictures) + PAGE_MARGIN
    height = sum(p.shape[0] for p in pictures) + TEXT_HEIGHT
    with tempfile.TemporaryDirectory(prefix="vwe-chromium-") as scratch:
        scratch = Path(scratch)
        dom_sources = image_sources(chromium(binary, scratch / "profile-dom", "--dump-dom", url))
        if dom_sources != sources:
            problems.append(f"Chromium's DOM has {len(dom_sources)} images (or other sources) for the file's "
                            f"{len(sources)}")
        shot = screenshot_path or scratch / "screenshot.png"
        chromium(binary, scratch / "profile-shot", f"--window-size={width},{height}", f"--screenshot={shot}", url)
        with Image.open(shot) as image:
            screen = np.asarray(image.convert("RGB"))
    if screen.std() == 0:
        problems.append("the screenshot is blank")
    for i, picture in enumerate(pictures):
        if find_picture(screen, picture) is None:
            problems.append(f"image {i + 1} of {len(pictures)} ({picture.shape[1]} x {picture.shape[0]} px) "
                            "is not shown")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder with report.html (or the HTML file itself)")
    parser.add_argument("--screenshot", type=Path, help="keep the full-page screenshot here")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary")
    args = parser.parse_args(argv)
    problems = check_report(args.run_dir, args.screenshot, args.chromium)
    for problem in problems:
        print(f"check_report: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_report: {args.run_dir}: Chromium shows all pictures of the report")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
