"""An xarray Dataset as a scene: the inputs of :func:`glacier_mapping.mapping.map_glaciers`.

:class:`DatasetSource` reads a georeferenced :class:`xarray.Dataset` (numpy- or dask-backed,
with rioxarray's CRS and transform) window by window, exactly as
:class:`glacier_mapping.data.scenes.SceneSource` reads GeoTIFFs, so the deployment's checks and
window loop run unchanged on it. A dask-backed Dataset (``rioxarray.open_rasterio(...,
chunks=...)``, ``odc.stac.load(...)``, ``stackstac.stack(...)``) is computed one window at a
time: only the chunks a window touches are read.

The variables are found by name:

- optical bands, one variable each, by the names of :data:`OPTICAL_BANDS` or their STAC common
  names (``nir08``, ``swir16``, ``swir22``: what ``odc-stac`` names them), or one variable
  ``optical`` with a ``band`` dimension of six bands in :data:`OPTICAL_BANDS` order; ``bands``
  maps other names;
- ``dem`` (or ``elevation``), metres, and optionally ``slope``, degrees (else derived);
- ``co_pol``, ``cross_pol``, ``coherence`` (two bands each: ascending, descending) and
  ``thermal`` (K), as for ``glacier-mapping deploy``;
- with a product's mask convention, its quality band (``scl``, ``qa_pixel``; any case).

The variables of a Dataset share its ``y``/``x`` coordinates, which must be evenly spaced; a
DEM on another grid is aligned by the caller (``dem.rio.reproject_match(optical)``) before it
is merged in.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from rasterio.windows import Window

from glacier_mapping.data.scenes import (
    _ROLE_SENSOR,
    OPTICAL_BANDS,
    Grid,
    QualityMask,
    SceneError,
    SceneSource,
    _Channel,
)
from glacier_mapping.data.schema import SENSOR_CHANNELS

#: STAC ``eo:bands`` common names of the optical bands, where they differ from ours.
COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "blue": ("blue",), "green": ("green",), "red": ("red",), "nir": ("nir", "nir08"),
    "swir1": ("swir1", "swir16"), "swir2": ("swir2", "swir22"),
}
#: Names of the elevation variable.
DEM_NAMES = ("dem", "elevation")


class _ArrayReader:
    """Reads windows of one variable like a rasterio dataset (1-based bands, masked)."""

    def __init__(self, array: xr.DataArray) -> None:
        self.array = array
        nodata = array.rio.nodata
        self.nodata = None if nodata is None or np.isnan(nodata) else float(nodata)

    def read(self, band: int, window: Window, masked: bool = True,
             out_dtype: str = "float32") -> np.ma.MaskedArray:
        """Band ``band`` of ``window``, masked where nodata or NaN."""
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        array = self.array
        if "band" in array.dims:
            array = array.isel(band=band - 1)
        data = np.asarray(array.isel(y=rows, x=cols).values, dtype=out_dtype)
        invalid = ~np.isfinite(data)
        if self.nodata is not None:
            invalid |= data == np.asarray(self.nodata, dtype=out_dtype)
        return np.ma.MaskedArray(data, mask=invalid) if masked else data


def _squeezed(name: str, array: xr.DataArray) -> xr.DataArray:
    """The variable with a length-one ``time`` dimension dropped, its dims checked."""
    if "time" in array.dims:
        if array.sizes["time"] != 1:
            raise SceneError(f"Dataset variable {name!r} has {array.sizes['time']} time steps; "
                             "map one acquisition at a time: dataset.isel(time=i).")
        array = array.isel(time=0)
    extra = [dim for dim in array.dims if dim not in ("y", "x", "band")]
    if {"y", "x"} - set(array.dims) or extra:
        raise SceneError(f"Dataset variable {name!r} has dims {array.dims}; expected ('y', "
                         "'x') or ('band', 'y', 'x'): rename the spatial dims to y and x.")
    return array.transpose(*[dim for dim in ("band", "y", "x") if dim in array.dims])


def _date(dataset: xr.Dataset) -> str | None:
    """Acquisition date from a single ``time`` coordinate or a ``date`` attribute."""
    if "time" in dataset.coords and dataset["time"].size == 1:
        value = np.datetime_as_string(np.asarray(dataset["time"].values).reshape(-1)[0],
                                      unit="D")
        return str(value)
    date = dataset.attrs.get("date")
    if date is None:
        return None
    try:
        return datetime.date.fromisoformat(str(date)[:10]).isoformat()
    except ValueError:
        return None


def _check_even_spacing(reference: xr.DataArray) -> None:
    """Refuse ``y``/``x`` coordinates that are not evenly spaced (no affine grid).

    Variables on different grids merged into one Dataset (``xr.merge`` takes the union of
    their coordinates) give such coordinates, with NaN wherever one variable has no pixel.
    """
    for axis in ("y", "x"):
        steps = np.diff(np.asarray(reference[axis].values, dtype=np.float64))
        if len(steps) and not np.allclose(steps, steps[0], rtol=1e-6, atol=0.0):
            raise SceneError(
                f"The dataset's {axis} coordinates are not evenly spaced (steps "
                f"{steps.min():g} to {steps.max():g}): variables on different grids were merged. "
                "Align each to the optical grid first, e.g. "
                "dem.rio.reproject_match(optical), then merge.")


class DatasetSource(SceneSource):
    """A scene held in an :class:`xarray.Dataset`, read window by window (see the module).

    Args:
        dataset: the scene's variables on one georeferenced grid.
        bands: our optical band name (:data:`OPTICAL_BANDS`) -> the dataset's variable, for
            variables named otherwise.
        optical_scale: reflectance = value * scale + offset.
        optical_offset: see ``optical_scale``.
        optical_nodata: optical value marking missing data besides each variable's nodata.
        name: scene name; default the dataset's ``name`` attribute, else ``"dataset"``.
        date: acquisition date ``YYYY-MM-DD``; default the dataset's single ``time`` or its
            ``date`` attribute.
        quality_mask: a product's mask convention, applied to its quality variable (named
            after the convention's band in any case: ``scl``, ``SCL``, ``qa_pixel``) when the
            dataset has one.

    Raises:
        SceneError: for a missing optical band, a variable with other dims, band counts or
            grid, or a dataset without a CRS or with rows running south to north.
    """

    def __init__(
        self,
        dataset: xr.Dataset,
        bands: Mapping[str, str] | None = None,
        optical_scale: float = 1.0,
        optical_offset: float = 0.0,
        optical_nodata: float | None = None,
        name: str | None = None,
        date: str | None = None,
        quality_mask: QualityMask | None = None,
    ) -> None:
        if not isinstance(dataset, xr.Dataset):
            raise SceneError(f"map_glaciers takes an xarray.Dataset, got "
                             f"{type(dataset).__name__}; a DataArray becomes one with "
                             "array.to_dataset(name=...) or xr.Dataset({...}).")
        optical = self._optical_variables(dataset, bands or {})
        first_name = optical[0][0]
        reference = _squeezed(first_name, dataset[first_name])
        crs = reference.rio.crs
        if crs is None:
            raise SceneError(f"Dataset variable {first_name!r} has no CRS; set it with "
                             "dataset.rio.write_crs('EPSG:...').")
        _check_even_spacing(reference)
        transform = reference.rio.transform()
        if transform.e > 0:
            raise SceneError("The dataset's rows run from south to north; sort them with "
                             "dataset.sortby('y', ascending=False).")
        self._init_state(optical_scale, optical_offset, optical_nodata, date)
        self.grid = Grid(crs, transform, reference.sizes["y"], reference.sizes["x"])
        #: Stands for the first optical file of a file-based scene in messages.
        self.grid_path = Path(f"dataset[{first_name!r}]")
        self.name = name or str(dataset.attrs.get("name", "dataset"))
        self.date = date or _date(dataset)
        #: The first optical band: its coordinates are the scene's grid.
        self.reference = reference
        self.channels["optical"] = [self._channel(dataset, var, band)
                                    for var, band in optical]
        dem = next((name for name in DEM_NAMES if name in dataset.data_vars), None)
        if "slope" in dataset.data_vars and dem is None:
            raise SceneError("The dataset has a slope variable but no dem; add the elevation "
                             "as variable 'dem'.")
        if dem is not None:
            self.channels["dem"] = [self._channel(dataset, dem, 1), self._channel(
                dataset, "slope", 1) if "slope" in dataset.data_vars else None]
        if quality_mask is not None:
            quality = next((name for name in map(str, dataset.data_vars)
                            if name.lower() == quality_mask.band.lower()), None)
            if quality is not None:
                self.quality = self._channel(dataset, quality, 1)
                self.quality_mask = quality_mask
        for role, sensor in _ROLE_SENSOR.items():
            if role in dataset.data_vars:
                count = SENSOR_CHANNELS[sensor]
                array = _squeezed(role, dataset[role])
                given = array.sizes.get("band", 1)
                if given != count:
                    raise SceneError(f"Dataset variable {role!r} has {given} band(s); the "
                                     f"model's {sensor!r} input needs {count}.")
                self.channels[sensor] = [self._channel(dataset, role, band)
                                         for band in range(1, count + 1)]

    @staticmethod
    def _optical_variables(dataset: xr.Dataset,
                           bands: Mapping[str, str]) -> list[tuple[str, int]]:
        """``(variable, 1-based band)`` of each optical band, in :data:`OPTICAL_BANDS` order."""
        unknown = sorted(set(bands) - set(OPTICAL_BANDS))
        if unknown:
            raise SceneError(f"bands maps {unknown}, not optical bands; use the names "
                             f"{list(OPTICAL_BANDS)}.")
        if not bands and "optical" in dataset.data_vars:
            count = dataset["optical"].sizes.get("band", 1)
            if count != len(OPTICAL_BANDS):
                raise SceneError(f"Dataset variable 'optical' has {count} band(s); it needs "
                                 f"{len(OPTICAL_BANDS)} ({', '.join(OPTICAL_BANDS)}).")
            return [("optical", band) for band in range(1, len(OPTICAL_BANDS) + 1)]
        found, missing = [], []
        for band in OPTICAL_BANDS:
            names = (bands[band],) if band in bands else COMMON_NAMES[band]
            name = next((n for n in names if n in dataset.data_vars), None)
            if name is None:
                missing.append(f"{band} ({' or '.join(names)})")
            else:
                found.append((name, 1))
        if missing:
            raise SceneError(f"The dataset lacks the optical band(s) {', '.join(missing)}; it "
                             f"has {sorted(map(str, dataset.data_vars))}. Name the variables "
                             "so, or pass bands={'nir': 'B08', ...}.")
        return found

    def _channel(self, dataset: xr.Dataset, name: str, band: int) -> _Channel:
        """Register a reader for variable ``name`` (checked against the grid)."""
        path = Path(f"dataset[{name!r}]")
        if path not in self._readers:
            array = _squeezed(name, dataset[name])
            if "band" not in array.dims and band != 1:
                raise SceneError(f"Dataset variable {name!r} has one band; band {band} is "
                                 "needed.")
            self._readers[path] = _ArrayReader(array)
            self.alignment[str(path)] = "on the dataset's grid"
        return _Channel(path, band)
