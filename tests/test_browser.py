"""The rendered smoke book in a real browser (system Chromium driven by Playwright).

Every page must load from 127.0.0.1 with no failed request (all other hosts are blocked, so a
CDN reference fails), no page errors beyond the documented benign ones, a drawn canvas in every
Bokeh figure, and internal links that resolve. A screenshot of each page goes to
``outputs/smoke/screenshots/``. Skipped, with the fix, when Chromium is not installed.
"""

import functools
import http.server
import shutil
import threading
from pathlib import Path
from urllib.parse import urljoin, urlparse

import pytest

from conftest import SMOKE_OUTPUTS

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BENIGN = (
    "Identifier 'THEBE_JS_URL' has already been declared",
    "Got invalid theme mode",
    "favicon",
    "ReadPixels",
    "GPU stall",
)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
COUNT_CANVASES = """() => {
  let n = 0;
  const walk = (root) => {
    root.querySelectorAll('*').forEach((el) => {
      if (el.tagName === 'CANVAS' && el.width > 0 && el.height > 0) n += 1;
      if (el.shadowRoot) walk(el.shadowRoot);
    });
  };
  walk(document);
  return n;
}"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(directory: Path):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _pages(html: Path) -> list[Path]:
    skip = {"genindex.html", "search.html"}
    return sorted(
        p for p in html.rglob("*.html")
        if p.name not in skip
        and not any(part.startswith("_") for part in p.relative_to(html).parts)
    )


def check_book(html: Path, screenshots: Path | None = None) -> dict[str, list[str]]:
    """Problems found per page (an empty list when the page is fine)."""
    from playwright.sync_api import sync_playwright

    server = _serve(html)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    problems: dict[str, list[str]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.route(
                "**/*",
                lambda route: route.continue_()
                if urlparse(route.request.url).hostname == "127.0.0.1" else route.abort(),
            )
            for path in _pages(html):
                relative = path.relative_to(html).as_posix()
                found: list[str] = []
                page = context.new_page()
                page.on("requestfailed", lambda r, f=found: f.append(f"request failed: {r.url}"))
                page.on("pageerror", lambda e, f=found: f.append(f"page error: {e}"))
                page.on("console", lambda m, f=found: f.append(f"console error: {m.text}")
                        if m.type == "error" else None)
                page.on("response", lambda r, f=found: f.append(f"HTTP {r.status}: {r.url}")
                        if r.status >= 400 else None)
                page.goto(base + relative, wait_until="networkidle")
                if page.locator(".hv-jupyter-exc").count():
                    found.append("a HoloViews figure failed to render (exception shown)")
                roots = page.locator(".bk-root, [data-root-id]").count()
                if roots:
                    page.wait_for_timeout(1500)
                    canvases = page.evaluate(COUNT_CANVASES)
                    figures = page.content().count('"name":"Figure"')
                    if figures and canvases == 0:
                        found.append(f"{figures} Bokeh figure(s) but no canvas drawn")
                for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
                    target = urlparse(urljoin(base + relative, href))
                    if target.hostname == "127.0.0.1":
                        local = html / target.path.lstrip("/")
                        if not (local.is_file() or (local / "index.html").is_file()):
                            found.append(f"broken internal link: {href}")
                if screenshots is not None:
                    screenshots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=screenshots / (relative.replace("/", "__") + ".png"),
                                    full_page=False)
                page.close()
                problems[relative] = [p for p in found if not any(b in p for b in BENIGN)]
            browser.close()
    finally:
        server.shutdown()
    return problems


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        pytest.skip("Chromium not found: install it with `apt-get install chromium` (Debian) "
                    "to run the browser tests; .ci/run does this in CI.")
    return CHROMIUM


def test_every_page_loads_offline_with_figures_drawn(chromium, smoke_book):
    problems = check_book(smoke_book, SMOKE_OUTPUTS / "smoke" / "screenshots")
    assert len(problems) >= 5
    assert {page: found for page, found in problems.items() if found} == {}
    assert any(p.startswith("notebooks/") for p in problems)


def test_breaking_offline_assets_is_caught(chromium, smoke_book, tmp_path):
    broken = tmp_path / "html"
    shutil.copytree(smoke_book, broken)
    for asset in (broken / "_static" / "offline" / "bokeh").glob("bokeh-3*.min.js"):
        asset.unlink()
    problems = check_book(broken)
    failing = {page: found for page, found in problems.items() if found}
    assert failing, "removing BokehJS must leave figures blank and fail the check"
    messages = [p for found in failing.values() for p in found]
    assert any("no canvas drawn" in p or "HTTP 404" in p for p in messages)
