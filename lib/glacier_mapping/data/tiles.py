"""The paper's HDF5 tile schema: write, read and validate tiles, and min-max normalisation.

Layout (FACTS.md 1.3-1.4, BENCHMARK.md section 1): one group per tile named
``<SUBREGION>-<i>-<j>``; datasets ``H x W x C`` float32 (``optical``, ``dem``, ``co_pol_sar``,
``cross_pol_sar``, ``in_sar``, ``thermal``; optional ones absent) min-max normalised with
dataset-wide statistics, and ``outlines`` (2-channel one-hot, channel 1 = glacier); group
attributes ``region``, ``subregion``, ``height``, ``width``, ``original_height``,
``original_width``, ``padding_height``, ``padding_width``, ``xmin``, ``xmax``, ``ymin``,
``ymax``. Tiles are zero-padded, centred, to a multiple of the patch size; ``padding_height``
and ``padding_width`` are the padding before the first row and column. Our files may add
``date``, ``sensor``, ``crs`` and ``transform`` (of the unpadded tile); readers never need them.
Normalisation statistics live in a JSON file beside the HDF5 files (``norm_stats.json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from glacier_mapping.data.schema import LABEL_DATASET, NUM_CLASSES, SENSOR_CHANNELS, SENSORS
from glacier_mapping.store import atomic_path, atomic_write_text

#: Group attributes every tile must carry (the paper's layout).
REQUIRED_ATTRS: tuple[str, ...] = (
    "region", "subregion", "height", "width", "original_height", "original_width",
    "padding_height", "padding_width", "xmin", "xmax", "ymin", "ymax",
)
NORM_STATS_FILE = "norm_stats.json"
_TILE_NAME = re.compile(r"^(?P<subregion>[^-/]+)-(?P<i>\d+)-(?P<j>\d+)$")

#: The paper's normalisation ranges (FACTS.md 1.3); optical is a representative band range.
PAPER_NORM_RANGES: dict[str, tuple[list[float], list[float]]] = {
    "optical": ([-0.01] * 6, [2.3] * 6),
    "dem": ([-103.3, 0.0], [8349.4, 89.0]),
    "co_pol_sar": ([-6.0, -6.0], [1.76, 15.64]),
    "cross_pol_sar": ([-6.0, -6.0], [1.39, 15.91]),
    "in_sar": ([0.0, 0.0], [1.0, 1.0]),
    "thermal": ([0.0], [322.1]),
}


class TileFormatError(ValueError):
    """A tile file does not follow the schema; the message names the file, tile and problem."""


@dataclass
class NormStats:
    """Per-sensor, per-channel minimum and maximum for min-max normalisation.

    Attributes:
        minimum: sensor -> per-channel minima.
        maximum: sensor -> per-channel maxima.
        source: where the numbers come from (``paper`` or a description of the data).
        clip: whether scenes' normalised values are clipped to [0, 1] (the range of the
            training data under min-max statistics); False for a standardisation written as
            min = mean, max = mean + std, whose values are unbounded in training too.
    """

    minimum: dict[str, list[float]]
    maximum: dict[str, list[float]]
    source: str = "data"
    clip: bool = True

    @classmethod
    def paper(cls) -> NormStats:
        """The paper's dataset-wide ranges (used when no JSON is present)."""
        return cls(
            {name: list(low) for name, (low, _) in PAPER_NORM_RANGES.items()},
            {name: list(high) for name, (_, high) in PAPER_NORM_RANGES.items()},
            source="paper",
        )

    def update(self, features: dict[str, np.ndarray]) -> None:
        """Extend the ranges with raw ``H x W x C`` arrays (ignoring NaN)."""
        for name, array in features.items():
            flat = array.reshape(-1, array.shape[-1])
            low = np.nanmin(flat, axis=0).astype(float).tolist()
            high = np.nanmax(flat, axis=0).astype(float).tolist()
            if name in self.minimum:
                low = np.minimum(self.minimum[name], low).tolist()
                high = np.maximum(self.maximum[name], high).tolist()
            self.minimum[name], self.maximum[name] = low, high

    def normalise(self, sensor: str, array: np.ndarray) -> np.ndarray:
        """Min-max normalise a raw ``... x C`` array of one sensor to about [0, 1] (float32).

        Raises:
            ValueError: if the sensor has no statistics or the channel count differs.
        """
        low, high = self._range(sensor, array.shape[-1])
        return ((array - low) / np.maximum(high - low, 1e-12)).astype(np.float32)

    def denormalise(self, sensor: str, array: np.ndarray) -> np.ndarray:
        """Invert :meth:`normalise` (float32 physical units)."""
        low, high = self._range(sensor, array.shape[-1])
        return (array * np.maximum(high - low, 1e-12) + low).astype(np.float32)

    def _range(self, sensor: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
        if sensor not in self.minimum:
            raise ValueError(
                f"No normalisation statistics for sensor {sensor!r} (have {sorted(self.minimum)})."
            )
        low = np.asarray(self.minimum[sensor], dtype=np.float64)
        high = np.asarray(self.maximum[sensor], dtype=np.float64)
        if low.size != channels:
            raise ValueError(
                f"Sensor {sensor!r}: array has {channels} channels, statistics have {low.size}."
            )
        return low, high

    def to_json(self, path: str | Path) -> Path:
        """Write the statistics as JSON (atomically) and return the path."""
        payload = {
            "source": self.source,
            "clip": self.clip,
            "sensors": {
                name: {"min": self.minimum[name], "max": self.maximum[name]}
                for name in SENSORS
                if name in self.minimum
            },
        }
        return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> NormStats:
        """Read statistics written by :meth:`to_json`.

        Raises:
            ValueError: if the file is not valid statistics JSON.
        """
        try:
            payload = json.loads(Path(path).read_text())
            sensors = payload["sensors"]
            return cls(
                {name: [float(v) for v in item["min"]] for name, item in sensors.items()},
                {name: [float(v) for v in item["max"]] for name, item in sensors.items()},
                source=str(payload.get("source", "data")),
                clip=bool(payload.get("clip", True)),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path}: not a normalisation-statistics JSON ({error}); delete it to fall back "
                "to the paper's ranges or rebuild the benchmark."
            ) from None


