"""The book's figures: HoloViews objects with titles, labels and bounded size; static PNGs."""

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401  (registers the backend whose options .opts sets)
import numpy as np
import pandas as pd
import pytest

from glacier_mapping import plots

hv.Store.set_current_backend("bokeh")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _plot_opts(element):
    return hv.Store.lookup_options("bokeh", element, "plot").kwargs


def _style_opts(element):
    return hv.Store.lookup_options("bokeh", element, "style").kwargs


def _assert_png(path, folder):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporary left over


# --------------------------------------------------------------------------- coarsen


def test_coarsen_leaves_small_arrays_alone():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert plots.coarsen(array) is array
    assert plots.coarsen(np.zeros((160, 160))).shape == (160, 160)


def test_coarsen_block_means_floats_and_bounds_the_size():
    array = np.arange(16, dtype=np.float64).reshape(4, 4)
    small = plots.coarsen(array, max_pixels=2)
    assert small.dtype == np.float32
    np.testing.assert_allclose(small, [[2.5, 4.5], [10.5, 12.5]])
    big = np.random.default_rng(0).random((1000, 333, 3))
    out = plots.coarsen(big)
    assert max(out.shape[:2]) <= plots.MAX_PIXELS and out.shape[2] == 3
    assert out.shape == (1000 // 7, 333 // 7, 3)  # factor ceil(1000 / 160) = 7, remainder cut


def test_coarsen_keeps_integer_labels_intact():
    labels = np.array([[0, 3, 0, 3], [3, 3, 3, 3], [1, 1, 2, 2], [1, 1, 2, 2]], dtype=np.uint8)
    small = plots.coarsen(labels, max_pixels=2)
    assert small.dtype == np.uint8
    np.testing.assert_array_equal(small, [[0, 0], [1, 2]])  # nearest: no mean of 0 and 3
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    assert plots.coarsen(mask, max_pixels=2).dtype == bool


def test_coarsen_ignores_nan():
    array = np.array([[np.nan, 1.0], [3.0, np.nan]])
    np.testing.assert_allclose(plots.coarsen(array, max_pixels=1), [[2.0]])


# --------------------------------------------------------------------------- figures


def test_raster_has_km_axes_colour_bar_label_and_coarsened_data():
    array = np.random.default_rng(1).random((400, 300))
    image = plots.raster(array, "Glacier probability", "probability", cmap="magma",
                         pixel_size_km=0.03, clim=(0.0, 1.0))
    assert isinstance(image, hv.Image)
    assert image.data.shape == (133, 100)  # factor 3
    assert image.bounds.lbrt() == pytest.approx((0.0, 0.0, 9.0, 12.0))  # 300 x 400 px of 30 m
    assert [d.name for d in image.kdims] == ["x", "y"]
    assert [d.name for d in image.vdims] == ["probability"]
    opts = _plot_opts(image)
    assert opts["title"] == "Glacier probability"
    assert (opts["xlabel"], opts["ylabel"], opts["clabel"]) == ("x (km)", "y (km)", "probability")
    assert opts["colorbar"] is True and opts["clim"] == (0.0, 1.0)
    assert _style_opts(image)["cmap"] == "magma"
    # Row 0 of the array is the top (north) of the image: HoloViews draws row 0 at the bottom.
    corner = np.zeros((4, 4))
    corner[0, 0] = 1.0
    np.testing.assert_array_equal(plots.raster(corner, "t", "v").data[-1, 0], 1.0)
    assert "clim" not in _plot_opts(plots.raster(corner, "t", "v"))


def test_rgb_composite_uses_red_green_blue_bands_stretched():
    optical = np.zeros((50, 40, 6), dtype=np.float32)
    optical[..., 1] = 0.5  # green
    optical[..., 2] = 1.0  # red
    optical[..., 3:] = 9.0  # NIR and SWIR are not shown
    np.testing.assert_allclose(plots.stretch_rgb(optical)[0, 0], [1.0, 0.5, 0.0])
    rgb = plots.rgb_composite(optical, "True colour", pixel_size_km=0.01)
    assert isinstance(rgb, hv.RGB)
    assert rgb.data.shape == (50, 40, 3)
    assert rgb.bounds.lbrt() == pytest.approx((0.0, 0.0, 0.4, 0.5))
    opts = _plot_opts(rgb)
    assert (opts["title"], opts["xlabel"], opts["ylabel"]) == ("True colour", "x (km)", "y (km)")
    big = plots.rgb_composite(np.random.default_rng(2).random((640, 320, 6)), "big")
    assert big.data.shape[:2] == (160, 80)


def test_outline_overlay_is_transparent_outside_glacier():
    glacier = np.array([[1, 0], [0, 0]], dtype=np.uint8)
    overlay = plots.outline_overlay(glacier)
    assert isinstance(overlay, hv.Image)
    data = overlay.data
    assert data[-1, 0] == 1.0 and np.isnan(data[0]).all() and np.isnan(data[-1, 1])


def test_error_map_classes():
    predicted = np.array([[1, 1], [0, 0]])
    glacier = np.array([[1, 0], [1, 0]])
    image = plots.error_map(predicted, glacier, "Errors")
    # (flipped) top row: TP = 1, FP = 2; bottom row: FN = 3, TN = 0.
    np.testing.assert_array_equal(image.data, [[3, 0], [1, 2]])
    assert image.vdims[0].name == "class (0 TN, 1 TP, 2 FP, 3 FN)"
    opts = _plot_opts(image)
    assert opts["title"] == "Errors" and opts["clim"] == (-0.5, 3.5)
    assert opts["colorbar_opts"]["major_label_overrides"] == {0: "TN", 1: "TP", 2: "FP", 3: "FN"}
    assert _style_opts(image)["cmap"] == list(plots.ERROR_COLOURS.values())
    masked = plots.error_map(predicted, glacier, "Errors", valid=np.array([[1, 0], [1, 1]]))
    assert np.isnan(masked.data[1, 1])  # invalid pixel (row 0, column 1) left blank
    np.testing.assert_array_equal(masked.data[0], [3, 0])


def test_error_map_of_a_large_map_shows_only_classes_that_occur():
    predicted = np.zeros((320, 320), dtype=bool)  # predicts no glacier at all: no FP possible
    glacier = np.zeros((320, 320), dtype=bool)
    glacier[:, ::2] = True  # TN and FN in alternate columns
    image = plots.error_map(predicted, glacier, "Errors")
    assert max(image.data.shape) <= plots.MAX_PIXELS
    assert set(np.unique(image.data)) <= {0.0, 3.0}


def test_bars_are_grouped_with_own_axes():
    frame = pd.DataFrame({"region": ["A", "B", "A", "B"], "strategy": ["g", "g", "r", "r"],
                          "iou": [0.1, 0.2, 0.3, 0.4]})
    chart = plots.bars(frame, "region", "iou", "strategy", "IoU by region", "glacier IoU")
    assert isinstance(chart, hv.Bars)
    assert [d.name for d in chart.kdims] == ["region", "strategy"]
    assert [d.name for d in chart.vdims] == ["iou"]
    opts = _plot_opts(chart)
    assert opts["title"] == "IoU by region" and opts["ylabel"] == "glacier IoU"
    assert opts["ylim"] == (0.0, 1.0) and opts["shared_axes"] is False
    single = plots.bars(frame, "region", "iou", None, "t", "y", ylim=None)
    assert [d.name for d in single.kdims] == ["region"] and "ylim" not in _plot_opts(single)


def test_curves_one_line_per_column():
    frame = pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.5, 0.4], "val_loss": [2, 1, 0.9]})
    overlay = plots.curves(frame, "epoch", ["loss", "val_loss"], "Learning", "epoch", "loss")
    assert isinstance(overlay, hv.Overlay)
    assert [el.label for el in overlay] == ["loss", "val_loss"]
    assert [el.vdims[0].name for el in overlay] == ["loss", "val_loss"]
    assert _plot_opts(overlay)["title"] == "Learning"


