"""The change study: one synthetic area mapped at two dates and checked against the truth.

The generator keeps a region's terrain fixed and raises its ELA by
:data:`~glacier_mapping.data.synthetic.ELA_RISE_M_PER_YEAR` per year, so two acquisitions
some years apart show the same glaciers shrinking (:func:`change_scenes`). The terrain is a
new one (seeded with ``seed +`` :data:`CHANGE_SEED_OFFSET`), never cut into training tiles.
The first date's true glaciers (4-connected components of the reference raster) form the
inventory both dates are split by (:func:`truth_inventory`), with identifiers
``SYN-<region>-<n>``; the true per-glacier areas of each date come from splitting that date's
reference raster by the same rule as the maps (:func:`true_areas`), so a perfect map would
give exactly the true areas and changes.

Stands in for: a glaciologist mapping one area twice with an inventory of the first date.
Breaks down: the inventory is the first date's truth (a real inventory is older, drawn by
hand and its glaciers are divided at ice divides, not by connectivity); both dates share sun
geometry and season apart from the generator's seasonal terms; the synthetic glaciers
retreat only through the ELA (no debris cover changes, no surges, no calving retreat).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from glacier_mapping.data.benchmark import write_scene_files
from glacier_mapping.data.regions import REGIONS
from glacier_mapping.data.scenes import Grid
from glacier_mapping.data.synthetic import generate_scene
from glacier_mapping.inventory import (
    DEFAULT_MAX_DISTANCE_M,
    glacier_outlines,
    split_by_inventory,
)
from glacier_mapping.pixel_geometry import pixel_areas_km2
from glacier_mapping.store import atomic_path
from glacier_mapping.workflow import Context

#: Added to the run's seed for the study's terrain, so it is not the training scenes' terrain.
CHANGE_SEED_OFFSET = 7919
#: File of the first date's true glaciers (RGI 7.0 columns) in the scenes' artifact.
INVENTORY_FILE = "inventory.gpkg"
#: Glaciers at least this large (km², true area at the first date) enter the coverage checks.
MIN_AREA_KM2 = 0.1


@dataclass(frozen=True)
class ChangeScenes:
    """Scene folders of one synthetic area at several dates, and its inventory.

    Attributes:
        region: region code.
        dates: acquisition dates (ISO), oldest first.
        folders: one scene folder per date (``optical.tif``, ``dem.tif``, ``reference.tif``,
            ``scene.json``, as the benchmark's independent scenes).
        inventory: GeoPackage of the first date's true glaciers.
    """

    region: str
    dates: tuple[str, ...]
    folders: tuple[Path, ...]
    inventory: Path


def read_grid(path: str | Path) -> tuple[np.ndarray, Grid]:
    """Band 1 of a raster and its grid."""
    with rasterio.open(path) as dataset:
        return dataset.read(1), Grid(dataset.crs, dataset.transform, dataset.height,
                                     dataset.width)


def truth_inventory(reference: np.ndarray, grid: Grid, region: str) -> gpd.GeoDataFrame:
    """The true glaciers of a reference raster as an RGI 7.0-style inventory (scene CRS)."""
    split = split_by_inventory(reference, grid, None)
    outlines = glacier_outlines(split.labels, grid)
    ids = [f"SYN-{region}-{label:05d}" for label in outlines.index]
    return gpd.GeoDataFrame({"rgi_id": ids, "glims_id": "", "glac_name": ""},
                            geometry=outlines.values, crs=grid.crs)


def change_scenes(context: Context, region: str, years_apart: int) -> ChangeScenes:
    """Generate (once, cached) one area at the region's year and ``years_apart`` later.

    The scenes have the profile's scene size and pixel size.

    Raises:
        ValueError: for an unknown region or ``years_apart < 1``.
    """
    if region not in REGIONS:
        raise ValueError(f"region={region!r} is not one of {sorted(REGIONS)}.")
    if years_apart < 1:
        raise ValueError(f"years_apart={years_apart} must be at least 1.")
    spec = context.profile.data
    years = (REGIONS[region].year, REGIONS[region].year + years_apart)
    params = {"region": region, "years": years, "size": spec.scene_size,
              "pixel_size_m": spec.pixel_size_m, "seed": context.seed + CHANGE_SEED_OFFSET}

    def build(directory: Path) -> dict[str, object]:
        dates = []
        for year in years:
            scene = generate_scene(REGIONS[region], spec.scene_size, params["seed"], year,
                                   pixel_size_m=spec.pixel_size_m)
            write_scene_files(scene, directory / scene.date, "change")
            dates.append(scene.date)
        reference, grid = read_grid(directory / dates[0] / "reference.tif")
        with atomic_path(directory / INVENTORY_FILE) as temporary:
            truth_inventory(reference, grid, region).to_file(temporary, layer="glaciers",
                                                             driver="GPKG")
        return {"dates": dates}

    artifact = context.store.get_or_create("change_scenes", params, build)
    dates = tuple(sorted(p.name for p in artifact.path.iterdir() if (p / "scene.json").is_file()))
    return ChangeScenes(region, dates, tuple(artifact.path / d for d in dates),
                        artifact.path / INVENTORY_FILE)


def true_areas(reference_path: str | Path, inventory: gpd.GeoDataFrame,
               max_distance_m: float = DEFAULT_MAX_DISTANCE_M) -> pd.DataFrame:
    """True area (km²) per inventory glacier: the reference split as the maps are."""
    reference, grid = read_grid(reference_path)
    split = split_by_inventory(reference, grid, inventory, max_distance_m,
                               valid=reference != 255)
    areas = np.bincount(split.labels.ravel(), weights=pixel_areas_km2(grid).ravel(),
                        minlength=len(split.glaciers) + 1)[1:]
    table = split.glaciers.assign(true_area_km2=areas)
    return table.loc[table["origin"] == "inventory", ["rgi_id", "true_area_km2"]]


def area_coverage(layer: gpd.GeoDataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Mapped areas and intervals of one date beside the true areas, per inventory glacier.

    An inventory glacier the map has no ice for has no row in the layer: the map claims no
    ice there, so its area, expected area and interval are 0 (covered only if the truth has
    no ice either).
    """
    mapped = pd.DataFrame(layer.drop(columns="geometry"))
    table = truth.merge(mapped[["rgi_id", "area_km2", "expected_area_km2", "area_low_km2",
                                "area_high_km2"]], on="rgi_id", how="left")
    mapped_columns = ["area_km2", "expected_area_km2", "area_low_km2", "area_high_km2"]
    table[mapped_columns] = table[mapped_columns].fillna(0.0)
    table["error_km2"] = table["expected_area_km2"] - table["true_area_km2"]
    table["covered"] = ((table["area_low_km2"] <= table["true_area_km2"])
                        & (table["true_area_km2"] <= table["area_high_km2"]))
    return table


def change_coverage(change: pd.DataFrame, before: pd.DataFrame, after: pd.DataFrame
                    ) -> pd.DataFrame:
    """Mapped change and its interval beside the true change, per inventory glacier.

    A glacier the maps have no ice for on either date is ``not mapped``: mapped change 0, no
    expected change and no interval (not covered).
    """
    truth = before.merge(after, on="rgi_id", suffixes=("_before", "_after"))
    truth["true_change_km2"] = truth["true_area_km2_after"] - truth["true_area_km2_before"]
    columns = ["rgi_id", "status", "area_change_km2", "expected_change_km2", "change_low_km2",
               "change_high_km2"]
    table = truth.merge(change[columns], on="rgi_id", how="left")
    table["status"] = table["status"].fillna("not mapped")
    table["area_change_km2"] = table["area_change_km2"].fillna(0.0)
    table["error_km2"] = table["expected_change_km2"] - table["true_change_km2"]
    table["covered"] = ((table["change_low_km2"] <= table["true_change_km2"])
                        & (table["true_change_km2"] <= table["change_high_km2"]))
    return table


def coverage_summary(table: pd.DataFrame, size: pd.Series, what: str,
                     min_area_km2: float = MIN_AREA_KM2) -> dict[str, object]:
    """Share of glaciers with ``size >= min_area_km2`` whose interval covers the truth.

    ``size`` is the true area that decides which glaciers count: that date's for an area
    (glaciers that exist then), the first date's for a change.
    """
    large = table[size.to_numpy() >= min_area_km2]
    errors = large["error_km2"].to_numpy(dtype=float)
    return {"what": what, "glaciers": int(len(large)),
            "covered": int(large["covered"].sum()),
            "coverage": float(large["covered"].mean()) if len(large) else float("nan"),
            "mean_error_km2": float(np.nanmean(errors)) if len(large) else float("nan"),
            "mean_abs_error_km2": float(np.nanmean(np.abs(errors))) if len(large)
            else float("nan")}