def load_norm_stats(location: str | Path) -> NormStats:
    """Statistics from ``norm_stats.json`` in a directory (or beside a file), else the paper's."""
    location = Path(location)
    folder = location if location.is_dir() else location.parent
    candidate = folder / NORM_STATS_FILE
    return NormStats.from_json(candidate) if candidate.exists() else NormStats.paper()


@dataclass
class Tile:
    """One tile as stored in the HDF5 schema (normalised, padded).

    Attributes:
        name: group name ``<SUBREGION>-<i>-<j>``.
        region: region code.
        subregion: subregion code.
        features: sensor -> ``H x W x C`` float32 normalised array.
        labels: ``H x W x 2`` float32 one-hot (channel 1 = glacier), or None if absent.
        valid: ``H x W`` bool, False in the padding.
        bounds: ``(xmin, xmax, ymin, ymax)`` geographic bounds (EPSG:4326) of the unpadded tile.
        attrs: every group attribute (paper's and ours).
    """

    name: str
    region: str
    subregion: str
    features: dict[str, np.ndarray]
    labels: np.ndarray | None
    valid: np.ndarray
    bounds: tuple[float, float, float, float]
    attrs: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Padded height and width."""
        return self.valid.shape

    @property
    def padding(self) -> tuple[int, int]:
        """Padding before the first row and the first column."""
        return int(self.attrs["padding_height"]), int(self.attrs["padding_width"])

    @property
    def original_shape(self) -> tuple[int, int]:
        """Height and width before padding."""
        return int(self.attrs["original_height"]), int(self.attrs["original_width"])


def padding_for(size: int, multiple: int) -> tuple[int, int]:
    """Padding (before, after) that centres ``size`` in the next multiple of ``multiple``."""
    if multiple < 1:
        raise ValueError(f"patch_size={multiple} must be a positive integer.")
    total = -size % multiple
    return total // 2, total - total // 2


def make_tile(
    name: str,
    region: str,
    features: dict[str, np.ndarray],
    labels: np.ndarray | None,
    bounds: tuple[float, float, float, float],
    patch_size: int,
    extra_attrs: dict[str, object] | None = None,
) -> Tile:
    """Pad normalised features and 0/1 labels (``H x W``) into a schema tile.

    Raises:
        ValueError: for a bad name, an unknown sensor, wrong channels or mismatched shapes.
    """
    match = _TILE_NAME.match(name)
    if match is None:
        raise ValueError(f"Tile name {name!r} must look like '<SUBREGION>-<i>-<j>', e.g. ALP-3-4.")
    height, width = next(iter(features.values())).shape[:2]
    for sensor, array in features.items():
        expected = SENSOR_CHANNELS.get(sensor)
        if expected is None or array.shape != (height, width, expected):
            raise ValueError(
                f"Tile {name}: {sensor} has shape {array.shape}; expected ({height}, {width}, "
                f"{expected}) for a known sensor {list(SENSORS)}."
            )
    (top, bottom), (left, right) = padding_for(height, patch_size), padding_for(width, patch_size)
    pads = ((top, bottom), (left, right), (0, 0))
    padded = {
        sensor: np.pad(features[sensor].astype(np.float32), pads)
        for sensor in SENSORS
        if sensor in features
    }
    one_hot = None
    if labels is not None:
        if labels.shape != (height, width):
            raise ValueError(f"Tile {name}: labels {labels.shape} != features {(height, width)}.")
        glacier = (labels > 0).astype(np.float32)
        one_hot = np.pad(np.stack([1.0 - glacier, glacier], axis=-1), pads)
    valid = np.zeros((height + top + bottom, width + left + right), dtype=bool)
    valid[top : top + height, left : left + width] = True
    attrs: dict[str, object] = {
        "region": region,
        "subregion": match["subregion"],
        "height": valid.shape[0],
        "width": valid.shape[1],
        "original_height": height,
        "original_width": width,
        "padding_height": top,
        "padding_width": left,
        "xmin": bounds[0],
        "xmax": bounds[1],
        "ymin": bounds[2],
        "ymax": bounds[3],
        **(extra_attrs or {}),
    }
    return Tile(name, region, match["subregion"], padded, one_hot, valid, bounds, attrs)


def write_tiles(path: str | Path, tiles: Iterable[Tile]) -> int:
    """Write tiles to one HDF5 file atomically (byte-identical for identical input).

    Returns:
        The number of tiles written.

    Raises:
        ValueError: if two tiles share a name.
    """
    path = Path(path)
    count = 0
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as handle:
        for tile in tiles:
            if tile.name in handle:
                raise ValueError(f"{path}: duplicate tile name {tile.name!r}.")
            group = handle.create_group(tile.name)
            for sensor, array in tile.features.items():
                group.create_dataset(sensor, data=array, dtype="f4", track_times=False)
            if tile.labels is not None:
                group.create_dataset(
                    LABEL_DATASET, data=tile.labels, dtype="f4", track_times=False
                )
            for key in sorted(tile.attrs):
                group.attrs[key] = tile.attrs[key]
            count += 1
    return count


def open_tile_file(path: str | Path) -> h5py.File:
    """Open an HDF5 file for reading with a clear error."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Tile file {path} does not exist.")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise TileFormatError(
            f"{path}: not a readable HDF5 file ({error}); copy it again or rebuild the benchmark."
        ) from None