def test_reliability_plot_drops_empty_bins_and_draws_identity():
    frame = pd.DataFrame({"mean_confidence": [0.1, 0.5, 0.9], "accuracy": [0.2, np.nan, 0.8],
                          "count": [10, 0, 30]})
    overlay = plots.reliability_plot(frame, "Temperature")
    assert isinstance(overlay, hv.Overlay)
    identity, curve, dots = list(overlay)
    assert list(identity.dimension_values(0)) == [0, 1]
    assert list(identity.dimension_values(1)) == [0, 1]
    assert list(curve.dimension_values("accuracy")) == [0.2, 0.8]  # the NaN bin is dropped
    assert isinstance(dots, hv.Scatter) and "count" in [d.name for d in dots.vdims]
    opts = _plot_opts(overlay)
    assert opts["title"] == "Temperature"
    assert opts["xlabel"] == "mean calibrated confidence (per bin)"
    assert opts["ylabel"] == "pixel accuracy (per bin)" and opts["xlim"] == (0, 1)


def test_estimate_scatter_hovers_label_and_drops_missing():
    frame = pd.DataFrame({"iou": [0.1, 0.5, np.nan], "iou_estimated": [0.2, 0.4, 0.3],
                          "tile": ["a", "b", "c"]})
    overlay = plots.estimate_scatter(frame, "tile", "Estimates")
    identity, points = list(overlay)
    assert isinstance(points, hv.Scatter)
    assert [d.name for d in points.vdims] == ["iou_estimated", "tile"]
    assert list(points.dimension_values("tile")) == ["a", "b"]
    opts = _plot_opts(overlay)
    assert (opts["title"], opts["xlabel"], opts["ylabel"]) == (
        "Estimates", "true glacier IoU", "estimated glacier IoU")


