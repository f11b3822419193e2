"""HoloViews figures in one visual style, small enough to embed in a static book.

Rasters are coarsened before plotting so each figure embeds at most ``MAX_PIXELS`` per side;
every figure has a title, axis labels with units and a colour-bar label. Static PNG versions
(matplotlib, without pyplot) go to ``outputs/<profile>/figures/`` for readers without JavaScript.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import rasterio
from bokeh.models import FixedTicker
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from glacier_mapping.store import atomic_path

MAX_PIXELS = 160
WIDTH, HEIGHT = 330, 300
#: Colours of the error map: true negative, true positive, false positive, false negative.
ERROR_COLOURS = {"TN": "#f2f2f2", "TP": "#3a7dc9", "FP": "#e8873a", "FN": "#c73a5c"}


def coarsen(array: np.ndarray, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Block-mean (or block-mode for integer maps) an array so neither side exceeds max_pixels."""
    factor = int(np.ceil(max(array.shape[:2]) / max_pixels))
    if factor <= 1:
        return array
    height, width = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    blocks = array[:height, :width].reshape(height // factor, factor, width // factor, factor,
                                            *array.shape[2:])
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return blocks[:, 0, :, 0]  # nearest: keeps class labels intact
    return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def _bounds(shape: tuple[int, ...], pixel_size_km: float) -> tuple[float, float, float, float]:
    return (0.0, 0.0, shape[1] * pixel_size_km, shape[0] * pixel_size_km)


def raster(
    array: np.ndarray, title: str, clabel: str, cmap: str = "viridis",
    pixel_size_km: float = 0.01, clim: tuple[float, float] | None = None,
) -> hv.Image:
    """A single-band raster with distance axes in km and a labelled colour bar."""
    small = coarsen(np.asarray(array))
    image = hv.Image(np.flipud(small), bounds=_bounds(array.shape, pixel_size_km),
                     kdims=["x", "y"], vdims=[clabel])
    return image.opts(
        title=title, cmap=cmap, colorbar=True, width=WIDTH, height=HEIGHT, xlabel="x (km)",
        ylabel="y (km)", clabel=clabel, tools=["hover"], **({"clim": clim} if clim else {}),
    )


def stretch_rgb(optical: np.ndarray) -> np.ndarray:
    """True-colour array (red, green, blue = bands 3, 2, 1) with a 2-98 % stretch to [0, 1]."""
    bands = np.asarray(optical)[..., [2, 1, 0]].astype(np.float32)
    low, high = np.nanpercentile(bands, [2, 98])
    return np.clip((bands - low) / max(high - low, 1e-6), 0, 1)


def rgb_composite(optical: np.ndarray, title: str, pixel_size_km: float = 0.01) -> hv.RGB:
    """True-colour composite of a 6-band optical array (see :func:`stretch_rgb`)."""
    small = coarsen(stretch_rgb(optical))
    return hv.RGB(np.flipud(small), bounds=_bounds(optical.shape, pixel_size_km)).opts(
        title=title, width=WIDTH, height=HEIGHT, xlabel="x (km)", ylabel="y (km)"
    )


def outline_overlay(glacier: np.ndarray, pixel_size_km: float = 0.01) -> hv.Image:
    """Glacier mask drawn as a translucent layer to put over another raster."""
    small = coarsen(np.asarray(glacier).astype(np.uint8))
    masked = np.where(small > 0, 1.0, np.nan)
    return hv.Image(np.flipud(masked), bounds=_bounds(glacier.shape, pixel_size_km)).opts(
        cmap=["#00e5ff"], alpha=0.45, clipping_colors={"NaN": "transparent"}, colorbar=False
    )


