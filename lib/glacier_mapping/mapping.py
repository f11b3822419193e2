"""Map glaciers in an xarray Dataset from a notebook: :func:`map_glaciers`.

The same checks (:func:`glacier_mapping.deploy.prepare_deployment`) and the same window loop
(:func:`glacier_mapping.scene_inference.mapped_rows`) as ``glacier-mapping deploy``, which
writes the rows to GeoTIFFs where this function fills arrays: on the same scene both give the
same class and confidence. The input is read window by window, so a dask-backed Dataset is
never loaded whole; the result is held in memory (5 bytes per pixel, 9 with the MC-dropout
spread), which for a 10 000 x 10 000 scene is 0.5 GB: write larger areas with ``deploy``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr

from glacier_mapping.data.dataset_source import DatasetSource
from glacier_mapping.data.tiles import NormStats
from glacier_mapping.deploy import (
    GDAL_CACHE_MB,
    DeploymentError,
    DeploymentSetup,
    DeployOptions,
    prepare_deployment,
)
from glacier_mapping.products import PRODUCTS
from glacier_mapping.scene_inference import (
    CLASS_NODATA,
    SceneTotals,
    mapped_rows,
)
from glacier_mapping.store import file_digest
from glacier_mapping.windows import window_origins


def map_glaciers(
    dataset: xr.Dataset,
    model: str | os.PathLike[str],
    *,
    calibrator: str | os.PathLike[str] | None = None,
    product: str | None = None,
    optical_scale: float | None = None,
    optical_offset: float | None = None,
    bands: Mapping[str, str] | None = None,
    spread: bool = False,
    options: DeployOptions | None = None,
    region_vector: str | os.PathLike[str] | None = None,
    norm_stats: NormStats | str | os.PathLike[str] | None = None,
    name: str | None = None,
    date: str | None = None,
    progress: bool = False,
) -> xr.Dataset:
    """Glacier class, calibrated confidence and (optionally) MC-dropout spread of a scene.

    Args:
        dataset: the scene's variables on one georeferenced grid (numpy- or dask-backed; see
            :mod:`glacier_mapping.data.dataset_source` for the variable names).
        model: ``.keras`` model (its ``model_card.json`` or ``norm_stats.json`` beside it
            gives the patch size and normalisation, as for ``deploy``).
        calibrator: calibrator JSON; without it the confidence is uncalibrated and no IoU is
            estimated.
        product: a :data:`glacier_mapping.products.PRODUCTS` name giving the optical scale,
            offset and nodata (instead of ``optical_scale``/``optical_offset``), and the mask
            convention of its quality band (a variable ``scl`` or ``qa_pixel``, any case): its
            clouds, shadows and no data become no data.
        optical_scale: reflectance = value * scale + offset (default 1: reflectance given).
        optical_offset: see ``optical_scale`` (default 0).
        bands: our optical band name -> the dataset's variable, for other names.
        spread: also return ``mc_spread``, the standard deviation of the glacier probability
            over ``options.mc_passes`` MC-dropout passes (at least 2).
        options: how to run the model (:class:`glacier_mapping.deploy.DeployOptions`); by
            default its defaults with the reflectance check on, as in ``deploy``.
        region_vector: region-vector JSON for models with a 12-slot location input.
        norm_stats: statistics (or their JSON) overriding the model's.
        name: scene name; default the dataset's ``name`` attribute.
        date: acquisition date; default the dataset's single ``time`` or ``date`` attribute.
        progress: show a progress bar.

    Returns:
        A Dataset on the input's grid (its ``y``/``x`` coordinates, CRS and transform) with
        ``glacier_class`` (uint8, 1 = glacier, 0 = background, 255 where an input has no
        data), ``confidence`` (float32, NaN there) and, with ``spread``, ``mc_spread``; its
        attributes give the scene, date, model, estimated IoU, glacier area and pixel counts.

    Raises:
        DeploymentError: for a bad option, model, calibrator, sensor mismatch, partial
            coverage or implausible reflectance (as ``deploy``).
        SceneError: for a missing or misnamed variable, another grid, no CRS, a scene
            smaller than one window or without valid pixels.
    """
    options = DeployOptions(reflectance_check=True) if options is None else options
    scale, offset, nodata = _conversion(product, optical_scale, optical_offset)
    if product is not None:
        options = replace(options, product=product)
    source = DatasetSource(dataset, bands, optical_scale=scale, optical_offset=offset,
                           optical_nodata=nodata, name=name, date=date,
                           quality_mask=None if product is None else PRODUCTS[product].mask)
    # GDAL's block cache (files behind a dask-backed Dataset) is capped as in deploy
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        setup = prepare_deployment(source, _model_path(model), options, calibrator,
                                   region_vector, norm_stats)
        plan = setup.plan(spread)
        height, width = source.shape
        classes = np.full((height, width), CLASS_NODATA, np.uint8)
        conf = np.full((height, width), np.nan, np.float32)
        deviation = np.full((height, width), np.nan, np.float32) if spread else None
        totals = SceneTotals(windows=len(window_origins(height, width, plan.patch_size,
                                                        plan.stride)))
        for rows in mapped_rows(source, setup.runner, setup.reader, plan, setup.calibrator,
                                totals, progress):
            block = slice(rows.top, rows.top + len(rows.valid))
            classes[block], conf[block] = rows.classes, rows.confidence
            if deviation is not None:
                deviation[block] = rows.spread
    return _result(source, setup, totals, classes, conf, deviation)


def _model_path(model: str | os.PathLike[str]) -> Path:
    """The model argument as a path (a loaded Keras model is refused with the fix)."""
    if not isinstance(model, str | os.PathLike):
        raise DeploymentError(f"model must be the path of a .keras file, got "
                              f"{type(model).__name__}; save it with model.save('m.keras').")
    return Path(model)


def _conversion(product: str | None, scale: float | None,
                offset: float | None) -> tuple[float, float, float | None]:
    """Optical scale, offset and nodata: the product's, or the given ones."""
    if product is None:
        return (1.0 if scale is None else scale, 0.0 if offset is None else offset, None)
    if product not in PRODUCTS:
        raise DeploymentError(f"product={product!r} is not one of {list(PRODUCTS)}.")
    if scale is not None or offset is not None:
        raise DeploymentError(f"product={product!r} sets the scale and offset; drop "
                              "optical_scale and optical_offset.")
    known = PRODUCTS[product]
    return known.scale, known.offset, known.nodata


