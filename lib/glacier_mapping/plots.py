"""HoloViews figures in one visual style, small enough to embed in a static book.

Rasters are coarsened before plotting so each figure embeds at most ``MAX_PIXELS`` per side;
every figure has a title, axis labels with units and a colour-bar label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
from bokeh.models import FixedTicker

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
    codes = np.select([pred & truth, pred & ~truth, ~pred & truth], [1, 2, 3], 0).astype(float)
    if valid is not None:
        codes[~np.asarray(valid, bool)] = np.nan
    small = coarsen(codes.astype(np.float32)) if valid is None else coarsen(codes)
    small = np.round(small)
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
    """A static PNG fallback (matplotlib) of a few rasters; rasters are (H, W) or (H, W, 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(figures), figsize=(3.2 * len(figures), 3.2), squeeze=False)
    for ax, (array, title) in zip(axes[0], figures, strict=True):
        ax.imshow(coarsen(np.asarray(array), 256), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(suptitle, fontsize=10)
    return save_figure(fig, path)


def save_figure(fig: object, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
