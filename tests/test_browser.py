"""The rendered smoke book in a real browser (system Chromium driven by Playwright).

Every page must load from 127.0.0.1 with no failed request (all other hosts are blocked, so a
CDN reference fails), no console error or page error (beyond the few unavoidable ones in
``BENIGN``), a drawn canvas in every Bokeh figure, no Bokeh figure that draws no glyph (e.g. bars
lost to a categorical axis shared with another plot), nothing in the article wider than the
article unless it scrolls inside its own container, and internal links that resolve. A
screenshot of each page goes to ``outputs/smoke/screenshots/``. The negative tests prove each
check can fail. Skipped, with the fix, when Chromium is not installed.
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
#: Messages that are not defects of the book. Everything else (any console error, any page
#: error, any failed request) fails the test.
BENIGN = (
    # The server of this test has no /favicon.ico and Chromium asks for it on every page; a
    # real host serves its own (or none), the book never references one.
    "/favicon.ico",
)
#: A phone in portrait: the article must fit there too (checked after the desktop checks).
PHONE = {"width": 390, "height": 844}
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
#: Keeps every BokehJS instance of a page in ``window.__bokeh_instances``: a second BokehJS
#: loader on a page (e.g. from ``import hvplot.pandas`` after ``hv.extension``) replaces
#: ``window.Bokeh`` with a fresh instance that knows none of the figures drawn before.
CAPTURE_BOKEH = """(() => {
  const instances = [];
  let current;
  Object.defineProperty(window, '__bokeh_instances', {value: instances});
  Object.defineProperty(window, 'Bokeh', {
    configurable: true,
    get() { return current; },
    set(value) { current = value; if (value && !instances.includes(value)) instances.push(value); },
  });
})();"""
#: Bokeh figures that draw nothing: for every figure (Plot view) in ``Bokeh.index``, count the
#: glyphs of its visible GlyphRenderers whose screen coordinates are finite and overlap the
#: plot frame. Bokeh maps a categorical factor missing from the axis range (e.g. bars of one
#: plot on an axis shared with another plot's factors), an empty data source or data outside
#: the axis limits to no drawn glyph, so such a figure counts 0.
EMPTY_FIGURES = """() => {
  const views = [];
  for (const B of window.__bokeh_instances || [])
    if (B.index && typeof B.index.all_views === 'function') views.push(...B.index.all_views());
  const figures = new Map();
  for (const v of views) {
    if (v.frame !== undefined && Array.isArray(v.model.renderers) && v.model.toolbar)
      figures.set(v, {renderers: 0, rows: 0, drawn: 0});
  }
  const XS = [['sleft', 'sright'], ['sx0', 'sx1'], ['sx'], ['sxs'], ['sx1', 'sx2']];
  const YS = [['stop', 'sbottom'], ['sy0', 'sy1'], ['sy'], ['sys'], ['sy1', 'sy2']];
  const arrays = (g, options) => {
    for (const names of options) {
      const found = names.map((n) => g[n]).filter((a) => a != null);
      if (found.length === names.length) return found;
    }
    return null;
  };
  // glyph i: [min, max] of its finite screen coordinates along one axis (ragged: all points)
  const ragged = (a) => a.offsets !== undefined && typeof a.get === 'function';
  const extent = (list, i) => {
    let lo = Infinity, hi = -Infinity;
    for (const a of list) {
      const values = ragged(a) ? a.get(i) : [a[i]];
      for (const x of values)
        if (Number.isFinite(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); }
    }
    return [lo, hi];
  };
  for (const v of views) {
    if (v.model.type !== 'GlyphRenderer' || !v.model.visible) continue;
    const info = figures.get(v.plot_view);
    if (info === undefined) continue;
    info.renderers += 1;
    const g = v.glyph;
    const n = v.all_indices ? v.all_indices.count : 0;
    info.rows += n;
    const xs = arrays(g, XS), ys = arrays(g, YS);
    if (xs === null || ys === null) { info.drawn += n; continue; }  // unknown glyph type: trust it
    const f = v.plot_view.frame.bbox;
    const tol = 2;
    for (let i = 0; i < Math.min(n, xs[0].length); i++) {
      const [x0, x1] = extent(xs, i), [y0, y1] = extent(ys, i);
      if (x0 <= f.right + tol && x1 >= f.left - tol && y0 <= f.bottom + tol && y1 >= f.top - tol)
        info.drawn += 1;
    }
  }
  const empty = [];
  for (const [v, info] of figures) {
    if (info.drawn > 0) continue;
    const title = v.model.title && v.model.title.text ? v.model.title.text : '(untitled)';
    empty.push(`${title}: ${info.renderers} glyph renderer(s), ${info.rows} row(s), 0 drawn`);
  }
  return {figures: figures.size, empty};
}"""
#: Elements of the article (light DOM and Bokeh's shadow DOM) reaching beyond the article's
#: left or right edge, unless they sit in a container that scrolls horizontally (overflow-x
#: auto or scroll; such a container must fit itself). Also the page's own horizontal overflow.
OVERFLOW = """() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main')
    || document.body;
  const box = article.getBoundingClientRect();
  const tol = 1;
  const found = [];
  const describe = (el, r) => {
    const cls = typeof el.className === 'string' && el.className ? '.' + el.className.trim()
      .split(/\\s+/).slice(0, 3).join('.') : '';
    const text = (el.textContent || '').trim().replace(/\\s+/g, ' ').slice(0, 50);
    return `<${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''}${cls}> spans `
      + `${Math.round(r.left - box.left)}..${Math.round(r.right - box.left)} px of a `
      + `${Math.round(box.width)} px article` + (text ? ` ("${text}")` : '');
  };
  const walk = (root) => {
    for (const el of root.children) {
      const r = el.getBoundingClientRect();
      if (r.width > 0 && (r.right > box.right + tol || r.left < box.left - tol)) {
        found.push(describe(el, r));
        continue;
      }
      const overflow = getComputedStyle(el).overflowX;
      if (overflow === 'auto' || overflow === 'scroll') continue;  // its content scrolls
      if (el.shadowRoot) walk(el.shadowRoot);
      walk(el);
    }
  };
  walk(article);
  const page = document.documentElement;
  if (page.scrollWidth > page.clientWidth + tol)
    found.push(`the page scrolls horizontally (${page.scrollWidth} px in ${page.clientWidth} px)`);
  return found.slice(0, 10);
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


