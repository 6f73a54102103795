"""Where the Space's browser test (tests/test_space_folder.py) finds Chromium, the way a user's machine has one.

In this order: `$FAPN_CHROMIUM` (a path, when set it is the only candidate), the first of `CANDIDATES` on `PATH`
(Debian's `chromium`, Ubuntu's `chromium-browser`, Google Chrome), then Playwright's own browser when
`playwright install chromium` has put one in its cache. The Makefile's `browser` target runs this file as a script and
installs Debian's chromium with apt-get only when it finds nothing. Run as a script it prints the path and exits 0, or
says what it looked for on stderr and exits 1 (2 when `$FAPN_CHROMIUM` names something that is not an executable).
"""

from __future__ import annotations

import os
import shutil
import sys

# Names on PATH, most specific first. The Makefile's `browser` target runs this file rather than keeping its own list.
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
OVERRIDE = "FAPN_CHROMIUM"


class BrowserOverrideError(ValueError):
    """`$FAPN_CHROMIUM` is set but does not name an executable file."""


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def playwright_chromium() -> str | None:
    """Playwright's own Chromium when it is installed (its download does not work everywhere, so it is the last
    resort, never installed by us); None when Playwright or its browser is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as playwright:
            path = playwright.chromium.executable_path
    except Exception:  # a broken or half-installed Playwright driver: there is no usable browser here
        return None
    return path if path and _is_executable(path) else None


def find_chromium() -> str | None:
    """The path of a Chromium that Playwright can drive with `executable_path`, or None when there is none.

    Raises `BrowserOverrideError` when `$FAPN_CHROMIUM` is set to something that is not an executable file: a typo
    there should not be hidden by a fallback to another browser.
    """
    override = os.environ.get(OVERRIDE)
    if override:
        if not _is_executable(override):
            raise BrowserOverrideError(f"{OVERRIDE}={override!r} is not an executable file")
        return override
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return playwright_chromium()


def main() -> int:
    try:
        path = find_chromium()
    except BrowserOverrideError as error:
        print(error, file=sys.stderr)
        return 2
    if path is None:
        print(
            f"no Chromium found: none of {', '.join(CANDIDATES)} on PATH, no Playwright browser, {OVERRIDE} unset",
            file=sys.stderr,
        )
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
