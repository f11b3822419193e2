"""``glacier-mapping change``: glacier change between two deployments of the same area.

Two output folders of ``glacier-mapping deploy --inventory`` (the earlier first, each with its
``summary.json`` and inventory-layer ``glaciers.gpkg``) give, in ``--out``:

- ``change.csv``: one row per glacier, the table of
  :func:`glacier_mapping.change.glacier_change` with ``date_before`` and ``date_after``;
- ``change.gpkg`` (layer ``change``): the same rows with the glacier's outline in WGS 84, the
  later one, or the earlier one for a vanished glacier;
- ``change.tif``: per-pixel change of the two class rasters
  (:func:`glacier_mapping.change.change_raster`: 0 stable non-glacier, 1 stable glacier,
  2 gained, 3 lost, 255 nodata on either date);
- ``change_summary.json``, written last (a folder with it holds a complete set): the dates,
  the glacier counts, the scene's area change with its interval (the two deployments' scene
  intervals combined by :func:`glacier_mapping.change.change_interval`) and the pixel count and
  area of each change class.

Every input is checked before anything is written; the files are staged inside ``--out`` and
published together, as ``deploy`` does.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio.windows import Window

from glacier_mapping import deploy
from glacier_mapping.change import (
    CHANGE_CLASSES,
    CHANGE_NODATA,
    LAYER_COLUMNS,
    ChangeError,
    _overlap_pairs,
    change_interval,
    change_raster,
    glacier_change,
)

logger = logging.getLogger(__name__)

CHANGE_TABLE = "change.csv"
CHANGE_LAYER_FILE = "change.gpkg"
CHANGE_RASTER = "change.tif"
CHANGE_SUMMARY = "change_summary.json"
#: Files ``change`` publishes; ``change_summary.json``, written last, marks the set complete.
CHANGE_FILES = (CHANGE_TABLE, CHANGE_LAYER_FILE, CHANGE_RASTER, CHANGE_SUMMARY)
CHANGE_LAYER = "change"
_STRIP_ROWS = 1024
_REDEPLOY = "redeploy it with glacier-mapping deploy --inventory [OUTLINES] --calibrator JSON"


@dataclass(frozen=True)
class _Deployment:
    """One checked deploy output folder."""

    folder: Path
    summary: dict[str, Any]
    layer: gpd.GeoDataFrame
    date: datetime.date


def _read_deployment(folder: Path) -> _Deployment:
    """A complete ``deploy --inventory`` output with a date, checked; refuses anything else."""
    summary = deploy.read_summary(folder)
    layer_path = folder / deploy.POLYGON_FILE
    layer = gpd.read_file(layer_path, layer=deploy.POLYGON_LAYER)
    missing = [column for column in LAYER_COLUMNS if column not in layer.columns]
    if missing or summary.get("inventory") is None:
        what = (f"{layer_path} lacks the inventory column(s) {missing}" if missing
                else f"{folder / deploy.SUMMARY_FILE} has no inventory record")
        raise ChangeError(f"{what}: {folder} was deployed without --inventory; {_REDEPLOY}.")
    if not summary.get("date"):
        raise ChangeError(f"{folder / deploy.SUMMARY_FILE} has no acquisition date; {_REDEPLOY} "
                          "--date YYYY-MM-DD.")
    date = datetime.date.fromisoformat(summary["date"])
    return _Deployment(folder, summary, layer, date)


def _row_outlines(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame,
                  table: pd.DataFrame) -> gpd.GeoSeries:
    """Each row's outline: the later glacier's, the earlier one's for a vanished glacier.

    The rows are rebuilt in :func:`glacier_change`'s order (rgi_id matches, overlap pairs of
    glaciers without id, then the unmatched ones of each date) and checked against the table.
    """
    before, after = (layer.assign(rgi_id=layer["rgi_id"].fillna("").astype(str))
                     .reset_index(drop=True) for layer in (before, after.to_crs(before.crs)))
    named = [{ident: index for index, ident in layer["rgi_id"].items() if ident != ""}
             for layer in (before, after)]
    ids = list(named[0]) + [ident for ident in named[1] if ident not in named[0]]
    rows = [(named[0].get(ident), named[1].get(ident)) for ident in ids]
    unnamed = [layer[layer["rgi_id"] == ""] for layer in (before, after)]
    pairs = _overlap_pairs(*unnamed)
    rows += [(unnamed[0].index[i], unnamed[1].index[j]) for i, j in pairs]
    rows += [(index, None) for position, index in enumerate(unnamed[0].index)
             if position not in {i for i, _ in pairs}]
    rows += [(None, index) for position, index in enumerate(unnamed[1].index)
             if position not in {j for _, j in pairs}]
    areas = [(0.0 if i is None else before.at[i, "area_km2"],
              0.0 if j is None else after.at[j, "area_km2"]) for i, j in rows]
    if len(rows) != len(table) or not np.array_equal(
            np.asarray(areas, dtype=np.float64),
            table[["area_before_km2", "area_after_km2"]].to_numpy(dtype=np.float64)):
        raise RuntimeError("The change table's rows no longer follow glacier_change's order; "
                           "update _row_outlines.")
    return gpd.GeoSeries([after.geometry[j] if j is not None else before.geometry[i]
                          for i, j in rows], crs=before.crs)


def _class_counts(path: Path) -> dict[str, int]:
    """Pixels of each change class (and nodata) of a change raster."""
    counts = np.zeros(256, dtype=np.int64)
    with rasterio.open(path) as raster:
        for top in range(0, raster.height, _STRIP_ROWS):
            window = Window(0, top, raster.width, min(_STRIP_ROWS, raster.height - top))
            counts += np.bincount(raster.read(1, window=window).ravel(), minlength=256)
    named = {_key(name): int(counts[code]) for code, name in CHANGE_CLASSES.items()}
    return {**named, "nodata": int(counts[CHANGE_NODATA])}


def _key(name: str) -> str:
    """A change class name as a JSON key (``stable non-glacier`` -> ``stable_non_glacier``)."""
    return name.replace(" ", "_").replace("-", "_")


def _scene_change(before: _Deployment, after: _Deployment) -> dict[str, float]:
    """The scene's expected glacier-area change and its interval, from the two summaries."""
    first, second = before.summary["inventory"], after.summary["inventory"]
    keys = ("expected_area_km2", "area_low_km2", "area_high_km2")
    expected, low, high = change_interval(*(first[key] for key in keys),
                                          *(second[key] for key in keys))
    return {"expected_change_km2": float(expected), "change_low_km2": float(low),
            "change_high_km2": float(high), "level": float(first["level"])}