def list_tiles(path: str | Path, regions: Iterable[str] | None = None) -> list[str]:
    """Names of the tiles in a file, sorted, optionally only those of some region codes."""
    wanted = None if regions is None else set(regions)
    with open_tile_file(path) as handle:
        return sorted(
            name
            for name, group in handle.items()
            if isinstance(group, h5py.Group)
            and (wanted is None or _text(group.attrs.get("region")) in wanted)
        )


def _text(value: object) -> str:
    """Decode an HDF5 string attribute."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _attrs(group: h5py.Group) -> dict[str, object]:
    """Group attributes as plain Python values."""
    attrs: dict[str, object] = {}
    for key, value in group.attrs.items():
        if isinstance(value, bytes | str):
            attrs[key] = _text(value)
        elif isinstance(value, np.ndarray):
            attrs[key] = value.tolist()
        else:
            attrs[key] = value.item() if hasattr(value, "item") else value
    return attrs


_FIX = "re-export it with make_tile and write_tiles, or remove the tile from the file"


def _checked_attrs(where: str, group: h5py.Group) -> dict[str, object]:
    """The group's attributes, checked: the required ones present, the padding consistent."""
    attrs = _attrs(group)
    missing = [key for key in REQUIRED_ATTRS if key not in attrs]
    if missing:
        raise TileFormatError(f"{where}: missing attribute(s) {missing}; {_FIX}.")
    top, left = int(attrs["padding_height"]), int(attrs["padding_width"])
    original = int(attrs["original_height"]), int(attrs["original_width"])
    height, width = int(attrs["height"]), int(attrs["width"])
    if top + original[0] > height or left + original[1] > width:
        raise TileFormatError(
            f"{where}: padding and original size exceed ({height}, {width}); {_FIX}."
        )
    return attrs


