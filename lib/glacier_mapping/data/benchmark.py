"""Build (or open) a benchmark directory: train/val/test HDF5 tiles, statistics, independent scenes.

A built directory holds, like the paper's benchmark (BENCHMARK.md):

- ``train.hdf5``, ``val.hdf5``, ``test.hdf5``: tiles of each region's main acquisition split
  at random about 60/20/20 per region and acquisition;
- ``norm_stats.json``: per-sensor, per-channel min/max of the raw training tiles;
- ``independent.hdf5``: optical + DEM tiles of the independent acquisitions: later dates of
  known regions (``acquisition="temporal"``) and whole regions never used in training
  (``acquisition="spatial"``);
- ``independent/<REGION>_<date>/``: the same scenes as a user would hold them: one GeoTIFF per
  sensor (``optical.tif`` 6 bands of reflectance, ``dem.tif`` elevation and slope; raw
  physical units, UTM CRS, transform, nodata), ``reference.tif`` (uint8, 1 = glacier) and
  ``reference.gpkg`` (glacier polygons), plus ``scene.json`` (region, date, kind).

:func:`open_benchmark` also finds the paper's files (``*_train_*.hdf5`` etc., e.g.
``20230905_train_global_ps384.hdf5`` or ``gsgm_train_DEMO.hdf5``); pass ``tag`` to choose
between several matches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import rasterio.features
from shapely.geometry import shape

from glacier_mapping.data.regions import REGIONS, Region, get_region
from glacier_mapping.data.schema import GLACIER_CLASS, LABEL_DATASET
from glacier_mapping.data.synthetic import (
    DEFAULT_PIXEL_SIZE_M,
    SyntheticScene,
    generate_scene,
    parse_date,
    scene_rng,
)
from glacier_mapping.data.tiles import (
    NORM_STATS_FILE,
    NormStats,
    Tile,
    load_norm_stats,
    make_tile,
    open_tile_file,
    validate_file,
    write_tiles,
)
from glacier_mapping.store import atomic_path, atomic_write_text

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Tiles per file whose values :meth:`BenchmarkFiles.validate` reads (one row each).
SAMPLED_TILES = 64
INDEPENDENT_SENSORS: tuple[str, ...] = ("optical", "dem")
_BAND_NAMES = {
    "optical": ("blue", "green", "red", "nir", "swir1", "swir2"),
    "dem": ("elevation_m", "slope_deg"),
}
_NODATA = -9999.0
_SPLIT_KEY = 1  # date key reserved for the split permutation (never a date ordinal)


@dataclass(frozen=True)
class BenchmarkSpec:
    """What to generate.

    Attributes:
        regions: region codes whose main acquisitions are tiled into train/val/test.
        independent_regions: region codes never used in training (spatial generalisation).
        temporal_regions: known regions that also get later acquisitions (temporal
            generalisation); ``None`` means all of ``regions``.
        tiles_per_side: each scene is a ``tiles_per_side x tiles_per_side`` grid of tiles.
        tile_size: tile height and width before padding (pixels).
        patch_size: tiles are zero-padded (centred) to a multiple of it.
        main_date: year or ISO date of the main acquisitions; ``None`` = each region's year.
        later_dates: years or ISO dates of the later acquisitions (distinct years).
        seed: base seed; the same spec gives byte-identical HDF5 and GeoTIFF files.
        pixel_size_m: ground resolution (m).
        split: train/val/test shares.
    """

    regions: tuple[str, ...]
    independent_regions: tuple[str, ...] = ()
    temporal_regions: tuple[str, ...] | None = None
    tiles_per_side: int = 2
    tile_size: int = 128
    patch_size: int = 64
    main_date: int | str | None = None
    later_dates: tuple[int | str, ...] = (2023,)
    seed: int = 0
    pixel_size_m: float = DEFAULT_PIXEL_SIZE_M
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        """Validate the spec with messages that say how to fix it."""
        for code in (*self.regions, *self.independent_regions, *(self.temporal_regions or ())):
            get_region(code)
        if not self.regions:
            raise ValueError("BenchmarkSpec.regions must name at least one region.")
        overlap = set(self.regions) & set(self.independent_regions)
        if overlap:
            raise ValueError(f"Regions {sorted(overlap)} are both training and independent.")
        unknown = set(self.temporal_regions or ()) - set(self.regions)
        if unknown:
            raise ValueError(f"temporal_regions {sorted(unknown)} must be among regions.")
        if self.tiles_per_side < 1 or self.tile_size < 32 or self.patch_size < 1:
            raise ValueError("tiles_per_side >= 1, tile_size >= 32 and patch_size >= 1 needed.")
        if self.tiles_per_side**2 < 3:
            raise ValueError("tiles_per_side must be at least 2 so every split gets a tile.")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) <= 0:
            raise ValueError(f"split={self.split} must be three positive shares summing to 1.")
        years = [self._year(date) for date in self.later_dates]
        if len(set(years)) != len(years):
            raise ValueError(f"later_dates={self.later_dates} must fall in distinct years.")

    @staticmethod
    def _year(date: int | str) -> int:
        return int(date) if isinstance(date, int) else int(str(date)[:4])

    @property
    def scene_size(self) -> int:
        """Scene height and width in pixels."""
        return self.tiles_per_side * self.tile_size

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (for cache keys and manifests)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def preset(cls, name: str, seed: int = 0) -> BenchmarkSpec:
        """The ``smoke`` or ``quick`` benchmark.

        Raises:
            ValueError: for another name.
        """
        if name == "smoke":
            return cls(
                regions=("ALP", "HMA", "SVAL"), independent_regions=("SC",),
                temporal_regions=("ALP",), tiles_per_side=2, tile_size=112, patch_size=64,
                seed=seed,
            )
        if name == "quick":
            return cls(
                regions=("ALP", "AWA", "GR", "HMA", "NZ", "SA", "SVAL"),
                independent_regions=("CA", "SC"), temporal_regions=("ALP", "AWA"),
                tiles_per_side=4, tile_size=200, patch_size=128, seed=seed,
            )
        raise ValueError(f"Unknown benchmark preset {name!r}; use 'smoke' or 'quick'.")


@dataclass
class BenchmarkFiles:
    """Paths of a benchmark directory.

    Attributes:
        root: the directory.
        train: training tiles.
        val: validation tiles.
        test: test tiles.
        norm_stats: normalisation JSON, or None (the paper's ranges apply).
        independent: independent-acquisition tiles, or None.
        scenes: folders of independent scenes as GeoTIFFs.
    """

    root: Path
    train: Path
    val: Path
    test: Path
    norm_stats: Path | None = None
    independent: Path | None = None
    scenes: list[Path] = field(default_factory=list)

    def split_path(self, split: str) -> Path:
        """Path of a split (``train``, ``val``, ``test`` or ``independent``).

        Raises:
            ValueError: for an unknown split or a missing independent file.
        """
        path = {"train": self.train, "val": self.val, "test": self.test}.get(split)
        if split == "independent":
            path = self.independent
        if path is None:
            raise ValueError(f"No {split!r} file in {self.root}.")
        return path

    def stats(self) -> NormStats:
        """Normalisation statistics (the paper's ranges when no JSON is present)."""
        return load_norm_stats(self.root)

    def validate(self, sample: int = SAMPLED_TILES) -> dict[str, int]:
        """Check every tile file and the statistics cheaply; the tile count per split.

        Every tile's layout is checked from the HDF5 metadata, values only in ``sample`` tiles
        per file (:func:`~glacier_mapping.data.tiles.validate_file`).

        Raises:
            TileFormatError: naming the file, the tile, the field and the fix.
            ValueError: if ``norm_stats.json`` is not valid statistics.
        """
        self.stats()
        named = {"train": self.train, "val": self.val, "test": self.test,
                 "independent": self.independent}
        return {split: validate_file(path, sample=sample)
                for split, path in named.items() if path is not None}

    def summary(self) -> pd.DataFrame:
        """Tiles and glacier share (of unpadded pixels) per region, subregion, split and date."""
        rows = []
        named = [("train", self.train), ("val", self.val), ("test", self.test)]
        if self.independent is not None:
            named.append(("independent", self.independent))
        for split, path in named:
            with open_tile_file(path) as handle:
                for name, group in handle.items():
                    attrs = group.attrs
                    top, left = int(attrs["padding_height"]), int(attrs["padding_width"])
                    height, width = int(attrs["original_height"]), int(attrs["original_width"])
                    glacier = group[LABEL_DATASET][
                        top : top + height, left : left + width, GLACIER_CLASS
                    ]
                    kind = _attr(attrs, "acquisition", "")
                    rows.append(
                        {
                            "region": _attr(attrs, "region", ""),
                            "subregion": _attr(attrs, "subregion", ""),
                            "split": f"{split}_{kind}" if kind else split,
                            "date": _attr(attrs, "date", ""),
                            "glacier_pixels": float(np.sum(glacier > 0.5)),
                            "pixels": float(height * width),
                            "tile": name,
                        }
                    )
        table = pd.DataFrame(rows)
        grouped = table.groupby(["region", "subregion", "split", "date"], sort=True).agg(
            tiles=("tile", "count"), glacier=("glacier_pixels", "sum"), pixels=("pixels", "sum")
        )
        grouped["glacier_share"] = grouped.pop("glacier") / grouped.pop("pixels")
        return grouped.reset_index()


def _attr(attrs: object, key: str, default: str) -> str:
    """A string attribute or a default."""
    value = attrs.get(key, default)
    return value.decode() if isinstance(value, bytes) else str(value)


def _split_assignment(spec: BenchmarkSpec, region: Region) -> list[str]:
    """Random 60/20/20 split of a region's tiles (row-major order), seeded per region."""
    count = spec.tiles_per_side**2
    n_val = max(1, round(spec.split[1] * count))
    n_test = max(1, round(spec.split[2] * count))
    labels = ["train"] * (count - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    order = scene_rng(spec.seed, region.code, _SPLIT_KEY).permutation(count)
    return [labels[rank] for rank in np.argsort(order)]


def _windows(spec: BenchmarkSpec) -> Iterator[tuple[int, int, int, int]]:
    """Tile grid indices and pixel offsets, row-major."""
    for i in range(spec.tiles_per_side):
        for j in range(spec.tiles_per_side):
            yield i, j, i * spec.tile_size, j * spec.tile_size


def _scene_tiles(
    scene: SyntheticScene,
    spec: BenchmarkSpec,
    stats: NormStats,
    subregion: str,
    sensors: tuple[str, ...],
    keep: Callable[[int], bool],
    extra: dict[str, object],
) -> Iterator[Tile]:
    """Cut, normalise and pad the tiles of a scene whose grid index passes ``keep``."""
    size = spec.tile_size
    for index, (i, j, row, col) in enumerate(_windows(spec)):
        if not keep(index):
            continue
        window = (slice(row, row + size), slice(col, col + size))
        features = {s: stats.normalise(s, scene.features[s][window]) for s in sensors}
        transform = scene.window_transform(row, col)
        yield make_tile(
            f"{subregion}-{i}-{j}",
            scene.region.code,
            features,
            scene.labels[window],
            scene.window_bounds(row, col, size, size),
            spec.patch_size,
            {
                "date": scene.date,
                "sensor": "synthetic",
                "crs": scene.crs,
                "transform": np.array(transform[:6], dtype=np.float64),
                **extra,
            },
        )


def _write_json(path: Path, payload: dict[str, object]) -> None:
    """Write JSON atomically."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def _write_geotiff(path: Path, array: np.ndarray, scene: SyntheticScene, names: tuple[str, ...],
                   nodata: float) -> None:
    """Write an ``H x W x C`` array as a tiled, deflated GeoTIFF, atomically."""
    height, width, count = array.shape
    profile = {
        "driver": "GTiff", "height": height, "width": width, "count": count,
        "dtype": array.dtype.name, "crs": scene.crs, "transform": scene.transform,
        "nodata": nodata, "tiled": True, "blockxsize": 256, "blockysize": 256,
        "compress": "deflate",
    }
    with atomic_path(path) as temporary, rasterio.open(temporary, "w", **profile) as dst:
        dst.write(np.moveaxis(array, -1, 0))
        for band, name in enumerate(names, start=1):
            dst.set_band_description(band, name)


def write_scene_files(scene: SyntheticScene, folder: Path, kind: str) -> Path:
    """Write an independent scene as a user would hold it: GeoTIFFs, reference raster + GPKG."""
    folder.mkdir(parents=True, exist_ok=True)
    for sensor in INDEPENDENT_SENSORS:
        _write_geotiff(
            folder / f"{sensor}.tif", scene.features[sensor], scene, _BAND_NAMES[sensor], _NODATA
        )
    _write_geotiff(folder / "reference.tif", scene.labels[..., None], scene, ("glacier",), 255)
    polygons = [
        shape(geometry)
        for geometry, value in rasterio.features.shapes(
            scene.labels, mask=scene.labels == 1, transform=scene.transform
        )
        if value == 1
    ]
    frame = gpd.GeoDataFrame(
        {
            "glacier_id": np.arange(1, len(polygons) + 1),
            "region": scene.region.code,
            "date": scene.date,
        },
        geometry=polygons,
        crs=scene.crs,
    )
    frame["area_km2"] = frame.geometry.area / 1e6
    with atomic_path(folder / "reference.gpkg") as temporary:
        frame.to_file(temporary, driver="GPKG", layer="glaciers")
    meta = {
        "region": scene.region.code,
        "subregion": scene.region.subregion,
        "date": scene.date,
        "kind": kind,
        "crs": scene.crs,
        "sensors": list(INDEPENDENT_SENSORS),
        "pixel_size_m": scene.pixel_size_m,
    }
    _write_json(folder / "scene.json", meta)
    return folder


def build_benchmark(
    spec: BenchmarkSpec, out_dir: str | Path, log: Callable[[str], None] | None = None
) -> BenchmarkFiles:
    """Generate the synthetic benchmark described by ``spec`` into ``out_dir``.

    Args:
        spec: what to generate.
        out_dir: target directory (created; existing benchmark files are replaced).
        log: optional callback for progress lines.

    Returns:
        The paths of the written files.
    """
    say = log or (lambda message: None)
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)

    def scene_for(code: str, date: int | str | None) -> SyntheticScene:
        region = REGIONS[code]
        say(f"generating {code} {date or region.year}")
        return generate_scene(
            region, spec.scene_size, spec.seed, date or region.year,
            pixel_size_m=spec.pixel_size_m,
        )

    scenes = {code: scene_for(code, spec.main_date) for code in spec.regions}
    assignments = {code: _split_assignment(spec, REGIONS[code]) for code in spec.regions}
    stats = NormStats({}, {}, source=f"synthetic training tiles, seed {spec.seed}")
    size = spec.tile_size
    for code, scene in scenes.items():
        for index, (_, _, row, col) in enumerate(_windows(spec)):
            if assignments[code][index] == "train":
                window = (slice(row, row + size), slice(col, col + size))
                stats.update({s: a[window] for s, a in scene.features.items()})
    stats_path = stats.to_json(root / NORM_STATS_FILE)

    def split_tiles(split: str) -> Iterator[Tile]:
        for code, scene in scenes.items():
            region = REGIONS[code]
            yield from _scene_tiles(
                scene, spec, stats, region.subregion, scene.sensors,
                lambda index, code=code: assignments[code][index] == split, {},
            )

    paths = {}
    for split in SPLITS:
        paths[split] = root / f"{split}.hdf5"
        count = write_tiles(paths[split], split_tiles(split))
        say(f"wrote {count} tiles to {paths[split].name}")
    scenes.clear()

    folders: list[Path] = []

    def independent_tiles() -> Iterator[Tile]:
        acquisitions = [
            (code, date, "temporal")
            for code in (spec.regions if spec.temporal_regions is None else spec.temporal_regions)
            for date in spec.later_dates
        ] + [(code, spec.main_date, "spatial") for code in spec.independent_regions]
        for code, date, kind in acquisitions:
            region = REGIONS[code]
            scene = scene_for(code, date)
            subregion = region.subregion
            if kind == "temporal":
                subregion = f"{subregion}_{parse_date(date, region).year}"
            folders.append(
                write_scene_files(scene, root / "independent" / f"{code}_{scene.date}", kind)
            )
            yield from _scene_tiles(
                scene, spec, stats, subregion, INDEPENDENT_SENSORS, lambda index: True,
                {"acquisition": kind},
            )

    independent = None
    if spec.independent_regions or spec.later_dates:
        independent = root / "independent.hdf5"
        count = write_tiles(independent, independent_tiles())
        say(f"wrote {count} tiles to {independent.name}")
    _write_json(root / "spec.json", spec.to_dict())
    return BenchmarkFiles(
        root, paths["train"], paths["val"], paths["test"], stats_path, independent,
        sorted(folders),
    )


def _find(root: Path, split: str, tag: str | None) -> Path | None:
    """The file of a split: ``<split>.hdf5`` or the paper's ``*_<split>_*.hdf5``."""
    exact = root / f"{split}.hdf5"
    candidates = [exact] if exact.exists() and tag is None else sorted(
        {*root.glob(f"*_{split}_*.hdf5"), *root.glob(f"*_{split}.hdf5")}
    )
    if tag is not None:
        candidates = [path for path in candidates if tag in path.name]
    if len(candidates) > 1:
        raise ValueError(
            f"Several {split} files in {root}: {[p.name for p in candidates]}; pass tag= "
            "(e.g. tag='DEMO') to choose one."
        )
    return candidates[0] if candidates else None


def open_benchmark(data_dir: str | Path, tag: str | None = None) -> BenchmarkFiles:
    """Open an existing benchmark directory (ours or the paper's files) without reading tiles.

    :meth:`BenchmarkFiles.validate` checks the tiles (``workflow.open_context`` does, once per
    data fingerprint).

    Args:
        data_dir: the directory.
        tag: a substring that selects among several files of one split (e.g. ``DEMO``).

    Raises:
        FileNotFoundError: if the directory or a train/val/test file is missing.
        ValueError: if several files match one split.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Benchmark directory {root} does not exist; pass an existing directory, build one "
            "with build_benchmark() or download the paper's files (doi:10.11582/2024.00168)."
        )
    found = {split: _find(root, split, tag) for split in SPLITS}
    missing = [split for split, path in found.items() if path is None]
    if missing:
        raise FileNotFoundError(
            f"{root}: no {missing} file(s); expected train.hdf5, val.hdf5, test.hdf5 or the "
            "paper's *_train_*.hdf5, *_val_*.hdf5, *_test_*.hdf5."
        )
    independent = root / "independent.hdf5"
    stats = root / NORM_STATS_FILE
    scene_root = root / "independent"
    scenes = []
    if scene_root.is_dir():
        scenes = sorted(path.parent for path in scene_root.glob("*/optical.tif"))
    return BenchmarkFiles(
        root, found["train"], found["val"], found["test"],
        stats if stats.exists() else None,
        independent if independent.exists() else None,
        scenes,
    )
