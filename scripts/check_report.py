"""Opens a run's report.html in headless Chromium and checks that it shows every one of its pictures.

    python scripts/check_report.py RUN_DIR [--screenshot PATH] [--chromium /usr/bin/chromium]

The checks: each <img> of the file is a data URI of a valid PNG of the size its width and height attributes state,
and not blank (one colour); each figure of FIGURES is there, as an image or, where the run lacks its inputs, a note
with its id; Chromium's DOM (--dump-dom) holds the same images; each picture's pixels appear, unchanged, in a
full-page screenshot (images are shown at their natural size, so a picture that failed to decode, was hidden or was
scaled is caught); and the reference column of the scores table is shown: a second screenshot, of a copy of the page
whose reference cells are painted in a marker colour, holds one band of that colour per cell. Exit status 0 when all
pass. Chromium runs with the flags this sandboxed, offline machine needs and a fresh profile folder.
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
# the figures of vwe/report/page.html.j2 by element id: an <img>, or a note where the run has no inputs for it
FIGURES = ("stage-timings", "loss-train_cam", "loss-train_seg", "cam-curve")
MARKER = (255, 0, 255)  # a colour no part of the page uses
# text in the marker colour too, so that each visible cell is one solid block; borders between rows stay grey
MARKER_CSS = ".reference { background: rgb(255, 0, 255) !important; color: rgb(255, 0, 255) !important; }"


class _Page(HTMLParser):
    """The attributes of every <img>, the tag of every element id and the number of reference-column cells."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.ids: dict[str, str] = {}
        self.references = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(named)
        if "id" in named:
            self.ids[named["id"]] = tag
        if "reference" in named.get("class", "").split():
            self.references += 1


def parse_page(html_text: str) -> _Page:
    parser = _Page()
    parser.feed(html_text)
    return parser


def image_sources(html_text: str) -> list[str]:
    """The src of every <img> of a page."""
    return [image.get("src", "") for image in parse_page(html_text).images]


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


def check_report(run_dir: Path, screenshot_path: Path | None = None,
                 binary: str = "/usr/bin/chromium") -> tuple[list[str], list[str]]:
    """(the problems found with `run_dir/report.html`, an empty list when it shows all its pictures and its
    reference column; a line per figure of FIGURES saying what showed it)."""
    page = run_dir / "report.html" if run_dir.is_dir() else run_dir
    if not page.is_file():
        return [f"{page}: missing"], []
    text = page.read_text()
    parsed = parse_page(text)
    problems, pictures, names = [], [], []
    for i, image in enumerate(parsed.images):
        name = f"image {i + 1} of {len(parsed.images)}" + (f" ({image['id']})" if image.get("id") else "")
        names.append(name)
        try:
            picture = decode_png(image.get("src", ""))
        except ValueError as err:
            problems.append(f"{name}: {err}")
            continue
        stated = (image.get("width"), image.get("height"))
        if stated != (str(picture.shape[1]), str(picture.shape[0])):
            problems.append(f"{name}: {picture.shape[1]} x {picture.shape[0]} px, but the page states "
                            f"{stated[0]} x {stated[1]}")
        if (picture == picture[0, 0]).all():
            problems.append(f"{name}: blank (one colour)")
        pictures.append(picture)
    if not parsed.images:
        problems.append(f"{page}: no <img> elements")
    slots = []
    for figure in FIGURES:
        tag = parsed.ids.get(figure)
        if tag not in ("img", "p"):
            problems.append(f"figure {figure}: no image or note with this id")
        slots.append(f"figure {figure}: " + ("an image" if tag == "img" else "a note (the run lacks its inputs)"))
    if parsed.references == 0:
        problems.append("no reference column (no element of class \"reference\")")
    if problems:
        return problems, slots
    url = page.resolve().as_uri()
    width = max(p.shape[1] for p in pictures) + PAGE_MARGIN
    height = sum(p.shape[0] for p in pictures) + TEXT_HEIGHT
    window = f"--window-size={width},{height}"
    with tempfile.TemporaryDirectory(prefix="vwe-chromium-") as scratch:
        scratch = Path(scratch)
        dom_sources = image_sources(chromium(binary, scratch / "profile-dom", "--dump-dom", url))
        if dom_sources != image_sources(text):
            problems.append(f"Chromium's DOM has {len(dom_sources)} images (or other sources) for the file's "
                            f"{len(pictures)}")
        shot = screenshot_path or scratch / "screenshot.png"
        screen = screenshot(binary, scratch / "profile-shot", window, shot, url)
        marked = scratch / "marked.html"
        marked.write_text(text.replace("</style>", f"{MARKER_CSS}\n</style>", 1))
        marked_screen = screenshot(binary, scratch / "profile-marked", window, scratch / "marked.png",
                                   marked.as_uri())
    if screen.std() == 0:
        problems.append("the screenshot is blank")
    for name, picture in zip(names, pictures):
        if find_picture(screen, picture) is None:
            problems.append(f"{name} ({picture.shape[1]} x {picture.shape[0]} px) is not shown")
    bands = marker_bands(marked_screen)
    if bands < parsed.references:
        problems.append(f"the reference column is not shown: {bands} of its {parsed.references} cells are visible")
    return problems, [*slots, f"reference column: {parsed.references} cells shown"]


def screenshot(binary: str, profile: Path, window: str, path: Path, url: str) -> np.ndarray:
    chromium(binary, profile, window, f"--screenshot={path}", url)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def marker_bands(screen: np.ndarray) -> int:
    """Runs of consecutive screenshot rows holding marker pixels: one per visible reference cell, since the rows
    of a table are parted by grey borders."""
    rows = np.flatnonzero((screen == MARKER).all(axis=-1).any(axis=1))
    return 0 if len(rows) == 0 else 1 + int(np.count_nonzero(np.diff(rows) > 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder with report.html (or the HTML file itself)")
    parser.add_argument("--screenshot", type=Path, help="keep the full-page screenshot here")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary")
    args = parser.parse_args(argv)
    problems, shown = check_report(args.run_dir, args.screenshot, args.chromium)
    for problem in problems:
        print(f"check_report: {problem}", file=sys.stderr)
    if not problems:
        for line in shown:
            print(f"check_report: {line}")
        print(f"check_report: {args.run_dir}: Chromium shows all pictures of the report and its reference column")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