def _sensors(where: str, group: h5py.Group, sensors: tuple[str, ...] | None) -> tuple[str, ...]:
    """The sensors to read: ``sensors``, all present in the tile, or every sensor it has."""
    present = tuple(sensor for sensor in SENSORS if sensor in group)
    wanted = present if sensors is None else sensors
    absent = [sensor for sensor in wanted if sensor not in group]
    if absent:
        raise TileFormatError(
            f"{where}: sensor(s) {absent} requested but the tile has only {list(present)}; "
            "choose sensors every tile has or filter tiles by region."
        )
    return wanted


def _dataset(where: str, group: h5py.Group, name: str, shape: tuple[int, ...]) -> h5py.Dataset:
    """One dataset of a tile, checked from its metadata: numbers of the expected shape."""
    item = group[name]
    if not isinstance(item, h5py.Dataset):
        raise TileFormatError(f"{where}: {name!r} is not a dataset; {_FIX}.")
    if item.shape != shape:
        raise TileFormatError(
            f"{where}: {name!r} has shape {item.shape}, expected {shape} (H x W x C, "
            f"channels last, H and W from the height/width attributes); {_FIX}."
        )
    if item.dtype.kind not in "biuf":
        raise TileFormatError(f"{where}: {name!r} holds {item.dtype}, not numbers; {_FIX}.")
    return item


def _values(where: str, item: h5py.Dataset, name: str, rows: int | slice) -> np.ndarray:
    """Rows of a dataset as float32, refused if any is NaN or infinite."""
    try:
        array = np.asarray(item[rows], dtype=np.float32)
    except OSError as error:
        raise TileFormatError(f"{where}: {name!r} cannot be read ({error}).") from None
    if not np.isfinite(array).all():
        raise TileFormatError(f"{where}: {name!r} contains NaN or infinite values; {_FIX}.")
    return array


def _read_group(path: Path, name: str, group: h5py.Group, sensors: tuple[str, ...] | None) -> Tile:
    """Read and check one group."""
    where = f"{path}, tile {name}"
    attrs = _checked_attrs(where, group)
    height, width = int(attrs["height"]), int(attrs["width"])

    def read(dataset: str, channels: int) -> np.ndarray:
        item = _dataset(where, group, dataset, (height, width, channels))
        return _values(where, item, dataset, slice(None))

    features = {sensor: read(sensor, SENSOR_CHANNELS[sensor])
                for sensor in _sensors(where, group, sensors)}
    labels = read(LABEL_DATASET, NUM_CLASSES) if LABEL_DATASET in group else None
    top, left = int(attrs["padding_height"]), int(attrs["padding_width"])
    original = int(attrs["original_height"]), int(attrs["original_width"])
    valid = np.zeros((height, width), dtype=bool)
    valid[top : top + original[0], left : left + original[1]] = True
    bounds = tuple(float(attrs[key]) for key in ("xmin", "xmax", "ymin", "ymax"))
    return Tile(
        name, _text(attrs["region"]), _text(attrs["subregion"]), features, labels, valid,
        bounds, attrs,
    )


