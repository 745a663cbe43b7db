"""Helpers for tests that look at the built book in a real browser.

Debian's Chromium (ci/install_browser.sh) driven by Playwright for Python; Playwright's
own browser download is never used (no network beyond the package registries).

    with serve(book / "_build" / "html") as base, launch() as browser:
        page, report = open_page(browser, base + "/book/intro.html")
        report.assert_clean()

Every request that would leave 127.0.0.1 is recorded and aborted, so a book that leans
on a CDN fails the check instead of hanging on a sandboxed network.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
# Debian's Chromium here; GitHub's hosted Ubuntu runners ship Google Chrome instead.
CHROMIUM = os.environ.get("CTXN_CHROMIUM") or next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/google-chrome") if Path(p).is_file()), "/usr/bin/chromium"
)
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = frozenset({"127.0.0.1"})
# Schemes that never touch the network.
_LOCAL_SCHEMES = frozenset({"data", "blob", "about"})


def require_browser() -> None:
    """Skip when Chromium or Playwright is missing, except in CI, where it is an error:
    ci/install_browser.sh must have run there, and a skipped browser test hides that."""
    missing = []
    if not Path(CHROMIUM).is_file():
        missing.append(f"{CHROMIUM} (run ci/install_browser.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[dev]')")
    if missing:
        msg = "browser test needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@contextlib.contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on 127.0.0.1, a free port; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def launch():
    """Headless Debian Chromium under Playwright; yields a playwright Browser."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class PageReport:
    """What one page did while it loaded and while the test used it."""

    url: str
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        problems = {
            "uncaught JavaScript errors": self.page_errors,
            "console errors": self.console_errors,
            "requests leaving 127.0.0.1": self.external_requests,
            "failed local requests": self.failed_requests,
        }
        bad = {k: v for k, v in problems.items() if v}
        assert not bad, f"{self.url}: {bad}"


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in _LOCAL_SCHEMES or parts.hostname in LOCAL_HOSTS


def open_page(browser, url: str, *, viewport=(1280, 900), timeout_ms: int = 30_000):
    """Open ``url`` in a fresh context and wait until the network is idle.

    Returns ``(page, report)``; the report keeps collecting until the page is closed.
    """
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    report = PageReport(url)
    page.on("pageerror", lambda exc: report.page_errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and report.console_errors.append(msg.text))

    def route(r):
        if _is_local(r.request.url):
            r.continue_()
        else:
            report.external_requests.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on(
        "requestfailed",
        lambda req: _is_local(req.url) and report.failed_requests.append(f"{req.url}: {req.failure}"),
    )
    page.on(
        "response",
        lambda resp: _is_local(resp.url) and resp.status >= 400
        and report.failed_requests.append(f"{resp.url}: HTTP {resp.status}"),
    )
    # Waiting for networkidle in goto itself: a separate wait_for_load_state after
    # "load" never returned with Debian's Chromium 156 under Playwright 1.65.
    page.goto(url, wait_until="networkidle")
    # networkidle can come before the document is parsed to its end (seen: 2 of a page's 9
    # cell outputs there); what the tests read must be the whole page.
    page.wait_for_function("document.readyState === 'complete'")
    return page, report


def plotly_figures_drawn(page) -> tuple[int, int]:
    """(figures emitted by ctxneurons.book.figures.show, of those, how many plotly drew), now."""
    return tuple(page.evaluate(
        """() => {
            const figs = [...document.querySelectorAll('.ctxn-plotly-figure')];
            const drawn = figs.filter(f => f.querySelector('.js-plotly-plot .main-svg'));
            return [figs.length, drawn.length];
        }"""
    ))


def figures_in_html(html: str) -> int:
    """How many figures a page's HTML, as served, holds (see ctxneurons.book.figures.FIGURE_CLASS)."""
    return html.count('class="ctxn-plotly-figure"')


