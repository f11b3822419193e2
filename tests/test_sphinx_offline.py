"""The offline-assets extension rewrites CDN addresses to local copies that exist."""

from glacier_mapping.sphinx_offline import localise_assets

PAGE = """<html><script src="https://cdn.bokeh.org/bokeh/release/bokeh-3.9.2.min.js"></script>
<script>var js_urls = ["https://cdn.holoviz.org/panel/1.9.4/dist/panel.min.js",
"https://cdn.holoviz.org/panel/1.9.4/dist/css/loading.css?v=1.9.4"];</script></html>"""


def test_cdn_urls_become_local_files(tmp_path):
    page = tmp_path / "notebooks" / "01_x.html"
    page.parent.mkdir()
    page.write_text(PAGE)
    (tmp_path / "index.html").write_text("<html>no plots</html>")
    counts = localise_assets(tmp_path)
    text = page.read_text()
    assert "cdn." not in text
    assert counts == {"pages": 1, "assets": 3}
    for url in ("../_static/offline/bokeh/bokeh-3.9.2.min.js",
                "../_static/offline/panel/panel.min.js",
                "../_static/offline/panel/css/loading.css"):
        assert url in text
        assert (page.parent / url).resolve().stat().st_size > 0


def test_mathjax_is_served_with_its_fonts(tmp_path):
    page = tmp_path / "intro.html"
    page.write_text('<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js">'
                    "</script>")
    localise_assets(tmp_path)
    assert "_static/offline/mathjax/tex-mml-chtml.js" in page.read_text()
    fonts = tmp_path / "_static" / "offline" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert len(list(fonts.glob("*.woff"))) > 10