def check_book(
    html: Path, screenshots: Path | None = None, only: list[str] | None = None
) -> dict[str, list[str]]:
    """Problems found per page (an empty list when the page is fine); ``only``: page paths."""
    from playwright.sync_api import sync_playwright

    server = _serve(html)
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    problems: dict[str, list[str]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_init_script(CAPTURE_BOKEH)
            context.route(
                "**/*",
                lambda route: route.continue_()
                if urlparse(route.request.url).hostname == "127.0.0.1" else route.abort(),
            )
            for path in _pages(html):
                relative = path.relative_to(html).as_posix()
                if only is not None and relative not in only:
                    continue
                found: list[str] = []
                page = context.new_page()
                page.on("requestfailed", lambda r, f=found: f.append(f"request failed: {r.url}"))
                page.on("pageerror", lambda e, f=found: f.append(f"page error: {e}"))
                page.on("console", lambda m, f=found: f.append(
                    f"console error: {m.text} ({m.location.get('url', '')})")
                        if m.type == "error" else None)
                page.on("response", lambda r, f=found: f.append(f"HTTP {r.status}: {r.url}")
                        if r.status >= 400 else None)
                page.goto(base + relative, wait_until="networkidle")
                if page.locator(".hv-jupyter-exc").count():
                    found.append("a HoloViews figure failed to render (exception shown)")
                roots = page.locator(".bk-root, [data-root-id]").count()
                figures = page.content().count('"name":"Figure"')
                if roots or figures:
                    page.wait_for_timeout(1500)
                    canvases = page.evaluate(COUNT_CANVASES)
                    if figures and canvases == 0:
                        found.append(f"{figures} Bokeh figure(s) but no canvas drawn")
                    drawn = page.evaluate(EMPTY_FIGURES)
                    if figures and not drawn["figures"]:
                        found.append("Bokeh figures in the page but none in any BokehJS instance "
                                     "(the empty-figure check cannot run)")
                    found += [f"empty Bokeh figure: {e}" for e in drawn["empty"]]
                found += [f"too wide: {e}" for e in page.evaluate(OVERFLOW)]
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
                page.set_viewport_size(PHONE)
                page.wait_for_timeout(300)
                found += [f"too wide at {PHONE['width']} px: {e}" for e in page.evaluate(OVERFLOW)]
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


def _inject(html: Path, page: str, before: str, snippet: str) -> None:
    """Insert ``snippet`` into a copied page just before the first ``before``."""
    path = html / page
    text = path.read_text(encoding="utf-8")
    assert before in text, f"{before!r} not in {page}"
    path.write_text(text.replace(before, snippet + before, 1), encoding="utf-8")


@pytest.fixture
def book_copy(smoke_book, tmp_path) -> Path:
    copy = tmp_path / "html"
    shutil.copytree(smoke_book, copy)
    return copy


def test_console_and_page_errors_are_caught(chromium, book_copy):
    _inject(book_copy, "book/intro.html", "</body>",
            '<script>console.error("injected console error")</script>'
            "<script>undefined_function_of_the_test()</script>")
    found = check_book(book_copy, only=["book/intro.html"])["book/intro.html"]
    assert any("console error: injected console error" in p for p in found), found
    assert any("page error:" in p and "undefined_function_of_the_test" in p for p in found), found


def test_content_wider_than_the_article_is_caught(chromium, book_copy):
    _inject(book_copy, "book/intro.html", "</article>",
            '<div id="too-wide" style="width: 2000px">wide</div>'
            '<div style="overflow-x: auto"><div id="scrolls" style="width: 2000px">ok</div></div>'
            '<p><code class="docutils literal notranslate">'
            + "outputs/a-long-path-without-any-break-" * 4 + "</code></p>")
    found = check_book(book_copy, only=["book/intro.html"])["book/intro.html"]
    assert any(p.startswith("too wide: <div#too-wide>") for p in found), found
    assert not any("#scrolls" in p for p in found), found
    assert any(p.startswith("too wide at 390 px: <div#too-wide>") for p in found), found
    assert not any("<code" in p for p in found), "long inline code must wrap (glacier.css)"


def test_empty_bar_chart_is_caught(chromium, tmp_path):
    """Bars lost to a categorical axis shared in a Layout fail; plots.bars keeps its bars."""
    import holoviews as hv
    import pandas as pd

    from glacier_mapping import plots

    hv.extension("bokeh")
    tables = [pd.DataFrame({"region": [a, a, b, b], "strategy": ["global", "regional"] * 2,
                            "iou": [0.5, 0.6, 0.7, 0.8]}) for a, b in (("A", "B"), ("C", "D"))]
    shared = hv.Layout([hv.Bars(t, ["region", "strategy"], "iou").opts(title=f"shared {i}")
                        for i, t in enumerate(tables)]).cols(1)
    fixed = hv.Layout([plots.bars(t, "region", "iou", "strategy", f"fixed {i}", "IoU")
                       for i, t in enumerate(tables)]).cols(1)
    html = tmp_path / "html"
    html.mkdir()
    hv.save(shared, html / "shared.html", resources="inline")
    hv.save(fixed, html / "fixed.html", resources="inline")
    problems = check_book(html)
    empty = {page: [p for p in found if "empty Bokeh figure" in p or "Bokeh figures in" in p]
             for page, found in problems.items()}
    assert empty["fixed.html"] == []
    assert len(empty["shared.html"]) == 1 and "shared 0: 1 glyph renderer(s), 4 row(s), 0 drawn" \
        in empty["shared.html"][0], empty