def _result(source: DatasetSource, setup: DeploymentSetup, totals: SceneTotals, classes: np.ndarray,
            conf: np.ndarray, deviation: np.ndarray | None) -> xr.Dataset:
    """The mapped arrays as a georeferenced Dataset with the run's figures as attributes."""
    reference = source.reference
    coords = {"y": reference["y"].values, "x": reference["x"].values}
    variables = {
        "glacier_class": xr.DataArray(classes, dims=("y", "x"), coords=coords, attrs={
            "long_name": "glacier class (1 glacier, 0 background)"}),
        "confidence": xr.DataArray(conf, dims=("y", "x"), coords=coords, attrs={
            "long_name": "calibrated confidence" if setup.calibrator is not None
            else "uncalibrated confidence (1 - normalised entropy)"}),
    }
    if deviation is not None:
        variables["mc_spread"] = xr.DataArray(deviation, dims=("y", "x"), coords=coords, attrs={
            "long_name": "standard deviation of the glacier probability over "
                         f"{setup.options.mc_passes} MC-dropout passes"})
    result = xr.Dataset(variables)
    result["glacier_class"] = result["glacier_class"].rio.write_nodata(CLASS_NODATA)
    result = result.rio.write_crs(source.grid.crs).rio.write_transform(source.grid.transform)
    estimated = totals.estimated_iou(setup.calibrator)
    attrs = {
        "scene": source.name, "date": source.date, "model": str(setup.model_path),
        "model_sha256": file_digest(setup.model_path),
        "calibrator": None if setup.calibrator_path is None else str(setup.calibrator_path),
        "estimated_iou": estimated, "glacier_area_km2": totals.area_km2,
        "valid_pixels": totals.valid, "glacier_pixels": totals.glacier,
        "mean_confidence": totals.mean_confidence, "precision": setup.precision,
        "stride": setup.stride, "patch_size": setup.info.patch_size,
    }
    # netCDF attributes cannot be None: leave unknown ones out
    result.attrs.update({key: value for key, value in attrs.items() if value is not None})
    return result
