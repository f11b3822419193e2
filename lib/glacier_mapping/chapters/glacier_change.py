"""Chapter 09 (glacier area change): per-glacier maps of two dates, checked, and the Everest scene.

The synthetic pair (:mod:`glacier_mapping.experiments.change_study`) is mapped at both dates
with the global model, its calibrator and the first date's inventory; the per-glacier change
(:mod:`glacier_mapping.change`) is compared with the generator's truth. On the real Everest
scene the held-out part's map is split by the RGI 6.0 outlines and compared with them per
glacier (:mod:`glacier_mapping.outline_comparison`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from affine import Affine
from scipy import stats

from glacier_mapping import evidence
from glacier_mapping.area_uncertainty import (
    AcquisitionShift,
    calibrator_shift,
    fit_logit_shift,
    glacier_probability,
)
from glacier_mapping.change import change_raster
from glacier_mapping.chapters.scene_deployment import open_benchmark_scene
from glacier_mapping.claims import CLAIMS
from glacier_mapping.data.scenes import Grid
from glacier_mapping.deploy import DeploymentSummary, InventoryOptions, deploy_scene
from glacier_mapping.experiments.change_study import MIN_AREA_KM2, ChangeScenes, read_grid
from glacier_mapping.experiments.everest import EVEREST_REGION
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.inventory import GEOGRAPHIC, glacier_outlines, split_by_inventory
from glacier_mapping.metrics import model_columns, table_rows, value_rows
from glacier_mapping.pixel_geometry import pixel_areas_km2
from glacier_mapping.trained_models import histories
from glacier_mapping.uncertainty import LEVEL, Estimate, correlation_interval
from glacier_mapping.workflow import Context

CHAPTER = "09_glacier_change"


def deploy_dates(context: Context, model_path: str | Path, scenes: ChangeScenes,
                 calibrator: str | Path, max_distance_m: float) -> list[DeploymentSummary]:
    """Map every date of the pair with the inventory, into ``outputs/<profile>/change/<date>/``."""
    summaries = []
    for folder in scenes.folders:
        with open_benchmark_scene(folder) as source:
            summaries.append(deploy_scene(
                source, model_path, context.output_dir / "change" / folder.name,
                calibrator_path=calibrator, norm_stats=context.benchmark.stats(),
                inventory=InventoryOptions(scenes.inventory, max_distance_m), progress=False))
    return summaries


def part_grid(transform: Affine, crs: Any, window: tuple[slice, slice]) -> Grid:  # noqa: ANN401
    """The grid of a window of a raster."""
    rows, cols = window
    return Grid(crs, transform * Affine.translation(cols.start, rows.start),
                rows.stop - rows.start, cols.stop - cols.start)


def mapped_glaciers(glacier: np.ndarray, grid: Grid, outlines: gpd.GeoDataFrame,
                    max_distance_m: float) -> gpd.GeoDataFrame:
    """A glacier map split by inventory outlines: id, name, area and outline (WGS 84)."""
    split = split_by_inventory(glacier.astype(np.uint8), grid, outlines, max_distance_m)
    polygons = glacier_outlines(split.labels, grid)
    table = split.glaciers.set_index("label").loc[polygons.index]
    areas = np.bincount(split.labels.ravel(), weights=pixel_areas_km2(grid).ravel(),
                        minlength=len(split.glaciers) + 1)
    return gpd.GeoDataFrame({"rgi_id": table["rgi_id"].to_numpy(object),
                             "glac_name": table["glac_name"].to_numpy(object),
                             "area_km2": areas[polygons.index]},
                            geometry=polygons.to_crs(GEOGRAPHIC).values, crs=GEOGRAPHIC)


def _share(covered: int, total: int) -> Estimate:
    """A share with its Wilson interval (glaciers counted as independent)."""
    if total == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), "no glaciers", 0)
    interval = stats.binomtest(covered, total).proportion_ci(LEVEL, method="wilson")
    return Estimate(covered / total, float(interval.low), float(interval.high),
                    f"Wilson interval over {total} glaciers", total)


def change_findings(context: Context, model: Experiment, change: pd.DataFrame,
                    size: pd.Series) -> list[Finding]:
    """Chapter 09: per-glacier change recovered, and the change intervals' coverage."""
    large = change[size.to_numpy() >= MIN_AREA_KM2]
    common = {"synthetic": True, "models": [model.spec.name],
              "unconverged": evidence.unconverged(histories([model]))}
    correlation = correlation_interval(large["area_change_km2"], large["true_change_km2"],
                                       what="glaciers")
    findings = [
        judge(CLAIMS["change_recovered"], correlation, **common),
        judge(CLAIMS["change_intervals_cover"],
              _share(int(large["covered"].sum()), len(large)), **common),
    ]
    return publish_findings(context.output_dir, CHAPTER, findings)