# --------------------------------------------------------------------------- static PNGs


def test_save_static_writes_png_of_grey_and_rgb_rasters(tmp_path):
    folder = tmp_path / "figures"
    rng = np.random.default_rng(3)
    path = plots.save_static([(rng.random((600, 300)), "probability"),
                              (rng.random((40, 40, 3)), "rgb")], folder / "static.png", "Scene")
    assert path == folder / "static.png"  # the folder is created
    _assert_png(path, folder)


def test_save_panels_draws_each_name_and_replaces_atomically(tmp_path):
    drawn = []

    def draw(ax, name):
        drawn.append(name)
        ax.plot([0, 1], [0, name])

    path = tmp_path / "panels.png"
    path.write_bytes(b"old")
    plots.save_panels([1, 2, 3], draw, path, "Panels", ylabel="value")
    assert drawn == [1, 2, 3]
    _assert_png(path, tmp_path)

    def broken(ax, name):
        raise RuntimeError("draw failed")

    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="draw failed"):
        plots.save_panels(["x"], broken, path, "Broken")
    assert path.read_bytes() == before
    _assert_png(path, tmp_path)


def test_save_reliability_png_one_panel_per_calibrator(tmp_path, monkeypatch):
    frame = pd.DataFrame({"calibrator": ["none", "none", "isotonic", "isotonic"],
                          "mean_confidence": [0.2, 0.8, 0.2, 0.8],
                          "accuracy": [0.3, np.nan, 0.2, 0.8]})
    names = []
    original = plots.save_panels

    def spy(panel_names, *args, **kwargs):
        names.extend(panel_names)
        return original(panel_names, *args, **kwargs)

    monkeypatch.setattr(plots, "save_panels", spy)
    path = plots.save_reliability_png(frame, tmp_path / "reliability.png", "Reliability")
    assert names == ["none", "isotonic"]  # in order of appearance, once each
    _assert_png(path, tmp_path)


def test_save_scatter_and_vector_pngs(tmp_path):
    level = pd.DataFrame({"iou": [0.2, 0.6, np.nan], "iou_estimated": [0.3, 0.5, 0.4]})
    scatter = plots.save_scatter_png({"tile": level, "region": level.iloc[:2]},
                                     tmp_path / "scatter" / "s.png", "Estimates")
    _assert_png(scatter, tmp_path / "scatter")
    vectors = pd.DataFrame({"region": ["SC"] * 3 + ["CA"] * 3,
                            "slot": ["ALP", "SC", "UNKNOWN"] * 2,
                            "change": [1e-4, -2e-4, 0.0, 3e-3, 0.0, -1e-3]})
    vector = plots.save_vector_png(vectors, tmp_path / "vector" / "v.png", "Vectors")
    _assert_png(vector, tmp_path / "vector")


def test_band_rgb_colours():
    conf = np.array([[0.0, 0.4, 2.0, 0.6]])
    band = np.array([[False, True, False, True]])
    valid = np.array([[True, True, True, False]])
    rgb = plots.band_rgb(conf, band, valid)
    assert rgb.dtype == np.float32 and rgb.shape == (1, 4, 3)
    np.testing.assert_allclose(rgb[0, 0], [0.0, 0.0, 0.0])  # confidence 0: black
    np.testing.assert_allclose(rgb[0, 1], [0.2, 0.65, 0.7])  # half grey 0.4, half cyan
    np.testing.assert_allclose(rgb[0, 2], [1.0, 1.0, 1.0])  # clipped to 1
    np.testing.assert_allclose(rgb[0, 3], [1.0, 1.0, 1.0])  # invalid: white