def wait_for_figures(page, expected: int, timeout_ms: int = 60_000) -> tuple[int, int]:
    """Wait until the page shows ``expected`` figures (the count in its HTML) and plotly has
    drawn every one, then return :func:`plotly_figures_drawn`. It waits for the figures
    themselves, never for a fixed time: under load plotly.js and the page's scripts finish
    well after the network is idle. On a timeout it returns what there is, for the test's
    assertion to report."""
    try:
        page.wait_for_function(
            """n => {
                const figs = [...document.querySelectorAll('.ctxn-plotly-figure')];
                return figs.length >= n && figs.every(f => f.querySelector('.js-plotly-plot .main-svg'));
            }""",
            arg=expected, timeout=timeout_ms, polling=100,
        )
    except Exception as exc:  # playwright's TimeoutError; the assertion below says what was missing
        if "Timeout" not in type(exc).__name__:
            raise
    return plotly_figures_drawn(page)


# What a reader must never meet in a cell's output: Python's plumbing.
NOISE = {
    "log line": re.compile(r"^(?:DEBUG|INFO|WARNING)(?:\s+[\w.]+:|:[\w.]*:)", re.M),
    "progress bar": re.compile(r"\d+%\|"),
    "absolute path": re.compile(r"(?<![\w./~-])/(?:tmp|home|root|work|Users|private|var|mnt|opt)/[^\s'\")]+"),
    "raw dict": re.compile(r"\{'[^'\n]+': "),
}


def output_noise(outputs: list[str], inputs: tuple[str, ...] = ()) -> list[str]:
    """The noise in a page's cell outputs (their text, in order): one 'kind: excerpt' per
    finding, e.g. a logging line, a progress bar, a path of the build machine, a printed dict.

    inputs: paths the build was given as its model, corpus or calibration text; the captions
    name those (it is how a local model is identified), so they are not noise."""
    found = []
    for k, text in enumerate(outputs):
        for given in sorted(inputs, key=len, reverse=True):
            text = text.replace(given, "<input>")
        for kind, pattern in NOISE.items():
            for m in pattern.finditer(text):
                found.append(f"output {k + 1}, {kind}: {text[max(0, m.start() - 40): m.end() + 40]!r}")
    return found


def page_outputs(page) -> tuple[list[str], int]:
    """(the text of every cell output on the page, how many output boxes show nothing at all)."""
    return tuple(page.evaluate(
        """() => {
            const outs = [...document.querySelectorAll('.cell_output')];
            const empty = outs.filter(o => !o.innerText.trim() &&
                !o.querySelector('img, svg, canvas, iframe, table, input, textarea, .ctxn-plotly-figure, .ctxn-live'));
            return [outs.map(o => o.innerText), empty.length];
        }"""
    ))


def wide_outputs(page) -> list[str]:
    """The start of every cell output on the page whose text runs past its own box or the
    article's column (a long line the page clips), and of every table in an output that is
    wider than its box (cut off behind a scroll bar), at the page's current width. A table in
    a folded ``<details>`` is left out: the reader who opens it asked for all of it."""
    return page.evaluate(
        """() => {
            const column = (document.querySelector('article') || document.querySelector('main') || document.body).getBoundingClientRect();
            const folded = e => { const d = e.closest('details'); return d !== null && !d.open; };
            const pres = [...document.querySelectorAll('.cell_output pre')]
                .filter(o => o.scrollWidth > o.clientWidth + 1 || o.getBoundingClientRect().right > column.right + 1);
            const tables = [...document.querySelectorAll('.cell_output table')].filter(t => !folded(t))
                .filter(t => t.scrollWidth > t.parentElement.clientWidth + 1 || t.getBoundingClientRect().right > column.right + 1);
            return [...pres, ...tables].map(o => o.innerText.slice(0, 60));
        }"""
    )


def screenshot(page, name: str) -> Path:
    """Full-page PNG in test-artifacts/ (gitignored), for a person to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def build_book(book: Path, *extra_args: str, timeout: int = 1800,
               check: bool = True) -> subprocess.CompletedProcess:
    """``jupyter-book build book -W -n --keep-going`` with this interpreter's install;
    with ``check``, fails the test with the build log on a non-zero exit."""
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else shutil.which("jupyter-book") or "jupyter-book",
           "build", str(book), "-W", "-n", "--keep-going", *extra_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"book build failed ({proc.returncode}):\n{proc.stdout[-8000:]}\n{proc.stderr[-8000:]}")
    return proc