def pair_shifts(scenes: ChangeScenes, runs: list[DeploymentSummary]) -> pd.DataFrame:
    """Each date's calibration shift, fitted against its truth (a diagnosis, not an input).

    The logit shift that would recalibrate the date's map
    (:func:`glacier_mapping.area_uncertainty.fit_logit_shift`), beside which the spread
    stored with the calibrator can be read.
    """
    rows = []
    for folder, run in zip(scenes.folders, runs, strict=True):
        classes, _ = read_grid(run.outputs["glacier_class.tif"])
        confidence, _ = read_grid(run.outputs["confidence.tif"])
        reference, _ = read_grid(folder / "reference.tif")
        probability = glacier_probability(classes, confidence)
        known = np.isfinite(probability) & (reference != 255)
        rows.append({"date": folder.name,
                     "shift": fit_logit_shift(probability[known], reference[known])})
    return pd.DataFrame(rows).set_index("date")


def stored_shift(calibrator: str | Path) -> AcquisitionShift | None:
    """The spread of acquisition shifts stored with a calibrator (None if it has none)."""
    return calibrator_shift(json.loads(Path(calibrator).read_text(encoding="utf-8")))


def true_change_raster(scenes: ChangeScenes, path: str | Path) -> Path:
    """The change raster of the first and last dates' reference rasters (the true change)."""
    change_raster(scenes.folders[0] / "reference.tif", scenes.folders[-1] / "reference.tif",
                  path)
    return Path(path)


def worst_glaciers(table: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` glaciers with the largest absolute area difference (mapped - reference)."""
    order = table["area_difference_km2"].abs().sort_values(ascending=False).index
    columns = ["rgi_id", "glac_name", "reference_area_km2", "predicted_area_km2",
               "area_deviation_pct", "mean_distance_m", "p95_distance_m"]
    return table.loc[order[:count], columns].set_index("rgi_id")


def change_rows(coverage: pd.DataFrame, model: Experiment, region: str,
                everest: dict[str, float] | None) -> pd.DataFrame:
    """The chapter's metric rows: interval coverage and errors, and the Everest comparison."""
    frame = coverage.reset_index().rename(columns={"what": "experiment"}).assign(
        split="change pair", region=region)
    rows = [table_rows(frame, {"coverage": "interval_coverage",
                               "mean_error_km2": "mean_error_km2",
                               "mean_abs_error_km2": "mean_abs_error_km2",
                               "glaciers": "glaciers"}, **model_columns(model.spec))]
    if everest is not None:
        rows.append(value_rows(everest, experiment="everest per glacier", model="everest",
                               split="held-out", region=EVEREST_REGION))
    return pd.concat(rows, ignore_index=True)


def _judged(coverage: float) -> str:
    if not np.isfinite(coverage):
        return "could not be measured"
    if coverage < 0.8:
        return "too narrow for their 90 % level"
    if coverage > 0.98:
        return "wider than their 90 % level needs"
    return "consistent with their 90 % level"


def summary_text(coverage: pd.DataFrame, scenes: ChangeScenes, shifts: pd.DataFrame,
                 spread: AcquisitionShift | None, everest: dict[str, float] | None) -> str:
    """The chapter's summary in words, every number from this run."""
    lines = [f"- Synthetic pair ({scenes.region}, {scenes.dates[0]} and {scenes.dates[-1]}), "
             f"glaciers of at least {MIN_AREA_KM2:g} km² at the date (for the change: at the "
             "first date):"]
    if spread is not None:
        low, high = spread.range()
        outside = [f"{date} ({value:+.2f})" for date, value in shifts["shift"].items()
                   if not low <= value <= high]
        lines.append(
            "  - calibration shift of the maps against the truth: "
            + ", ".join(f"{date} {value:+.2f}" for date, value in shifts["shift"].items())
            + f" logit; the calibrator's labelled acquisitions give a 90 % range of "
            f"{low:+.2f} to {high:+.2f}"
            + (f", which {' and '.join(outside)} lie{'s' if len(outside) == 1 else ''} "
               "outside: there the intervals cannot be expected to cover." if outside
               else ", which holds both dates."))
    for what, row in coverage.iterrows():
        lines.append(
            f"  - {what}: the 90 % intervals covered the truth for {row['covered']:.0f} of "
            f"{row['glaciers']:.0f} glaciers ({row['coverage']:.0%}), "
            f"{_judged(row['coverage'])}; mean error {row['mean_error_km2']:+.3f} km², "
            f"mean absolute error {row['mean_abs_error_km2']:.3f} km².")
    if everest is None:
        lines.append("- Everest: the real scene was not available in this run.")
    else:
        lines.append(
            f"- Everest held-out part against RGI 6.0, {everest['n_glaciers']:.0f} glaciers "
            f"of at least {MIN_AREA_KM2:g} km²: median absolute area deviation "
            f"{everest['median_abs_area_deviation_pct']:.0f} %, total area "
            f"{everest['area_bias_pct']:+.0f} %; outline distance: median of the glaciers' "
            f"mean distances {everest['median_mean_distance_m']:.0f} m, pooled 95th "
            f"percentile {everest['pooled_p95_distance_m']:.0f} m (one 30 m pixel = 30 m).")
    return "\n".join(lines)
