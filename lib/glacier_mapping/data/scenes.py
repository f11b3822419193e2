"""Scenes from GeoTIFF/COG files: aligned onto the optical grid, normalised, read by window.

Physical units expected in the files (those of the paper's HDF5 schema before normalisation):
optical TOA reflectance (``value * optical_scale + optical_offset`` converts scaled integers,
e.g. scale 1e-4 and offset -0.1 for Sentinel-2 L1C of processing baseline 04.00 or later; see
:mod:`glacier_mapping.products`), elevation in metres, slope in degrees (derived from the DEM
when no slope file is given), SAR backscatter as linear sigma0 (converted to
``log10(sigma0 + 1e-6)``), one band per orbit (ascending, descending), coherence in [0, 1]
(ascending, descending) and brightness temperature in kelvin. Every input is brought onto the
grid of the first optical file: identical grids are read directly, others through a bilinear
:class:`rasterio.vrt.WarpedVRT` (:class:`SceneSource`, windowed) or rioxarray
``reproject_match`` (:func:`load_scene`, in memory). A pixel is valid where every channel of
every requested sensor is finite and not nodata; invalid pixels are filled with 0 for the model.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol
from urllib.parse import urlparse

import numpy as np
import rasterio
import rioxarray
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from glacier_mapping.data.schema import SENSOR_CHANNELS, SENSORS, check_sensors
from glacier_mapping.data.tiles import NormStats

logger = logging.getLogger(__name__)

#: Optical channels of the model, in order.
OPTICAL_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")
#: Input locations GDAL reads remotely (see :func:`raster_location`).
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "/vsi")
#: Band-map entry for a file band that is not used.
SKIP_BAND = "-"
SAR_EPSILON = 1e-6
EARTH_RADIUS_M = 6_371_008.8
#: File roles of the non-optical inputs: (sensor, channels taken from the file).
_ROLE_SENSOR: dict[str, str] = {
    "co_pol": "co_pol_sar", "cross_pol": "cross_pol_sar", "coherence": "in_sar",
    "thermal": "thermal",
}


class SceneError(ValueError):
    """A scene input is unusable; the message names the file or parameter and the fix."""


@dataclass(frozen=True)
class Grid:
    """The pixel grid every input is aligned to (that of the first optical file)."""

    crs: CRS
    transform: Affine
    height: int
    width: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the grid's CRS."""
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)

    def describe(self) -> str:
        """Short text: CRS and pixel size."""
        return f"{self.crs.to_string()} {abs(self.transform.a):g} x {abs(self.transform.e):g}"

    def pixel_size_m(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel width and height in metres for the given rows (per row if geographic)."""
        width, height = abs(self.transform.a), abs(self.transform.e)
        if self.crs.is_geographic:
            lat = self.transform.d * 0.5 + self.transform.e * (rows + 0.5) + self.transform.f
            metres_per_degree = math.pi / 180.0 * EARTH_RADIUS_M
            dx = width * metres_per_degree * np.cos(np.radians(np.asarray(lat)))
            return dx, np.full_like(dx, height * metres_per_degree)
        factor = self.crs.linear_units_factor[1]
        ones = np.ones(len(rows))
        return ones * width * factor, ones * height * factor


class QualityMask(Protocol):
    """Which values of a quality band make a pixel unusable (see ``products.MaskConvention``)."""

    band: str
    note: str

    def unusable(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask of the unusable pixels of quality-band ``values`` (NaN: no data)."""


@dataclass(frozen=True)
class _Channel:
    """One channel of a sensor: a band of a file."""

    path: Path | str  # a URL for remote files
    band: int  # 1-based


def raster_location(value: str | os.PathLike[str]) -> Path | str:
    """A local file as a Path; a URL or GDAL virtual path (:data:`REMOTE_PREFIXES`) as text.

    Remote files are read by GDAL window by window (HTTP range requests; ``s3://`` and
    ``gs://`` with the credentials GDAL finds in the environment), never downloaded whole.
    """
    text = os.fspath(value)
    return text if text.startswith(REMOTE_PREFIXES) else Path(text)


def _name(location: Path | str) -> str:
    """The file name of a path or URL."""
    return Path(urlparse(location).path if isinstance(location, str) else location).name


def _open(path: Path | str) -> rasterio.io.DatasetReader:
    """Open a raster with an error that names the file."""
    if isinstance(path, str):
        try:
            # no directory listing of the URL's folder in search of side-car files
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                return rasterio.open(path)
        except RasterioError as error:
            raise SceneError(
                f"{path}: cannot be read as a remote raster ({error}); check the URL, the "
                "network and, for s3:// or gs://, the credentials GDAL uses."
            ) from None
    if not path.is_file():
        raise SceneError(f"Input file {path} does not exist; check the path.")
    try:
        return rasterio.open(path)
    except RasterioError as error:
        raise SceneError(
            f"{path}: cannot be read as a raster ({error}); check it is a complete GeoTIFF/COG "
            f"(e.g. with gdalinfo {path})."
        ) from None


def _parse_bands(bands: Sequence[str] | str, counts: Sequence[int], paths: Sequence[Path]
                 ) -> list[tuple[int, int]]:
    """Map each optical channel to (file index, 1-based band) from the user's band map."""
    names = [name.strip().lower() for name in (bands.split(",") if isinstance(bands, str)
                                               else bands)]
    total = sum(counts)
    if len(names) != total:
        detail = " + ".join(f"{count} ({_name(path)})" for count, path in zip(counts, paths,
                                                                              strict=True))
        raise SceneError(
            f"The band map (--bands) lists {len(names)} names {names} but the optical files "
            f"have {detail} = {total} bands; give one name per file band, in file order, "
            f"using {SKIP_BAND!r} for bands to ignore."
        )
    unknown = sorted({n for n in names if n not in OPTICAL_BANDS and n != SKIP_BAND})
    if unknown:
        raise SceneError(
            f"Unknown band name(s) {unknown} in the band map (--bands); use "
            f"{list(OPTICAL_BANDS)} or {SKIP_BAND!r}."
        )
    used = [n for n in names if n != SKIP_BAND]
    repeated = sorted({n for n in used if used.count(n) > 1})
    if repeated:
        raise SceneError(f"Band(s) {repeated} appear more than once in the band map (--bands).")
    missing = [n for n in OPTICAL_BANDS if n not in used]
    if missing:
        raise SceneError(
            f"The optical input lacks band(s) {missing}: the model needs all of "
            f"{list(OPTICAL_BANDS)}. Add a file with those bands to --optical and name them in "
            "--bands."
        )
    places = [(index, band) for index, count in enumerate(counts)
              for band in range(1, count + 1)]
    return [places[names.index(name)] for name in OPTICAL_BANDS]


def _check_date(date: str | None) -> None:
    """Refuse a ``--date`` that is not ``YYYY-MM-DD``."""
    if date is None:
        return
    try:
        datetime.date.fromisoformat(str(date))
    except ValueError:
        raise SceneError(
            f"--date {date!r} is not a date; pass YYYY-MM-DD, e.g. 2020-08-01."
        ) from None


def _acquisition_date(dataset: rasterio.io.DatasetReader) -> str | None:
    """Acquisition date from common metadata tags, if any."""
    tags = {key.upper(): value for key, value in dataset.tags().items()}
    for key in ("ACQUISITION_DATE", "DATE_ACQUIRED", "ACQUISITIONDATE", "SENSING_TIME"):
        if key in tags:
            return str(tags[key])[:10]
    return None


def normalise_features(
    physical: Mapping[str, np.ndarray], stats: NormStats
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Normalise physical ``(H, W, C)`` arrays (clipped to [0, 1] if ``stats.clip``); mask invalid.

    Returns:
        Normalised float32 features (0 wherever the pixel is invalid) and the boolean
        ``valid`` mask (every channel of every sensor finite).
    """
    arrays = list(physical.values())
    valid = np.ones(arrays[0].shape[:2], dtype=bool)
    for array in arrays:
        valid &= np.isfinite(array).all(axis=-1)
    features = {}
    for sensor, array in physical.items():
        scaled = stats.normalise(sensor, array)
        if stats.clip:
            scaled = np.clip(scaled, 0.0, 1.0)
        scaled[~valid] = 0.0
        features[sensor] = scaled
    return features, valid


def check_stats(stats: NormStats, sensors: Sequence[str]) -> None:
    """Check that ``stats`` has finite, increasing ranges for every sensor.

    Raises:
        SceneError: naming the sensor, the channel and the statistics' source.
    """
    for sensor in sensors:
        if sensor not in stats.minimum or sensor not in stats.maximum:
            raise SceneError(
                f"The normalisation statistics ({stats.source}) lack sensor {sensor!r}; add it "
                "to the statistics JSON or use the paper's ranges."
            )
        low = np.asarray(stats.minimum[sensor], dtype=np.float64)
        high = np.asarray(stats.maximum[sensor], dtype=np.float64)
        if low.size != SENSOR_CHANNELS[sensor] or high.size != SENSOR_CHANNELS[sensor]:
            raise SceneError(
                f"The normalisation statistics ({stats.source}) give {low.size} minima and "
                f"{high.size} maxima for {sensor!r}; it has {SENSOR_CHANNELS[sensor]} channels."
            )
        bad = ~(np.isfinite(low) & np.isfinite(high) & (high > low))
        if bad.any():
            channel = int(np.argmax(bad))
            raise SceneError(
                f"The normalisation statistics ({stats.source}) for {sensor!r} channel "
                f"{channel} are min={low[channel]}, max={high[channel]}; they must be finite "
                "with min < max. Fix the statistics JSON."
            )


def slope_from_padded(elevation: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Slope (degrees) by central differences of an elevation array padded by one pixel.

    Args:
        elevation: ``(H + 2, W + 2)`` elevation in metres.
        dx: pixel width in metres for each of the ``H`` output rows.
        dy: pixel height in metres for each of the ``H`` output rows.

    Returns:
        float32 ``(H, W)`` slope; NaN where a neighbour is NaN.
    """
    z = elevation.astype(np.float64)
    dz_dx = (z[1:-1, 2:] - z[1:-1, :-2]) / (2.0 * dx[:, None])
    dz_dy = (z[2:, 1:-1] - z[:-2, 1:-1]) / (2.0 * dy[:, None])
    return np.degrees(np.arctan(np.hypot(dz_dx, dz_dy))).astype(np.float32)


def _pad_edges(array: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """Pad by linear extrapolation, so central differences at an edge are one-sided ones."""
    return np.pad(array, ((top, bottom), (left, right)), mode="reflect", reflect_type="odd")


class SceneSource:
    """A scene made of GeoTIFF/COG files, read window by window on the optical grid.

    Memory does not grow with the scene: :meth:`read_window` reads only the requested window
    (plus a one-pixel halo of the DEM when slope is derived) from each file. Use it as a
    context manager or call :meth:`close` to release the open files.

    Args:
        optical: one or more optical files; the first defines the grid.
        bands: one name per band of the optical files, in file order (a list or a
            comma-separated string), from :data:`OPTICAL_BANDS`, :data:`SKIP_BAND` to ignore one.
        dem: elevation file (metres, first band).
        slope: slope file (degrees, first band); derived from the DEM when omitted.
        co_pol: co-polarised linear sigma0, two bands (ascending, descending).
        cross_pol: cross-polarised linear sigma0, two bands (ascending, descending).
        coherence: InSAR coherence, two bands (ascending, descending).
        thermal: brightness temperature (K), one band.
        optical_scale: factor turning optical file values into reflectance.
        name: scene name for outputs; default the first optical file's stem.
        date: acquisition date (``YYYY-MM-DD``); default from the optical file's tags.
        optical_offset: added after the scale: reflectance = value * scale + offset.
        optical_nodata: optical file value marking missing data besides the files' own
            nodata (e.g. 0 for Sentinel-2 and Landsat products); compared before scaling.
        quality: a product's quality band (Sentinel-2 SCL, Landsat QA_PIXEL), read on the
            optical grid with nearest-neighbour resampling.
        quality_mask: which of its values or bits make an optical pixel unusable (clouds,
            shadows, no data): those pixels become no data. Needed with ``quality``.

    Raises:
        SceneError: for a missing, unreadable or non-georeferenced file, a wrong band count,
            missing optical bands or inputs that do not overlap the optical grid.
    """

    def __init__(
        self,
        optical: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        bands: Sequence[str] | str,
        dem: str | os.PathLike[str] | None = None,
        slope: str | os.PathLike[str] | None = None,
        co_pol: str | os.PathLike[str] | None = None,
        cross_pol: str | os.PathLike[str] | None = None,
        coherence: str | os.PathLike[str] | None = None,
        thermal: str | os.PathLike[str] | None = None,
        optical_scale: float = 1.0,
        name: str | None = None,
        date: str | None = None,
        optical_offset: float = 0.0,
        optical_nodata: float | None = None,
        quality: str | os.PathLike[str] | None = None,
        quality_mask: QualityMask | None = None,
    ) -> None:
        paths = [raster_location(optical)] if isinstance(optical, str | os.PathLike) else [
            raster_location(p) for p in optical]
        if not paths:
            raise SceneError("No optical file given (--optical); pass at least one GeoTIFF.")
        if slope is not None and dem is None:
            raise SceneError("A slope file (--slope) was given without a DEM (--dem); add --dem.")
        self._init_state(optical_scale, optical_offset, optical_nodata, date)
        first = self._check_file(paths[0], None)
        self.grid = Grid(first.crs, first.transform, first.height, first.width)
        #: The first optical file: it defines the grid and the optical scene.
        self.grid_path = paths[0]
        self.name = name or Path(_name(paths[0])).stem
        self.date = date or _acquisition_date(first)
        datasets = [first] + [self._check_file(p, "optical") for p in paths[1:]]
        for path, dataset in zip(paths, datasets, strict=True):
            self._attach(path, dataset)
        places = _parse_bands(bands, [d.count for d in datasets], paths)
        self.channels: dict[str, list[_Channel | None]] = {
            "optical": [_Channel(paths[index], band) for index, band in places]
        }
        if dem is not None:
            self.channels["dem"] = [self._single(dem, "dem"), None if slope is None
                                    else self._single(slope, "slope")]
        for role, path in (("co_pol", co_pol), ("cross_pol", cross_pol),
                           ("coherence", coherence), ("thermal", thermal)):
            if path is not None:
                sensor = _ROLE_SENSOR[role]
                path = raster_location(path)
                dataset = self._check_file(path, role)
                if dataset.count != SENSOR_CHANNELS[sensor]:
                    raise SceneError(
                        f"{path}: the {role} file has {dataset.count} band(s); the model's "
                        f"{sensor!r} input needs {SENSOR_CHANNELS[sensor]} "
                        f"({'ascending, descending' if SENSOR_CHANNELS[sensor] == 2 else 'K'})."
                    )
                self._attach(path, dataset)
                self.channels[sensor] = [_Channel(path, band)
                                         for band in range(1, dataset.count + 1)]
        if (quality is None) != (quality_mask is None):
            raise SceneError("A quality band (--quality) needs the product's mask convention "
                             "(--product) and the other way round; give both or neither.")
        if quality is not None:
            path = raster_location(quality)
            self._attach(path, self._check_file(path, "quality"), Resampling.nearest)
            self.quality = _Channel(path, 1)
            self.quality_mask = quality_mask

    def _init_state(self, optical_scale: float, optical_offset: float,
                    optical_nodata: float | None, date: str | None) -> None:
        """Check the optical conversion and date; start with no open inputs."""
        if not (math.isfinite(optical_scale) and optical_scale > 0):
            raise SceneError(
                f"--optical-scale must be a positive number, got {optical_scale}; pass the factor "
                "turning file values into reflectance (e.g. 0.0001 for Sentinel-2 L1C)."
            )
        if not math.isfinite(optical_offset):
            raise SceneError(
                f"--optical-offset must be a finite number, got {optical_offset}; pass the "
                "reflectance added after the scale (e.g. -0.1 for Sentinel-2 L2A)."
            )
        _check_date(date)
        self.optical_scale = float(optical_scale)
        self.optical_offset = float(optical_offset)
        self.optical_nodata = None if optical_nodata is None else float(optical_nodata)
        self._readers: dict[Path | str, rasterio.io.DatasetReader | WarpedVRT] = {}
        self._sources: list[rasterio.io.DatasetReader] = []
        self.alignment: dict[str, str] = {}
        self.channels: dict[str, list[_Channel | None]] = {}
        #: The quality band and the mask convention applied to the optical input.
        self.quality: _Channel | None = None
        self.quality_mask: QualityMask | None = None

    @property
    def sensors(self) -> tuple[str, ...]:
        """Sensors this scene provides, in canonical order."""
        return tuple(sensor for sensor in SENSORS if sensor in self.channels)

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width of the optical grid."""
        return self.grid.height, self.grid.width

    def inputs(self) -> dict[str, list[str]]:
        """Files per role, for summaries."""
        files: dict[str, list[str]] = {}
        for sensor, channels in self.channels.items():
            for channel in channels:
                if channel is not None and str(channel.path) not in files.get(sensor, []):
                    files.setdefault(sensor, []).append(str(channel.path))
        return files

    def _check_file(self, path: Path | str, role: str | None) -> rasterio.io.DatasetReader:
        """Open a file, check CRS and overlap, and keep it open."""
        dataset = _open(path)
        self._sources.append(dataset)
        if dataset.crs is None:
            raise SceneError(
                f"{path}: the raster has no CRS; assign one (e.g. gdal_edit.py -a_srs EPSG:32632 "
                f"{_name(path)}) before deploying."
            )
        if role is not None:
            left, bottom, right, top = transform_bounds(dataset.crs, self.grid.crs,
                                                        *dataset.bounds)
            g_left, g_bottom, g_right, g_top = self.grid.bounds
            if left >= g_right or right <= g_left or bottom >= g_top or top <= g_bottom:
                raise SceneError(
                    f"{path}: the {role} raster (bounds {left:.0f}, {bottom:.0f}, {right:.0f}, "
                    f"{top:.0f} in {self.grid.crs.to_string()}) does not overlap the optical "
                    f"grid ({g_left:.0f}, {g_bottom:.0f}, {g_right:.0f}, {g_top:.0f}); pass "
                    "files of the same area."
                )
        return dataset

    def _single(self, path: str | os.PathLike[str], role: str) -> _Channel:
        """Check a one-band input (DEM, slope) and attach it."""
        path = raster_location(path)
        self._attach(path, self._check_file(path, role))
        return _Channel(path, 1)

    def _attach(self, path: Path | str, dataset: rasterio.io.DatasetReader,
                resampling: Resampling = Resampling.bilinear) -> None:
        """Register a reader on the optical grid for ``path`` (direct or warped)."""
        if path in self._readers:
            return
        same = (dataset.crs == self.grid.crs and dataset.transform.almost_equals(
            self.grid.transform) and dataset.shape == self.shape)
        if same:
            self._readers[path] = dataset
            self.alignment[str(path)] = "on the optical grid"
            return
        self._readers[path] = WarpedVRT(
            dataset, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
            height=self.grid.height, resampling=resampling, nodata=np.nan,
            dtype="float32",
        )
        how = (f"reprojected from {dataset.crs.to_string()} {abs(dataset.transform.a):g} x "
               f"{abs(dataset.transform.e):g} ({dataset.width} x {dataset.height} px) to "
               f"{self.grid.describe()} ({self.grid.width} x {self.grid.height} px), "
               f"{resampling.name}")
        self.alignment[str(path)] = how
        logger.info("%s: %s (WarpedVRT).", _name(path), how)

    def _read(self, channels: Sequence[_Channel], window: Window) -> np.ndarray:
        """Read channels as float32 ``(C, h, w)``, NaN where masked."""
        out = np.empty((len(channels), int(window.height), int(window.width)), np.float32)
        for index, channel in enumerate(channels):
            reader = self._readers[channel.path]
            try:
                data = reader.read(channel.band, window=window, masked=True, out_dtype="float32")
            except RasterioError as error:
                raise SceneError(
                    f"{channel.path}: reading band {channel.band} failed ({error}); the file "
                    "may be truncated or corrupt."
                ) from None
            out[index] = data.filled(np.nan)
        return out

    def physical_window(
        self, row: int, col: int, height: int, width: int, sensors: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Read a window in physical units (see the module docstring), NaN where invalid.

        Returns:
            Sensor -> float32 ``(height, width, C)``.
        """
        if not (0 <= row and 0 <= col and height >= 1 and width >= 1
                and row + height <= self.grid.height and col + width <= self.grid.width):
            raise SceneError(
                f"Window (row={row}, col={col}, height={height}, width={width}) leaves the "
                f"{self.grid.height} x {self.grid.width} scene."
            )
        window = Window(col, row, width, height)
        physical = {}
        for sensor in self.requested(sensors):
            channels = self.channels[sensor]
            if sensor == "dem":
                elevation = self._read([channels[0]], window)[0]
                slope = (self._derived_slope(row, col, height, width) if channels[1] is None
                         else self._read([channels[1]], window)[0])
                array = np.stack([elevation, slope])
            else:
                array = self._read(channels, window)
            physical[sensor] = np.moveaxis(self.to_physical(sensor, array), 0, -1)
            if sensor == "optical" and self.quality is not None:
                unusable = self.quality_mask.unusable(self._read([self.quality], window)[0])
                physical[sensor][unusable] = np.nan
        return physical

    def read_window(
        self, row: int, col: int, height: int, width: int,
        sensors: Sequence[str] | None = None, stats: NormStats | None = None,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Read a window ready for the model.

        Args:
            row: top row on the optical grid.
            col: left column on the optical grid.
            height: window height in pixels.
            width: window width in pixels.
            sensors: sensors to read (default: all this scene has).
            stats: normalisation statistics; the paper's ranges when None.

        Returns:
            Normalised features (sensor -> float32 ``(height, width, C)`` in [0, 1], 0 where
            invalid) and the boolean ``valid`` mask ``(height, width)``.
        """
        stats = NormStats.paper() if stats is None else stats
        check_stats(stats, self.requested(sensors))
        return normalise_features(self.physical_window(row, col, height, width, sensors), stats)

    def requested(self, sensors: Sequence[str] | None) -> tuple[str, ...]:
        """Check requested sensors against the scene's (all of them for None).

        Raises:
            SceneError: naming the sensors the scene lacks.
        """
        if sensors is None:
            return self.sensors
        wanted = check_sensors(list(sensors))
        missing = [sensor for sensor in wanted if sensor not in self.channels]
        if missing:
            raise SceneError(f"The scene has no {missing} input; it provides {list(self.sensors)}.")
        return wanted

    def to_physical(self, sensor: str, array: np.ndarray) -> np.ndarray:
        """Convert file values ``(C, H, W)`` of a sensor to the schema's physical units."""
        if sensor == "optical":
            if self.optical_nodata is not None:
                array = np.where(array == np.float32(self.optical_nodata), np.float32(np.nan),
                                 array)
            scaled = array * np.float32(self.optical_scale)
            # no addition for offset 0: x + 0.0 would turn -0.0 into +0.0
            return scaled + np.float32(self.optical_offset) if self.optical_offset else scaled
        if sensor in ("co_pol_sar", "cross_pol_sar"):
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.log10(array + np.float32(SAR_EPSILON))
        return array

    def _derived_slope(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Slope of the window from the DEM read with a one-pixel halo."""
        top, left = max(row - 1, 0), max(col - 1, 0)
        bottom = min(row + height + 1, self.grid.height)
        right = min(col + width + 1, self.grid.width)
        halo = self._read([self.channels["dem"][0]], Window(left, top, right - left,
                                                            bottom - top))[0]
        padded = _pad_edges(halo, 1 - (row - top), 1 - (bottom - row - height),
                            1 - (col - left), 1 - (right - col - width))
        dx, dy = self.grid.pixel_size_m(np.arange(row, row + height, dtype=np.float64))
        return slope_from_padded(padded, dx, dy)

    def center_lonlat(self, row: int, col: int, height: int, width: int) -> tuple[float, float]:
        """Longitude and latitude (degrees, EPSG:4326) of a window's centre."""
        x, y = self.grid.transform @ (col + width / 2.0, row + height / 2.0)
        lon, lat = warp_transform(self.grid.crs, "EPSG:4326", [x], [y])
        return float(lon[0]), float(lat[0])

    def coverage(self, sensors: Sequence[str] | None = None,
                 strip_rows: int = 256) -> dict[str, float]:
        """Fraction of the optical scene where each input file has data.

        The optical scene is the pixels where the first optical file (:attr:`grid_path`) has
        data; a file covers a pixel where its bands, aligned to the grid, are finite and not
        nodata. The files are read once, strip by strip.

        Returns:
            Each file of the requested sensors but the first optical one (its path as text) ->
            covered fraction in [0, 1].
        """
        files: dict[Path, list[tuple[str, _Channel]]] = {}
        for sensor in self.requested(sensors):
            for channel in self.channels[sensor]:
                if channel is not None:
                    files.setdefault(channel.path, []).append((sensor, channel))
        files.pop(self.grid_path, None)
        scene = [("optical", channel) for channel in self.channels["optical"]
                 if channel.path == self.grid_path] or [("optical", _Channel(self.grid_path, 1))]
        covered = dict.fromkeys(files, 0)
        total = 0
        for row in range(0, self.grid.height, strip_rows):
            window = Window(0, row, self.grid.width, min(strip_rows, self.grid.height - row))
            inside = self._has_data(scene, window)
            total += int(inside.sum())
            for path, channels in files.items():
                covered[path] += int((inside & self._has_data(channels, window)).sum())
        return {str(path): count / total if total else 0.0 for path, count in covered.items()}

    def _has_data(self, channels: Sequence[tuple[str, _Channel]], window: Window) -> np.ndarray:
        """Where every (sensor, channel) is finite in physical units, ``(h, w)``."""
        valid = np.ones((int(window.height), int(window.width)), dtype=bool)
        for sensor, channel in channels:
            valid &= np.isfinite(self.to_physical(sensor, self._read([channel], window)))[0]
        return valid

    def check_not_empty(self, sensors: Sequence[str] | None = None, strip_rows: int = 256) -> None:
        """Scan the scene strip by strip until a valid pixel is found.

        Raises:
            SceneError: if every pixel is nodata or NaN in at least one input.
        """
        for row in range(0, self.grid.height, strip_rows):
            height = min(strip_rows, self.grid.height - row)
            physical = self.physical_window(row, 0, height, self.grid.width, sensors)
            if np.logical_and.reduce([np.isfinite(a).all(axis=-1)
                                      for a in physical.values()]).any():
                return
        raise SceneError(
            f"Scene {self.name!r}: every pixel is nodata or NaN in at least one of "
            f"{list(self.requested(sensors))} ({self.inputs()}); check the files' nodata "
            "values and that they cover the same area."
        )

    def close(self) -> None:
        """Close every open file."""
        for reader in self._readers.values():
            if isinstance(reader, WarpedVRT):
                reader.close()
        for dataset in self._sources:
            dataset.close()
        self._readers.clear()
        self._sources.clear()

    def __enter__(self) -> SceneSource:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class Scene:
    """A whole scene in memory on the optical grid.

    Attributes:
        features: sensor -> normalised ``(y, x, band)`` DataArray with the grid's CRS.
        valid: boolean ``(y, x)`` DataArray.
        grid: the optical grid.
    """

    features: dict[str, xr.DataArray]
    valid: xr.DataArray
    grid: Grid

    def arrays(self) -> dict[str, np.ndarray]:
        """Features as plain ``(H, W, C)`` float32 arrays."""
        return {sensor: array.values for sensor, array in self.features.items()}


def _aligned_dataarray(path: Path, reference: xr.DataArray, bands: Sequence[int]) -> np.ndarray:
    """Read bands of ``path`` onto ``reference``'s grid with rioxarray; ``(C, H, W)`` float32."""
    try:
        opened = rioxarray.open_rasterio(path, masked=True)
    except RasterioError as error:
        raise SceneError(f"{path}: cannot be read as a raster ({error}).") from None
    with opened:
        data = opened.sel(band=list(bands)).astype("float32")
        same = (data.rio.crs == reference.rio.crs and data.shape[1:] == reference.shape[1:]
                and data.rio.transform().almost_equals(reference.rio.transform()))
        if not same:
            data = data.rio.reproject_match(reference, resampling=Resampling.bilinear,
                                            nodata=np.nan)
            logger.info("%s: reprojected/resampled onto the optical grid with rioxarray "
                        "reproject_match (bilinear).", path.name)
        return np.asarray(data.values, dtype=np.float32)


def load_scene(
    source: SceneSource, sensors: Sequence[str] | None = None, stats: NormStats | None = None
) -> Scene:
    """Load a small scene whole, aligning inputs with rioxarray ``reproject_match``.

    Values equal those of ``source.read_window`` over the whole grid (same conversions and
    normalisation; bilinear resampling via ``reproject`` instead of a WarpedVRT).

    Raises:
        SceneError: if the scene has no valid pixel or an input cannot be read.
    """
    stats = NormStats.paper() if stats is None else stats
    wanted = source.requested(sensors)
    check_stats(stats, wanted)
    with rioxarray.open_rasterio(source.channels["optical"][0].path) as opened:
        reference = opened.isel(band=[0]).load()
    physical = {}
    for sensor in wanted:
        channels = source.channels[sensor]
        if sensor == "dem":
            elevation = _aligned_dataarray(channels[0].path, reference, [1])[0]
            if channels[1] is None:
                dx, dy = source.grid.pixel_size_m(np.arange(source.grid.height,
                                                            dtype=np.float64))
                slope = slope_from_padded(_pad_edges(elevation, 1, 1, 1, 1), dx, dy)
            else:
                slope = _aligned_dataarray(channels[1].path, reference, [1])[0]
            array = np.stack([elevation, slope])
        else:
            array = np.concatenate([_aligned_dataarray(c.path, reference, [c.band])
                                    for c in channels])
        physical[sensor] = np.moveaxis(source.to_physical(sensor, array), 0, -1)
    features, valid = normalise_features(physical, stats)
    if not valid.any():
        raise SceneError(
            f"Scene {source.name!r}: every pixel is nodata or NaN in at least one of "
            f"{list(wanted)}; check the files' nodata values and that they cover the same area."
        )
    coords = {"y": reference["y"].values, "x": reference["x"].values}
    crs, transform = source.grid.crs, source.grid.transform
    data = {
        sensor: xr.DataArray(array, dims=("y", "x", "band"), coords=coords, name=sensor)
        .rio.write_crs(crs).rio.write_transform(transform)
        for sensor, array in features.items()
    }
    mask = xr.DataArray(valid, dims=("y", "x"), coords=coords, name="valid")
    return Scene(data, mask.rio.write_crs(crs).rio.write_transform(transform), source.grid)