def error_map(
    predicted: np.ndarray, glacier: np.ndarray, title: str, valid: np.ndarray | None = None,
    pixel_size_km: float = 0.01,
) -> hv.Image:
    """True/false positives and negatives of a glacier map (categorical colours)."""
    pred = np.asarray(predicted).astype(bool)
    truth = np.asarray(glacier).astype(bool)
    codes = np.select([pred & truth, pred & ~truth, ~pred & truth], [1, 2, 3], 0)
    if valid is not None:
        codes[~np.asarray(valid, bool)] = -1
    small = coarsen(codes).astype(np.float32)  # nearest pixel: a class is never averaged
    small[small < 0] = np.nan
    names = list(ERROR_COLOURS)
    return hv.Image(np.flipud(small), bounds=_bounds(codes.shape, pixel_size_km),
                    vdims=["class (0 TN, 1 TP, 2 FP, 3 FN)"]).opts(
        title=title, cmap=[ERROR_COLOURS[n] for n in names], clim=(-0.5, 3.5), colorbar=True,
        width=WIDTH, height=HEIGHT, xlabel="x (km)", ylabel="y (km)",
        colorbar_opts={"major_label_overrides": dict(enumerate(names)),
                       "ticker": FixedTicker(ticks=[0, 1, 2, 3])},
        clipping_colors={"NaN": "white"},
    )


def bars(
    frame: pd.DataFrame, x: str, y: str, by: str | None, title: str, ylabel: str,
    ylim: tuple[float, float] | None = (0.0, 1.0),
) -> hv.Bars:
    """Grouped bar chart of a tidy table (bars of ``y`` per ``x``, coloured by ``by``).

    Built with HoloViews directly: importing hvplot in a notebook after ``hv.extension`` emits
    a second BokehJS loader into the page, which loads BokehJS again. Each chart keeps its own
    axes (``shared_axes=False``, ``axiswise=True``): in an ``hv.Layout`` of several charts
    with different categories, a shared categorical x axis shows only one chart's categories
    and leaves the other charts without any bar.
    """
    kdims = [x, by] if by else [x]
    plot = hv.Bars(frame, kdims=kdims, vdims=[y])
    return plot.opts(
        title=title, ylabel=ylabel, width=2 * WIDTH, height=HEIGHT, xrotation=45,
        tools=["hover"], shared_axes=False, axiswise=True, **({"ylim": ylim} if ylim else {}),
    )


def curves(
    frame: pd.DataFrame, x: str, ys: Sequence[str], title: str, xlabel: str, ylabel: str
) -> hv.Overlay:
    """Several columns of a table as lines against one axis (e.g. learning curves)."""
    lines = [hv.Curve(frame, x, y, label=y).opts(tools=["hover"]) for y in ys]
    return hv.Overlay(lines).opts(title=title, xlabel=xlabel, ylabel=ylabel,
                                  width=2 * WIDTH, height=HEIGHT, legend_position="right")