def read_tile(path: str | Path, name: str, sensors: Iterable[str] | None = None) -> Tile:
    """Read one tile; ``sensors=None`` reads every sensor it has.

    Raises:
        KeyError: if the tile does not exist.
        TileFormatError: if the tile breaks the schema or lacks a requested sensor.
    """
    path = Path(path)
    wanted = None if sensors is None else tuple(sensors)
    with open_tile_file(path) as handle:
        if name not in handle:
            raise KeyError(f"{path}: no tile {name!r}; list_tiles() gives the names.")
        return _read_group(path, name, handle[name], wanted)


def iter_tiles(
    path: str | Path,
    sensors: Iterable[str] | None = None,
    regions: Iterable[str] | None = None,
) -> Iterator[Tile]:
    """Yield the tiles of a file in name order, optionally only some sensors and regions."""
    path = Path(path)
    wanted = None if sensors is None else tuple(sensors)
    names = list_tiles(path, regions)
    with open_tile_file(path) as handle:
        for name in names:
            yield _read_group(path, name, handle[name], wanted)


def validate_file(
    path: str | Path, sensors: Iterable[str] | None = None, sample: int | None = None
) -> int:
    """Check the tiles of a file against the schema and return the tile count.

    Every tile's name, attributes, sensors and the shape and type of every dataset are checked
    (HDF5 metadata only). Values are checked for NaN and infinity in every pixel when
    ``sample`` is None, else in the middle row of the unpadded tile of ``sample`` tiles spread
    over the file, so a file of any size costs a bounded amount of pixel reading.

    Raises:
        TileFormatError: naming the file, the tile, the field and the fix.
    """
    path = Path(path)
    wanted = None if sensors is None else tuple(sensors)
    with open_tile_file(path) as handle:
        try:
            names = list(handle)
            if not names:
                raise TileFormatError(f"{path}: the file holds no tiles.")
            values, count = ("all", len(names)) if sample is None else ("row", sample)
            spread = np.linspace(0, len(names) - 1, min(count, len(names)))
            sampled = {names[index] for index in spread.round().astype(int)}
            for name in names:
                _check_tile(path, name, handle[name], wanted, values if name in sampled else None)
        except OSError as error:
            raise TileFormatError(
                f"{path} cannot be read ({error}); copy it again or rebuild the benchmark."
            ) from None
    return len(names)


def _check_tile(path: Path, name: str, group: h5py.Group | h5py.Dataset,
                sensors: tuple[str, ...] | None, values: str | None) -> None:
    """Check one tile; ``values``: ``all`` pixels, the middle ``row`` or None (metadata only)."""
    if not isinstance(group, h5py.Group):
        raise TileFormatError(f"{path}: top-level {name!r} is not a tile group; remove it.")
    if not _TILE_NAME.match(name):
        raise TileFormatError(
            f"{path}: group {name!r} is not named <SUBREGION>-<i>-<j>; rename it, e.g. ALP-3-4."
        )
    where = f"{path}, tile {name}"
    attrs = _checked_attrs(where, group)
    shape = int(attrs["height"]), int(attrs["width"])
    channels = {sensor: SENSOR_CHANNELS[sensor] for sensor in _sensors(where, group, sensors)}
    if not channels:
        raise TileFormatError(f"{where}: no sensor datasets {list(SENSORS)}; {_FIX}.")
    if LABEL_DATASET not in group:
        raise TileFormatError(f"{where}: missing {LABEL_DATASET!r} labels; {_FIX}.")
    row = int(attrs["padding_height"]) + int(attrs["original_height"]) // 2
    for dataset, count in {**channels, LABEL_DATASET: NUM_CLASSES}.items():
        item = _dataset(where, group, dataset, (*shape, count))
        if values is not None:
            _values(where, item, dataset, slice(None) if values == "all" else row)