def _notes(before: _Deployment, after: _Deployment) -> list[str]:
    """What limits the comparison, in words."""
    notes = []
    valid = before.summary["pixels"]["valid"], after.summary["pixels"]["valid"]
    if valid[0] != valid[1]:
        notes.append(f"The deployments have different valid pixels ({valid[0]} before, "
                     f"{valid[1]} after): the scene's area change includes area seen on one date "
                     "only; the pixel change counts pixels valid on both dates.")
    first, second = before.summary["inventory"], after.summary["inventory"]
    for key in ("outlines", "level"):
        if first.get(key) != second.get(key):
            notes.append(f"The deployments differ in inventory {key} ({first.get(key)} before, "
                         f"{second.get(key)} after).")
    return notes


def compare_deployments(before_dir: str | os.PathLike[str], after_dir: str | os.PathLike[str],
                        out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write the change between two ``deploy --inventory`` outputs (see the module docstring).

    Returns:
        The contents of ``change_summary.json``.

    Raises:
        DeploymentError: if a folder holds no complete deployment, or ``out_dir`` is not
            writable.
        ChangeError: if a deployment was made without ``--inventory`` or without a date, the
            later one is not after the earlier one, or the class rasters are on different grids.
    """
    before, after = _read_deployment(Path(before_dir)), _read_deployment(Path(after_dir))
    if after.date <= before.date:
        raise ChangeError(f"the second deployment, {after.folder} ({after.date}), is not after "
                          f"the first, {before.folder} ({before.date}); pass the earlier "
                          "deployment first.")
    out_dir = Path(out_dir)
    with deploy._staging(out_dir) as staging:
        staged = {name: staging / name for name in CHANGE_FILES[:-1]}
        areas = change_raster(before.folder / deploy.CLASS_FILE,
                              after.folder / deploy.CLASS_FILE, staged[CHANGE_RASTER])
        table = glacier_change(before.layer, after.layer)
        table["date_before"], table["date_after"] = str(before.date), str(after.date)
        table.to_csv(staged[CHANGE_TABLE], index=False)
        layer = gpd.GeoDataFrame(table, geometry=_row_outlines(before.layer, after.layer, table))
        with deploy._no_record_counts():
            layer.to_file(staged[CHANGE_LAYER_FILE], layer=CHANGE_LAYER, driver="GPKG")
        status = table["status"].value_counts()
        summary = {
            "before": {"folder": str(before.folder), "scene": before.summary["scene"],
                       "date": str(before.date)},
            "after": {"folder": str(after.folder), "scene": after.summary["scene"],
                      "date": str(after.date)},
            "days": (after.date - before.date).days,
            "glaciers": {name: int(status.get(name, 0))
                         for name in ("matched", "appeared", "vanished")},
            "area_change_km2": float(table["area_change_km2"].sum()),
            **_scene_change(before, after),
            "pixels": _class_counts(staged[CHANGE_RASTER]),
            "areas_km2": {_key(name): area for name, area in areas.items()},
            "outputs": {name: str(out_dir / name) for name in CHANGE_FILES},
            "notes": _notes(before, after),
        }
        for note in summary["notes"]:
            logger.warning(note)
        deploy._publish(staged, out_dir, CHANGE_SUMMARY, summary)
    return summary


def add_change_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``glacier-mapping change`` arguments to ``parser``."""
    parser.add_argument("before", type=Path, metavar="BEFORE",
                        help="output folder of glacier-mapping deploy --inventory, earlier date")
    parser.add_argument("after", type=Path, metavar="AFTER",
                        help="output folder of the same area at a later date (same grid)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help=f"output directory ({', '.join(CHANGE_FILES)})")


def change_from_args(args: argparse.Namespace) -> int:
    """Run ``glacier-mapping change``; returns the exit code (2 for bad input, 128 + signal)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with deploy._signal_handler(deploy._interrupt):
            summary = compare_deployments(args.before, args.after, args.out)
    except (deploy.DeploymentError, ValueError, OSError) as error:
        print(f"glacier-mapping change: error: {error}", file=sys.stderr)
        return 2
    except deploy.DeployInterrupted as stop:
        print(f"glacier-mapping change: interrupted by {signal.Signals(stop.signum).name}; no "
              f"partial outputs were left in {args.out}.", file=sys.stderr)
        return 128 + stop.signum
    glaciers, pixels, areas = summary["glaciers"], summary["pixels"], summary["areas_km2"]
    print(f"{summary['before']['date']} -> {summary['after']['date']}: "
          f"{glaciers['matched']} glaciers matched, {glaciers['appeared']} appeared, "
          f"{glaciers['vanished']} vanished; mapped area change "
          f"{summary['area_change_km2']:+.3f} km2, expected {summary['expected_change_km2']:+.3f}"
          f" km2 ({100 * summary['level']:g} % interval {summary['change_low_km2']:+.3f} to "
          f"{summary['change_high_km2']:+.3f}); {pixels['gained']} px gained "
          f"({areas['gained']:.3f} km2), {pixels['lost']} px lost ({areas['lost']:.3f} km2); "
          f"outputs in {args.out}")
    return 0
