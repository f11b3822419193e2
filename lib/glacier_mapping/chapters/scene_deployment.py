"""Chapter 08 (scene deployment): a benchmark scene deployed from its GeoTIFFs, and findings.

The global model of chapter 02 is run with :func:`glacier_mapping.deploy.deploy_scene` on one
independent scene of the benchmark, read from its GeoTIFFs as a user would hold them, and the
written class raster is compared with the scene's reference raster. The Everest study is
:mod:`glacier_mapping.experiments.everest`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from glacier_mapping import evidence
from glacier_mapping.claims import CLAIMS
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.deploy import DeploymentSummary, deploy_scene
from glacier_mapping.evaluation import confusion_counts
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.trained_models import histories
from glacier_mapping.uncertainty import Estimate
from glacier_mapping.workflow import Context

CHAPTER = "08_scene_deployment"
#: Block size (pixels) that stands in for a tile when one scene is resampled.
SCENE_BLOCK = 64


def scene_info(folder: str | Path) -> dict[str, Any]:
    """The ``scene.json`` of a benchmark scene folder (region, date, kind, ...)."""
    return json.loads((Path(folder) / "scene.json").read_text())


def pick_scene(scenes: Sequence[Path], name: str = "") -> Path:
    """The scene folder called ``name``; by default the first never-seen (``spatial``) one.

    Raises:
        ValueError: if there is no scene or no scene of that name.
    """
    if not scenes:
        raise ValueError("The benchmark has no independent scenes (independent/*/optical.tif).")
    if name:
        chosen = [folder for folder in scenes if folder.name == name]
        if not chosen:
            raise ValueError(f"No scene {name!r}; available: {[f.name for f in scenes]}.")
        return chosen[0]
    spatial = [folder for folder in scenes if scene_info(folder).get("kind") == "spatial"]
    return (spatial or list(scenes))[0]


def open_benchmark_scene(folder: str | Path) -> SceneSource:
    """A benchmark scene's GeoTIFFs as a :class:`SceneSource` (slope derived from the DEM).

    ``optical.tif`` holds the six schema bands as reflectance; ``dem.tif`` band 1 is the
    elevation (its band 2, slope, is recomputed by the source as deployment does for users).
    """
    folder = Path(folder)
    info = scene_info(folder)
    return SceneSource(folder / "optical.tif", list(OPTICAL_BANDS), dem=folder / "dem.tif",
                       name=folder.name, date=info.get("date"))


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Hide a logger's warnings for a block (their text is kept in the deployment notes)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def deploy_benchmark_scene(
    context: Context, model_path: str | Path, folder: str | Path,
    calibrator: str | Path | None = None,
) -> DeploymentSummary:
    """Deploy a model on a benchmark scene into ``outputs/<profile>/deployment/<scene>/``.

    The benchmark's normalisation statistics are passed explicitly, so the model sees the
    same normalisation as in training. Warnings of the deployment (e.g. "no calibrator") are
    not logged; they are in the returned summary's ``notes``.
    """
    folder = Path(folder)
    out_dir = context.output_dir / "deployment" / folder.name
    with open_benchmark_scene(folder) as source, _quiet("glacier_mapping.deploy"):
        return deploy_scene(source, model_path, out_dir, calibrator_path=calibrator,
                            norm_stats=context.benchmark.stats(), progress=False)


def read_band(path: str | Path, band: int = 1) -> np.ndarray:
    """One raster band as float32 with nodata as NaN."""
    with rasterio.open(path) as dataset:
        return dataset.read(band, masked=True).astype(np.float32).filled(np.nan)


def read_optical(folder: str | Path) -> np.ndarray:
    """A benchmark scene's optical bands ``(H, W, 6)`` (reflectance, NaN for nodata)."""
    with rasterio.open(Path(folder) / "optical.tif") as dataset:
        data = dataset.read(masked=True).astype(np.float32).filled(np.nan)
    return np.moveaxis(data, 0, -1)


