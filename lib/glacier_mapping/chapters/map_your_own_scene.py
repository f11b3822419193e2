"""Chapter 10 (map your own scene): the Everest scene as an xarray Dataset, mapped in a notebook.

The real Landsat 7 scene is opened lazily (dask) and named like a STAC load, mapped with
:func:`glacier_mapping.map_glaciers` by chapter 08's Everest model, checked against
``glacier-mapping deploy`` on the same files and scored on the held-out part against the RGI
6.0 outlines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rioxarray
import xarray as xr

from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.deploy import DeployOptions, deploy_scene
from glacier_mapping.evaluation import confusion_counts, metrics_from_counts
from glacier_mapping.experiments.everest import EverestData, Window
from glacier_mapping.registry import EverestScene

CHAPTER = "10_map_your_own_scene"
#: Chunk side (pixels) of the lazily opened scene.
CHUNK = 256
#: Acquisition date of the Everest scene (its file name: 2000, day 304).
EVEREST_DATE = "2000-10-30"


def everest_dataset(scene: EverestScene, chunk: int = CHUNK) -> xr.Dataset:
    """The Everest files as a dask-backed Dataset with one variable per band.

    Band names are STAC common names, as ``odc.stac.load`` gives them; the scene has no SWIR,
    so ``swir16`` and ``swir22`` are zeros, as in the model's training (chapter 08).
    """
    chunks = {"x": chunk, "y": chunk}
    rgb = rioxarray.open_rasterio(scene.rgb, chunks=chunks)
    nir = rioxarray.open_rasterio(scene.nir, chunks=chunks).squeeze("band", drop=True)
    bands = {name: rgb.sel(band=index, drop=True)
             for name, index in (("blue", 3), ("green", 2), ("red", 1))}
    bands["nir08"] = nir
    zeros = xr.zeros_like(nir, dtype="float32")
    dataset = xr.Dataset({**bands, "swir16": zeros, "swir22": zeros})
    dataset.attrs.update(name=Path(scene.rgb).stem.removesuffix("_RGB"), date=EVEREST_DATE)
    return dataset


def deploy_everest(scene: EverestScene, model_path: Path, out_dir: Path,
                   options: DeployOptions) -> Any:  # noqa: ANN401 - DeploymentSummary
    """``glacier-mapping deploy`` on the same files: bands 3, 2, 1 of the RGB file, B4 and zeros.

    The zero SWIR bands come from a GeoTIFF written beside the outputs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    zeros = out_dir.parent / f"{out_dir.name}_swir_zeros.tif"
    with rasterio.open(scene.nir) as nir:
        profile = {**nir.profile, "count": 2, "dtype": "uint8"}
        with rasterio.open(zeros, "w", **profile) as out:
            out.write(np.zeros((2, nir.height, nir.width), np.uint8))
    deploy_log = logging.getLogger("glacier_mapping.deploy")
    level = deploy_log.level
    deploy_log.setLevel(logging.ERROR)  # its "no calibrator" warning: the page says so
    try:
        with SceneSource([scene.rgb, scene.nir, zeros], "red,green,blue,nir,swir1,swir2",
                         date=EVEREST_DATE) as source:
            return deploy_scene(source, model_path, out_dir, options, progress=False)
    finally:
        deploy_log.setLevel(level)


def deploy_agreement(mapped: xr.Dataset, summary: Any) -> pd.Series:  # noqa: ANN401
    """How far ``map_glaciers`` and ``deploy`` differ on the same scene."""
    with rasterio.open(summary.outputs["glacier_class.tif"]) as classes, \
            rasterio.open(summary.outputs["confidence.tif"]) as conf:
        deployed_class, deployed_conf = classes.read(1), conf.read(1)
    mine_class, mine_conf = mapped["glacier_class"].values, mapped["confidence"].values
    both = np.isfinite(deployed_conf) & np.isfinite(mine_conf)
    return pd.Series({
        "pixels": int(mine_class.size),
        "class differs (pixels)": int((mine_class != deployed_class).sum()),
        "max |confidence difference|": float(np.abs(mine_conf - deployed_conf)[both].max()),
        "glacier area, map_glaciers (km²)": mapped.attrs["glacier_area_km2"],
        "glacier area, deploy (km²)": summary.glacier_area_km2,
    }, name="map_glaciers vs deploy", dtype=object)


def held_out_scores(mapped: xr.Dataset, data: EverestData, window: Window) -> pd.Series:
    """IoU, precision and recall of the mapped class on the held-out part against RGI 6.0."""
    predicted = mapped["glacier_class"].values[window] == 1
    counts = confusion_counts(predicted, data.glacier[window])
    return pd.Series(metrics_from_counts(counts), name="held-out part").loc[
        ["iou", "precision", "recall"]]


def spread_by_class(mapped: xr.Dataset) -> pd.DataFrame:
    """Quantiles of the MC-dropout spread of the glacier probability, per predicted class."""
    classes = mapped["glacier_class"].values
    spread = mapped["mc_spread"].values
    rows = {name: np.quantile(spread[classes == code], [0.5, 0.9, 0.99])
            for name, code in (("background", 0), ("glacier", 1)) if (classes == code).any()}
    return pd.DataFrame(rows, index=["median", "90th percentile", "99th percentile"]).T


def band_table() -> pd.DataFrame:
    """Which file band feeds each of the model's optical bands."""
    sources = ["RGB file band 3 (ETM+ 1)", "RGB file band 2 (ETM+ 2)", "RGB file band 1 (ETM+ 3)",
               "B4 file (ETM+ 4)", "zeros (no SWIR)", "zeros (no SWIR)"]
    names = ["blue", "green", "red", "nir08", "swir16", "swir22"]
    return pd.DataFrame({"model band": OPTICAL_BANDS, "dataset variable": names,
                         "source": sources}).set_index("model band")
