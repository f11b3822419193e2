"""Sphinx extension: serve BokehJS, Panel and MathJax from the book itself (works offline).

HoloViews/hvplot outputs load BokehJS and Panel from public CDNs, and Sphinx loads MathJax from
one, so a book read without network shows blank figures and raw formulas. After the HTML is
written, this extension copies exactly the assets the pages reference from the installed
``bokeh``, ``panel`` and ``mathjax`` (PyPI ``django-static-mathjax``, files only) packages into
``_static/offline/`` and rewrites the CDN addresses in every page to those local copies
(versions of BokehJS and Panel match by construction: the outputs were made with the same
packages).

It also drops duplicate ``<script>`` entries from every page: with Sphinx 7.4, a script with an
inline body that an extension registers after the builder is initialised (sphinx-thebe's
``const THEBE_JS_URL = ...``) is emitted twice (once as filename ``None``, once as ``''``), so
every Jupyter Book page logged "Identifier 'THEBE_JS_URL' has already been declared".
"""

from __future__ import annotations

import os
import re
import shutil
from importlib import util
from pathlib import Path
from typing import Any

from sphinx.util import logging

_BOKEH = re.compile(r"https://cdn\.bokeh\.org/bokeh/(?:release|dev)/([a-z-]+?)-(\d[\w.]*?)(\.min\.js|\.js)")
_MATHJAX = re.compile(r"https://cdn\.jsdelivr\.net/npm/mathjax@3/es5/tex-mml-chtml\.js")
_PANEL = re.compile(r"https://cdn\.holoviz\.org/panel/(\d[\w.]*)/dist/([^\"'\s?)\\]+)(\?[^\"'\s)\\]*)?")


def _package_dir(name: str) -> Path:
    spec = util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"Package {name!r} is needed to serve its assets offline.")
    return Path(spec.origin).parent


def localise_assets(html_dir: Path) -> dict[str, int]:
    """Copy referenced CDN assets into ``html_dir/_static/offline`` and rewrite the pages.

    Returns:
        Counts of pages rewritten and asset files copied.
    """
    html_dir = Path(html_dir)
    static = html_dir / "_static" / "offline"
    bokeh_js = _package_dir("bokeh") / "server" / "static" / "js"
    panel_dist = _package_dir("panel") / "dist"
    copied: set[Path] = set()
    pages = 0

    def place(source: Path, target: Path) -> None:
        if not source.is_file():
            raise FileNotFoundError(f"Offline asset {source} is missing from its package.")
        if target not in copied:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied.add(target)

    for page in html_dir.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        if not any(host in text for host in ("cdn.bokeh.org", "cdn.holoviz.org", "mathjax@3")):
            continue
        prefix = os.path.relpath(static, page.parent).replace(os.sep, "/")

        def bokeh_url(match: re.Match[str], prefix: str = prefix) -> str:
            name, version, suffix = match.groups()
            place(bokeh_js / f"{name}{suffix}", static / "bokeh" / f"{name}-{version}{suffix}")
            return f"{prefix}/bokeh/{name}-{version}{suffix}"

        def panel_url(match: re.Match[str], prefix: str = prefix) -> str:
            _, path, _query = match.groups()
            place(panel_dist / path, static / "panel" / path)
            return f"{prefix}/panel/{path}"

        def mathjax_url(match: re.Match[str], prefix: str = prefix) -> str:
            es5 = _package_dir("mathjax") / "static" / "mathjax" / "es5"
            place(es5 / "tex-mml-chtml.js", static / "mathjax" / "tex-mml-chtml.js")
            fonts = es5 / "output" / "chtml" / "fonts" / "woff-v2"
            for font in fonts.glob("*.woff"):  # loaded relative to the script
                place(font, static / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2" /
                      font.name)
            return f"{prefix}/mathjax/tex-mml-chtml.js"

        new = _MATHJAX.sub(mathjax_url, _PANEL.sub(panel_url, _BOKEH.sub(bokeh_url, text)))
        if new != text:
            page.write_text(new, encoding="utf-8")
            pages += 1
    return {"pages": pages, "assets": len(copied)}


def _on_build_finished(app: Any, exception: Exception | None) -> None:  # noqa: ANN401
    if exception is None and app.builder.format == "html":
        counts = localise_assets(Path(app.outdir))
        logging.getLogger(__name__).info(
            f"offline assets: {counts['assets']} file(s) served locally "
            f"in {counts['pages']} page(s)"
        )


def _script_key(script: Any) -> tuple[Any, ...]:  # noqa: ANN401
    filename = getattr(script, "filename", script) or ""  # None and "" are the same inline script
    attributes = getattr(script, "attributes", {})
    return (str(filename), getattr(script, "priority", 500), *sorted(attributes.items()))


def dedupe_scripts(scripts: list[Any]) -> list[Any]:  # noqa: ANN401
    """Scripts in order with repeats (same file or inline body and attributes) left out."""
    seen: set[tuple[Any, ...]] = set()
    kept = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def _on_html_page_context(app: Any, pagename: str, templatename: str,  # noqa: ANN401
                          context: dict[str, Any], doctree: Any) -> None:  # noqa: ANN401
    if "script_files" in context:
        context["script_files"][:] = dedupe_scripts(list(context["script_files"]))


def setup(app: Any) -> dict[str, Any]:  # noqa: ANN401
    """Register the extension with Sphinx."""
    app.connect("html-page-context", _on_html_page_context)
    app.connect("build-finished", _on_build_finished)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