def compare_with_reference(class_path: str | Path, reference_path: str | Path) -> dict[str, int]:
    """Confusion counts of a deployed class raster against a reference raster (same grid).

    Pixels that are nodata in either raster are left out.

    Raises:
        ValueError: if the two rasters are not on the same grid.
    """
    with rasterio.open(class_path) as predicted, rasterio.open(reference_path) as reference:
        if (predicted.shape != reference.shape or predicted.crs != reference.crs
                or not predicted.transform.almost_equals(reference.transform)):
            raise ValueError(f"{class_path} and {reference_path} are not on the same grid.")
        pred = predicted.read(1, masked=True)
        ref = reference.read(1, masked=True)
    valid = ~(np.ma.getmaskarray(pred) | np.ma.getmaskarray(ref))
    return confusion_counts(np.where(valid, pred.filled(0), 0), np.where(valid, ref.filled(0), 0),
                            valid)


def largest_polygons(gpkg: str | Path, count: int = 10) -> pd.DataFrame:
    """The ``count`` largest deployed polygons: id, area (km²), mean confidence, pixels."""
    frame = gpd.read_file(gpkg)
    columns = ["glacier_id", "area_km2", "mean_confidence", "pixel_count"]
    table = pd.DataFrame(frame[columns]).sort_values("area_km2", ascending=False).head(count)
    return table.reset_index(drop=True).round({"area_km2": 3, "mean_confidence": 3})


def polygon_outlines(gpkg: str | Path, grid: Mapping[str, Any], count: int = 10,
                     ) -> list[np.ndarray]:
    """Exterior rings of the ``count`` largest polygons in km from the grid's lower-left corner.

    Args:
        gpkg: the deployed ``glaciers.gpkg``.
        grid: ``DeploymentSummary.grid`` (``transform`` as 6 numbers, ``height``); rings match
            the km axes of :mod:`glacier_mapping.plots` rasters of that grid.
        count: how many polygons.
    """
    _, _, left, _, e, top = (float(v) for v in grid["transform"][:6])
    bottom = top + e * int(grid["height"])
    frame = gpd.read_file(gpkg).sort_values("area_km2", ascending=False).head(count)
    rings = []
    for geometry in frame.geometry:
        for part in getattr(geometry, "geoms", [geometry]):
            xy = np.asarray(part.exterior.coords)
            rings.append(np.column_stack([(xy[:, 0] - left) / 1000.0,
                                          (xy[:, 1] - bottom) / 1000.0]))
    return rings


def deployment_findings(context: Context, model: Experiment, scene_iou: float,  # noqa: ANN401
                        everest: Any = None, everest_result: Any = None) -> list[Finding]:  # noqa: ANN401
    """Chapter 08: the deployed scene's IoU, and the Everest model against the threshold.

    Args:
        context: The chapter context.
        model: The deployed global model.
        scene_iou: IoU of its deployment on the independent scene.
        everest: The Everest model (None when the real scene is absent).
        everest_result: Its held-out evaluation (``EverestResult``).
    """
    late = evidence.unconverged(histories([model]))
    findings = [judge(CLAIMS["unobserved_scene_level"],
                      Estimate(scene_iou, float("nan"), float("nan"), "one scene", 1),
                      synthetic=context.synthetic, models=[model.card.name],
                      unconverged=late)]
    claim = CLAIMS["model_beats_threshold"]
    if everest is None or everest_result is None:
        findings.append(judge(claim, None, synthetic=False))
    else:
        blocks = pd.concat([
            evidence.block_counts(everest_result.model, everest_result.glacier, SCENE_BLOCK,
                                  label="model"),
            evidence.block_counts(everest_result.threshold, everest_result.glacier,
                                  SCENE_BLOCK, label="threshold"),
        ], ignore_index=True)
        gain = evidence.pooled_difference(blocks, "model", "threshold", seed=context.seed)
        gain = Estimate(gain.value, gain.low, gain.high,
                        gain.method.replace("tiles within regions",
                                            f"{SCENE_BLOCK} px blocks of the held-out part"),
                        gain.n)
        findings.append(judge(claim, gain,
                              synthetic=False, models=[everest.card.name],
                              unconverged=evidence.unconverged(histories([everest]))))
    return publish_findings(context.output_dir, CHAPTER, findings)