def save_static(figures: Sequence[tuple[np.ndarray, str]], path: str | Path, suptitle: str) -> Path:
    """A static PNG of a few rasters side by side; rasters are (H, W) or (H, W, 3)."""
    def draw(ax: Axes, index: int) -> None:
        array, title = figures[index]
        ax.imshow(coarsen(np.asarray(array), 256), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    return save_panels(list(range(len(figures))), draw, path, suptitle, panel_height=3.2)


def save_panels(names: Sequence[Any], draw: Callable[[Axes, Any], None], path: str | Path,
                suptitle: str, ylabel: str = "", panel_width: float = 3.2,
                panel_height: float = 3.4) -> Path:
    """A static PNG of one panel per name, each drawn by ``draw(ax, name)``."""
    fig = Figure(figsize=(panel_width * len(names), panel_height))
    axes = fig.subplots(1, len(names), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        draw(ax, name)
    if ylabel:
        axes[0][0].set_ylabel(ylabel)
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    return Path(path)


def identity_overlay(element: hv.Element, x: str, y: str) -> hv.Overlay:
    """``element`` over the dashed line y = x (reliability diagrams, estimate scatters)."""
    return hv.Curve([(0, 0), (1, 1)], x, y).opts(color="grey", line_dash="dashed") * element


def reliability_plot(frame: pd.DataFrame, title: str) -> hv.Overlay:
    """One reliability diagram: bin accuracy against mean confidence, with the identity line."""
    bins = frame.dropna(subset=["accuracy"])
    points = hv.Curve(bins, "mean_confidence", ["accuracy", "count"]).opts(tools=["hover"])
    dots = hv.Scatter(bins, "mean_confidence", ["accuracy", "count"]).opts(size=6)
    return identity_overlay(points * dots, "mean_confidence", "accuracy").opts(
        title=title, xlabel="mean calibrated confidence (per bin)",
        ylabel="pixel accuracy (per bin)", xlim=(0, 1), ylim=(0, 1.02), width=WIDTH,
        height=HEIGHT)


def save_reliability_png(frame: pd.DataFrame, path: str | Path, suptitle: str) -> Path:
    """Static PNG of one reliability diagram per calibrator (a ``diagram_frame`` table)."""
    def draw(ax: Axes, name: str) -> None:
        bins = frame[(frame["calibrator"] == name)].dropna(subset=["accuracy"])
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.plot(bins["mean_confidence"], bins["accuracy"], "o-")
        ax.set(title=name, xlabel="mean confidence", xlim=(0, 1), ylim=(0, 1.02))

    return save_panels(list(dict.fromkeys(frame["calibrator"])), draw, path, suptitle,
                       "pixel accuracy")


def estimate_scatter(frame: pd.DataFrame, label: str, title: str) -> hv.Overlay:
    """Estimated against true IoU (one point per row, hover shows ``label``) and y = x."""
    data = frame.dropna(subset=["iou", "iou_estimated"])
    points = hv.Scatter(data, "iou", ["iou_estimated", label]).opts(
        size=7, alpha=0.7, tools=["hover"])
    return identity_overlay(points, "iou", "iou_estimated").opts(
        title=title, xlabel="true glacier IoU", ylabel="estimated glacier IoU", xlim=(0, 1),
        ylim=(0, 1), width=WIDTH, height=HEIGHT)


def interval_scatter(frame: pd.DataFrame, truth: str, mapped: str, low: str, high: str,
                     label: str, title: str, unit: str = "km²") -> hv.Overlay:
    """Mapped values with their intervals against the true values, and the line y = x.

    ``frame`` has a boolean ``covered`` column (the interval holds the true value): points
    are blue where it does, red where it does not.
    """
    data = frame.dropna(subset=[truth, mapped, low, high])
    data = data.assign(interval=np.where(data["covered"].astype(bool), "covers", "misses"))
    span = [float(min(data[[truth, low]].min())), float(max(data[[truth, high]].max()))]
    bars = hv.ErrorBars((data[truth], data[mapped], data[mapped] - data[low],
                         data[high] - data[mapped]), vdims=["y", "below", "above"],
                        horizontal=False).opts(color="grey", alpha=0.6)
    points = hv.Scatter(data, truth, [mapped, label, "interval"]).opts(
        size=6, color="interval", cmap={"covers": "#1f77b4", "misses": "#d62728"},
        tools=["hover"])
    line = hv.Curve([(span[0], span[0]), (span[1], span[1])]).opts(color="grey",
                                                                    line_dash="dashed")
    return (line * bars * points).opts(
        title=title, xlabel=f"true ({unit})", ylabel=f"mapped, 90 % interval ({unit})",
        width=WIDTH, height=HEIGHT, show_legend=False)


#: Colours of the change raster's classes (:data:`glacier_mapping.change.CHANGE_CLASSES`).
CHANGE_COLOURS = ("#f0f0f0", "#6baed6", "#2ca02c", "#d62728")


def change_map(path: str | Path, title: str, pixel_size_km: float = 0.03) -> hv.Image:
    """A change raster (stable non-glacier, stable glacier, gained, lost; nodata blank)."""
    with rasterio.open(path) as dataset:
        codes = dataset.read(1).astype(np.float32)
    codes[codes > len(CHANGE_COLOURS) - 1] = np.nan
    image = hv.Image(np.flipud(coarsen(codes)), bounds=_bounds(codes.shape, pixel_size_km),
                     kdims=["x", "y"], vdims=["change"])
    return image.opts(
        title=title, cmap=list(CHANGE_COLOURS), clim=(-0.5, len(CHANGE_COLOURS) - 0.5),
        colorbar=True, color_levels=len(CHANGE_COLOURS), width=WIDTH, height=HEIGHT,
        xlabel="x (km)", ylabel="y (km)", tools=["hover"],
        colorbar_opts={"ticker": FixedTicker(ticks=list(range(len(CHANGE_COLOURS)))),
                       "major_label_overrides": {0: "stable non-glacier", 1: "stable glacier",
                                                 2: "gained", 3: "lost"}})


def deviation_scatter(table: pd.DataFrame, title: str) -> hv.Overlay:
    """Mapped against reference area per glacier (log axes), and the line y = x."""
    data = table[(table["reference_area_km2"] > 0) & (table["predicted_area_km2"] > 0)]
    span = [float(data[["reference_area_km2", "predicted_area_km2"]].min().min()),
            float(data[["reference_area_km2", "predicted_area_km2"]].max().max())]
    points = hv.Scatter(data, "reference_area_km2",
                        ["predicted_area_km2", "rgi_id", "area_deviation_pct",
                         "mean_distance_m"]).opts(size=6, alpha=0.7, tools=["hover"])
    line = hv.Curve([(span[0], span[0]), (span[1], span[1])]).opts(color="grey",
                                                                    line_dash="dashed")
    return (line * points).opts(title=title, logx=True, logy=True,
                                xlabel="RGI 6.0 area (km²)", ylabel="mapped area (km²)",
                                width=WIDTH + 70, height=HEIGHT)


def save_scatter_png(levels: Mapping[str, pd.DataFrame], path: str | Path, suptitle: str) -> Path:
    """Static PNG of estimated against true IoU, one panel per level."""
    def draw(ax: Axes, level: str) -> None:
        data = levels[level].dropna(subset=["iou", "iou_estimated"])
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
        ax.scatter(data["iou"], data["iou_estimated"], s=18, alpha=0.7)
        ax.set(title=level, xlabel="true glacier IoU", xlim=(0, 1), ylim=(0, 1))

    return save_panels(list(levels), draw, path, suptitle, "estimated glacier IoU")


def save_vector_png(vectors: pd.DataFrame, path: str | Path, suptitle: str) -> Path:
    """Static PNG of region vectors as each slot's change from the uniform start (1/12).

    One panel per region of a ``vector_frame`` table (the weights themselves all look like
    1/12 when a vector barely moved).
    """
    def draw(ax: Axes, region: str) -> None:
        data = vectors[vectors["region"] == region]
        ax.bar(data["slot"], data["change"])
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set(title=region, xlabel="slot")
        ax.tick_params(axis="x", labelrotation=90)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))

    return save_panels(list(dict.fromkeys(vectors["region"])), draw, path, suptitle,
                       "weight − 1/12", panel_width=5.0)


def band_rgb(conf: np.ndarray, band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` for static figures: confidence in grey, a band tinted cyan.

    Invalid pixels are white; band pixels are half grey, half cyan (0, 0.9, 1).
    """
    grey = np.repeat(np.clip(np.asarray(conf, dtype=np.float32), 0, 1)[..., None], 3, axis=-1)
    tinted = 0.5 * grey + 0.5 * np.array([0.0, 0.9, 1.0], dtype=np.float32)
    rgb = np.where(np.asarray(band, bool)[..., None], tinted, grey)
    return np.where(np.asarray(valid, bool)[..., None], rgb, 1.0).astype(np.float32)
