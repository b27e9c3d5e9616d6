"""Screenshot a run's or an experiment's `report.html` with headless Chromium, to look at the report without a browser.

    python scripts/screenshot_report.py DIR [--out PNG] [--height PIXELS]

DIR is a run directory or an experiment's report directory (`<runs_dir>/experiments/<name>`).

The window is 1200 px wide and tall enough for the whole page: unless --height is given, a
first Chromium pass measures the page's height, and its width: a page wider than the window
(something that overflows sideways) is named on stderr. Prints the PNG's path.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTH = 1200
FALLBACK_HEIGHT = 3000
TIMEOUT_S = 60
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--hide-scrollbars",
)
# Loads the report in a frame the width of the screenshot and writes the frame's full height
# and width into the page, which --dump-dom then prints.
MEASURE = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="{url}" style="width:{width}px;height:100px;border:0"
 onload="const page=this.contentDocument.documentElement;
 document.body.dataset.height=page.scrollHeight; document.body.dataset.width=page.scrollWidth">
</iframe></body></html>"""


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def page_size(browser: str, url: str, timeout: float, width: int = WIDTH) -> tuple[int, int]:
    """The report's rendered (scroll width, height) in a window `width` px wide: a scroll
    width above `width` means something overflows sideways. Falls back to (`width`,
    FALLBACK_HEIGHT) if it cannot tell."""
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "measure.html"
        page.write_text(MEASURE.format(url=url, width=width))
        done = subprocess.run(
            [browser, *FLAGS, "--allow-file-access-from-files", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    found = {k: int(v) for k, v in re.findall(r'data-(height|width)="(\d+)"', done.stdout)}
    return found.get("width", width), found.get("height", FALLBACK_HEIGHT)


def _measured_height(browser: str, url: str) -> int:
    """The page's height, after naming on stderr any overflow sideways."""
    width, height = page_size(browser, url, TIMEOUT_S / 2)
    if width > WIDTH:
        print(f"warning: the report is {width} px wide in a {WIDTH} px window", file=sys.stderr)
    return height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", type=Path, help="run or experiment report directory holding report.html"
    )
    parser.add_argument("--out", type=Path, help="PNG to write (default RUN/report/screenshot.png)")
    parser.add_argument("--height", type=int, help="window height in pixels (default: measured)")
    args = parser.parse_args(argv)
    report = (args.run_dir / "report.html").resolve()
    if not report.is_file():
        print(
            f"{args.run_dir}: no report.html; run `finetune report {args.run_dir}` first",
            file=sys.stderr,
        )
        return 2
    browser = find_browser()
    if browser is None:
        print("chromium not found; install it with `apt-get install chromium`", file=sys.stderr)
        return 2
    out = (args.out or args.run_dir / "report" / "screenshot.png").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + TIMEOUT_S  # both passes together
    try:
        height = args.height or _measured_height(browser, report.as_uri())
        subprocess.run(
            [
                browser,
                *FLAGS,
                f"--window-size={WIDTH},{height}",
                f"--screenshot={out}",
                report.as_uri(),
            ],
            capture_output=True,
            check=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired:
        print(f"chromium took more than {TIMEOUT_S} s; no screenshot written", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"chromium failed:\n{exc.stderr.decode(errors='replace')}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
