"""Scene deployment: GeoTIFF inputs to a glacier raster, calibrated confidence and outlines.

The scene is processed one row of windows at a time. Windows are read from the files in
batches (a background thread reads the next batch while the model runs), predicted and blended
by :class:`glacier_mapping.inference.WindowBlender` (the blending of the chapters' predictions),
which holds one patch of rows; rows that no later window touches are written to the output
rasters at once. Peak memory therefore depends on the patch size, the batch size and the scene
width, never on the scene height. Outlines are then vectorised from the written class raster
strip by strip, with components that cross strip seams merged.

With ``--inventory`` (:class:`InventoryOptions`) the outlines are instead one per glacier,
split by inventory outlines (or into connected components), with RGI 7.0-style attributes and
area intervals (:mod:`glacier_mapping.inventory`): the class and confidence rasters are read
back whole for this, so memory then grows with the scene (:data:`INVENTORY_BYTES_PER_PIXEL`).

Every input is checked before anything is written. The outputs are written to a staging
directory inside ``--out`` and published together at the end, ``summary.json`` last: a folder
with ``summary.json`` holds a complete output set (:func:`read_summary`), and a failed or
interrupted deploy leaves the previous set, or nothing, behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
import rasterio.features
import rasterio.shutil
import shapely
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import shape

from glacier_mapping.area_uncertainty import (
    AREA_ERRORS_KEY,
    LEVEL,
    SAMPLES,
    AcquisitionShift,
    BlockSize,
    calibrator_block_size,
    calibrator_shift,
    glacier_probability,
)
from glacier_mapping.calibration import Calibrator, load_calibrator
from glacier_mapping.data.scenes import (
    OPTICAL_BANDS,
    Grid,
    SceneError,
    SceneSource,
    check_stats,
    raster_location,
)
from glacier_mapping.data.schema import (
    COORDINATE_VECTOR_SIZE,
    LOCATION_INPUT,
    REGION_VECTOR_SIZE,
    SENSOR_CHANNELS,
)
from glacier_mapping.data.tiles import NormStats
from glacier_mapping.inventory import (
    DEFAULT_MAX_DISTANCE_M,
    DEFAULT_ZONE_M,
    InventoryError,
    inventory_layer_and_draws,
    split_by_inventory,
    write_layer,
)
from glacier_mapping.lazy import lazy_module
from glacier_mapping.output_item import output_item
from glacier_mapping.products import (
    PRODUCTS,
    MaskConvention,
    reflectance_problem,
    sample_optical,
)
from glacier_mapping.runtime import BACKEND_CHOICES, BackendError, choose_backend, load_backend
from glacier_mapping.runtime.backends import RUNTIME_PRECISIONS
from glacier_mapping.scene_inference import (
    CLASS_NODATA,
    SceneTotals,
    WindowPlan,
    WindowReader,
    mapped_rows,
)
from glacier_mapping.stac import StacError, read_dem_item, read_stac_item
from glacier_mapping.store import (
    atomic_copy,
    atomic_path,
    atomic_write_json,
    file_digest,
    publish_set,
)
from glacier_mapping.windows import BLENDS, DEFAULT_BLEND, window_origins

# TensorFlow-backed: loaded only with --backend tensorflow or a region-vector model
adaptation = lazy_module("glacier_mapping.adaptation")
models = lazy_module("glacier_mapping.models")
tensorflow_backend = lazy_module("glacier_mapping.runtime.tensorflow_backend")

logger = logging.getLogger(__name__)

CLASS_FILE = "glacier_class.tif"
CONFIDENCE_FILE = "confidence.tif"
POLYGON_FILE = "glaciers.gpkg"
ITEM_FILE = "item.json"
SUMMARY_FILE = "summary.json"
#: Files a deployment publishes; ``summary.json``, written last, marks the set complete.
OUTPUT_FILES = (CLASS_FILE, CONFIDENCE_FILE, POLYGON_FILE, ITEM_FILE, SUMMARY_FILE)
POLYGON_LAYER = "glaciers"
MODEL_CARD = "model_card.json"
NORM_STATS_FILE = "norm_stats.json"
#: Default window step as a fraction of the patch size: half a patch, the original's. In
#: benchmarks/bench_stride.py (two trainings of the quick model) three quarters of a patch
#: needed 0.56 times the windows of a large scene but lost 0.0025-0.008 glacier IoU on the
#: independent split (unseen regions and dates); a whole patch lost 0.026-0.037.
DEFAULT_STRIDE_FRACTION = 0.5
#: GDAL block cache while deploying (MB); GDAL's default (5 % of RAM) grows with the scene.
GDAL_CACHE_MB = 64
#: Command-line flag that supplies each sensor.
SENSOR_FLAGS: dict[str, str] = {
    "optical": "--optical", "dem": "--dem", "co_pol_sar": "--co-pol",
    "cross_pol_sar": "--cross-pol", "in_sar": "--coherence", "thermal": "--thermal",
}
#: An input covering less than this fraction of the optical scene is partial coverage.
FULL_COVERAGE = 0.999
#: Signals that stop ``glacier-mapping deploy`` (exit code 128 + the signal number).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Test hook: ``GLACIER_MAPPING_TEST_PAUSE=<stage>`` (``predict``, ``cog`` or ``vectorise``)
#: makes a deploy print ``paused at <stage>`` on stdout and wait there once, for
#: ``PAUSE_SECONDS``, so that tests can interrupt it at that stage.
PAUSE_ENV = "GLACIER_MAPPING_TEST_PAUSE"
PAUSE_SECONDS = 60.0
#: Peak memory of the ``--inventory`` step per scene pixel (bytes): tracemalloc peaks of 131 and
#: 130 on 1000 x 1000 and 2000 x 2000 scenes with a DEM and outlines, every pixel uncertain
#: (0 < p < 1); most of it is the area draws' per-pixel arrays.
INVENTORY_BYTES_PER_PIXEL = 130
#: Seed of the area-interval draws of ``--inventory`` (per glacier and for the scene).
AREA_SEED = 0
_BLOCK = 256
_MODEL_FIX = ("pass --model a model trained by the book (outputs/<profile>/models/<name>/"
              "model.keras) or one written by `glacier-mapping import-weights`")
#: pyogrio logs an INFO note "Created N records" for every GeoPackage write.
_PYOGRIO_LOG = logging.getLogger("pyogrio._io")
#: Names left in ``--out`` by a deploy that was killed (its staging directory, or partial
#: output files of older versions); the number is the process id.
_LEFTOVER = re.compile(
    r"^\.staging-(\d+)-|^\.(?:" + "|".join(re.escape(Path(name).stem) for name in OUTPUT_FILES)
    + r")\.[\w.]+-(\d+)(?:\.\w+)?$"
)


class DeploymentError(ValueError):
    """Deployment cannot run; the message names the parameter or file and the fix."""


class DeployInterrupted(BaseException):
    """SIGINT or SIGTERM stopped ``glacier-mapping deploy`` (a BaseException, like Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class DeploymentSummary:
    """What a deployment wrote and measured (also written as ``summary.json``)."""

    scene: str
    date: str | None
    out_dir: str
    outputs: dict[str, str]
    inputs: dict[str, list[str]]
    alignment: dict[str, str]
    grid: dict[str, Any]
    model: dict[str, Any]
    calibrator: str | None
    region_vector: str | None
    parameters: dict[str, Any]
    pixels: dict[str, int]
    glacier_area_km2: float
    polygon_count: int
    estimated_iou: float | None
    mean_confidence: float | None
    seconds: dict[str, float]
    peak_memory_mb: float
    notes: list[str] = field(default_factory=list)
    coverage: dict[str, float] = field(default_factory=dict)
    inventory: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (``inventory`` only for a run with ``--inventory``)."""
        data = asdict(self)
        if self.inventory is None:
            del data["inventory"]
        return data


@dataclass(frozen=True)
class _ModelInfo:
    """What deployment needs to know about a model."""

    sensors: tuple[str, ...]
    patch_size: int
    location_size: int | None


def _load_model(model_path: Path) -> Any:  # noqa: ANN401 - a keras.Model
    """Load a ``.keras`` model in safe mode, with a clear error."""
    _check_model_file(model_path)
    try:
        return models.load_model(model_path)
    except Exception as error:  # any failure means the file is not a model this library loads
        raise DeploymentError(
            f"{model_path} is not a Keras model file this library can load ({error}); "
            f"{_MODEL_FIX}."
        ) from None


def _check_model_file(model_path: Path) -> None:
    """Refuse a model path that is not a file or not a ``.keras`` (zip) archive."""
    if not model_path.is_file():
        state = "is not a file" if model_path.exists() else "does not exist"
        raise DeploymentError(f"Model file {model_path} {state}; {_MODEL_FIX}.")
    if not zipfile.is_zipfile(model_path):
        raise DeploymentError(
            f"{model_path} is not a Keras model file (a .keras file is a zip archive; this one "
            f"is not); {_MODEL_FIX}."
        )


def _model_card(model_path: Path) -> dict[str, Any]:
    """The ``model_card.json`` beside the model, or an empty dict."""
    card_path = model_path.parent / MODEL_CARD
    if not card_path.is_file():
        return {}
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DeploymentError(
            f"{card_path} is not valid JSON ({error}); fix or remove it."
        ) from None
    if not isinstance(card, dict):
        raise DeploymentError(f"{card_path} must hold a JSON object; fix or remove it.")
    return card


def _model_info(inputs: dict[str, tuple[int | None, ...]], card: dict[str, Any],
                patch_size: int | None, model_path: Path) -> _ModelInfo:
    """Sensors, patch size and location size from the model's inputs (one sample's shapes)."""
    if not inputs:
        raise DeploymentError(f"{model_path}: the model must take a dict of named sensor inputs.")
    sensors = tuple(name for name in inputs if name != LOCATION_INPUT)
    unknown = [name for name in sensors if name not in SENSOR_CHANNELS]
    if unknown:
        raise DeploymentError(f"{model_path}: unknown model input(s) {unknown}.")
    shapes = {name: inputs[name] for name in sensors}
    for name, input_shape in shapes.items():
        if input_shape[-1] != SENSOR_CHANNELS[name]:
            raise DeploymentError(
                f"{model_path}: input {name!r} has {input_shape[-1]} channels; the schema has "
                f"{SENSOR_CHANNELS[name]}."
            )
    model_size = next((s[0] for s in shapes.values() if s[0] is not None), None)
    size = patch_size or model_size or card.get("patch_size")
    if size is None:
        raise DeploymentError(
            f"{model_path}: the model does not fix its patch size; pass --patch-size N."
        )
    if model_size is not None and size != model_size:
        raise DeploymentError(
            f"--patch-size {size} differs from the model's input size {model_size}; omit "
            "--patch-size."
        )
    location = inputs[LOCATION_INPUT][-1] if LOCATION_INPUT in inputs else None
    return _ModelInfo(sensors, int(size), location)


def _stats_from_card(model_path: Path, card: dict[str, Any]) -> NormStats:
    """Normalisation statistics: the card's values or file, ``norm_stats.json``, or the paper's."""
    entry = card.get("norm_stats", card.get("norm_stats_path"))
    if isinstance(entry, dict):
        try:
            sensors = entry["sensors"]
            return NormStats(
                {name: [float(v) for v in item["min"]] for name, item in sensors.items()},
                {name: [float(v) for v in item["max"]] for name, item in sensors.items()},
                source=f"{model_path.parent / MODEL_CARD}",
                clip=bool(entry.get("clip", True)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DeploymentError(
                f"{model_path.parent / MODEL_CARD}: 'norm_stats' must look like "
                f"{{'sensors': {{name: {{'min': [...], 'max': [...]}}}}}} ({error})."
            ) from None
    if isinstance(entry, str):
        return _stats_file(model_path.parent / entry)
    beside = model_path.parent / NORM_STATS_FILE
    return _stats_file(beside) if beside.is_file() else NormStats.paper()


def _stats_file(path: Path) -> NormStats:
    if not path.is_file():
        raise DeploymentError(f"Normalisation statistics {path} do not exist; fix the path.")
    try:
        return NormStats.from_json(path)
    except ValueError as error:
        raise DeploymentError(str(error)) from None


def _location_mode(info: _ModelInfo, region_vector_path: Path | None,
                   coordinates: bool | None) -> str | None:
    """``"region"``, ``"coordinates"`` or None, checked against the model's location input."""
    if info.location_size is None:
        if region_vector_path is not None or coordinates:
            raise DeploymentError(
                "The model takes no location input; drop --region-vector/--coordinates."
            )
        return None
    if info.location_size == REGION_VECTOR_SIZE:
        if region_vector_path is None:
            raise DeploymentError(
                f"The model takes a {REGION_VECTOR_SIZE}-slot region vector; pass "
                "--region-vector JSON (see glacier_mapping.adaptation.save_region_vector)."
            )
        if coordinates:
            raise DeploymentError("The model takes a region vector, not coordinates; drop "
                                  "--coordinates.")
        return "region"
    if info.location_size == COORDINATE_VECTOR_SIZE:
        if region_vector_path is not None:
            raise DeploymentError("The model takes coordinates, not a region vector; drop "
                                  "--region-vector.")
        if coordinates is False:
            raise DeploymentError("The model needs its coordinate input; drop --no-coordinates.")
        return "coordinates"
    raise DeploymentError(f"Unsupported model location input size {info.location_size}.")


def _unwritable(out_dir: Path, reason: str) -> DeploymentError:
    return DeploymentError(f"Output directory {out_dir} is not writable ({reason}); pass --out "
                           "to a directory you can write to.")


def _check_out_dir(out_dir: Path) -> None:
    """Check that ``out_dir`` is, or can be created as, a writable directory; creates nothing."""
    existing = next(path for path in (out_dir, *out_dir.parents) if path.exists())
    if not existing.is_dir():
        raise _unwritable(out_dir, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _unwritable(out_dir, f"no write permission in {existing}")


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_leftovers(out_dir: Path) -> None:
    """Remove staging directories and partial files of killed deploys (their pid is gone)."""
    for path in out_dir.iterdir():
        match = _LEFTOVER.match(path.name)
        if match is None or _running(int(match.group(1) or match.group(2))):
            continue
        logger.info("Removing %s, left by a deploy that was killed.", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A private directory inside ``out_dir`` for one deploy's files, removed at the end.

    ``out_dir`` is created if needed; if the block fails, the directories created here are
    removed again (when empty), so ``out_dir`` is left as it was.
    """
    created = [path for path in (out_dir, *out_dir.parents) if not path.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=out_dir))
    except OSError as error:
        _remove_empty(created)
        raise _unwritable(out_dir, str(error.strerror or error)) from None
    done = False
    try:
        yield staging
        done = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not done:
            _remove_empty(created)


def _remove_empty(directories: list[Path]) -> None:
    """Remove ``directories`` (deepest first) while they are empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


@contextmanager
def _signal_handler(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Handle SIGINT and SIGTERM with ``handler`` during the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)


def _interrupt(signum: int, _frame: Any) -> None:
    """Raise :class:`DeployInterrupted`; later signals are ignored while cleaning up."""
    for other in INTERRUPT_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise DeployInterrupted(signum)


def _publish(staged: dict[str, Path], out_dir: Path, marker: str,
             data: dict[str, Any]) -> None:
    """Move the staged outputs into ``out_dir``, then write ``data`` as ``marker``, last.

    The previous marker (``summary.json`` of a deploy) is removed first, so a folder never
    holds a marker with a mixed set; SIGINT and SIGTERM are held back until the set is complete.
    """
    held: list[int] = []
    with _signal_handler(lambda signum, _frame: held.append(signum)):
        publish_set(staged, out_dir, marker, data)
    for signum in held:
        signal.raise_signal(signum)


def read_summary(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``summary.json`` of the complete output set in ``out_dir``.

    Raises:
        DeploymentError: if ``out_dir`` holds no complete set (``summary.json``, written last,
            is missing, or a file of :data:`OUTPUT_FILES` is).
    """
    out_dir = Path(out_dir)
    missing = [name for name in OUTPUT_FILES if not (out_dir / name).is_file()]
    if missing:
        raise DeploymentError(
            f"{out_dir} holds no complete deployment ({', '.join(missing)} missing); run "
            f"glacier-mapping deploy --out {out_dir}."
        )
    return json.loads((out_dir / SUMMARY_FILE).read_text(encoding="utf-8"))


def _pause_for_tests(stage: str) -> None:
    """Wait once at ``stage`` when :data:`PAUSE_ENV` names it (a test hook; see there)."""
    if os.environ.get(PAUSE_ENV) != stage:
        return
    del os.environ[PAUSE_ENV]
    print(f"paused at {stage}", flush=True)
    time.sleep(PAUSE_SECONDS)


def _raster_profile(source: SceneSource, dtype: str, nodata: float) -> dict[str, Any]:
    return {
        "driver": "GTiff", "height": source.grid.height, "width": source.grid.width,
        "count": 1, "dtype": dtype, "crs": source.grid.crs, "transform": source.grid.transform,
        "nodata": nodata, "tiled": True, "blockxsize": _BLOCK, "blockysize": _BLOCK,
        "compress": "deflate",
    }


def _to_cog(tiled: Path, final: Path, resampling: str) -> str:
    """Copy a tiled GeoTIFF to ``final`` atomically, as a COG when GDAL has the driver."""
    with rasterio.Env() as env:
        has_cog = "COG" in env.drivers()
    if not has_cog:
        atomic_copy(tiled, final)
        return "GTiff (tiled; this GDAL has no COG driver)"
    with atomic_path(final) as temporary:
        rasterio.shutil.copy(tiled, temporary, driver="COG", compress="DEFLATE",
                             blocksize=_BLOCK, overview_resampling=resampling)
    return "COG"


@dataclass(frozen=True)
class DeployOptions:
    """How :func:`deploy_scene` runs the model over a scene (the ``deploy`` tunables).

    Attributes:
        coordinates: give window-centre sin/cos lat/lon (radians); None follows the model.
        tta: 8-fold dihedral test-time augmentation.
        mc_passes: MC-dropout passes to average (0 = deterministic).
        patch_size: window size; default the model's input size.
        stride: window step; default half a patch (``DEFAULT_STRIDE_FRACTION``).
        batch_size: windows per model call.
        precision: ``float32``, ``bfloat16``, ``int8`` or ``auto`` (bfloat16 where the
            hardware has it: see :func:`glacier_mapping.inference.resolve_precision` and
            :func:`glacier_mapping.runtime.backends.resolve_runtime_precision`); int8 needs a
            quantised export (:mod:`glacier_mapping.runtime.quantise`); the precision used is
            recorded in ``summary.json``.
        backend: the inference runtime, one of
            :data:`glacier_mapping.runtime.BACKEND_CHOICES` (``auto`` picks by measured speed
            on this CPU's kind); the backend used is recorded in ``summary.json``.
        blend: window weights, one of :data:`glacier_mapping.windows.BLENDS`; ``original``
            reproduces the original implementation's whole-scene probabilities.
        prefetch: read the next batch of windows in a background thread while the model runs.
        vector_strip_rows: rows per strip when vectorising the class raster.
        allow_partial_coverage: map a scene that an input (DEM, SAR, thermal, another optical
            file) covers only in part, instead of refusing it; the coverage is logged and
            recorded in ``summary.json``.
        product: the :data:`glacier_mapping.products.PRODUCTS` entry the scene's optical
            scale and offset come from (``--product``); checked against the scene's and
            recorded in ``summary.json`` with its caveats.
        reflectance_check: refuse a scene whose sampled optical values do not look like
            reflectance (:func:`glacier_mapping.products.reflectance_problem`); on in
            ``glacier-mapping deploy`` unless ``--skip-reflectance-check``.
        stac_item: the ``--stac-item`` the optical files came from (recorded only).

    Raises:
        DeploymentError: for a value out of range or an unknown precision, blend or product;
            the message names the command-line option.
    """

    coordinates: bool | None = None
    tta: bool = False
    mc_passes: int = 0
    patch_size: int | None = None
    stride: int | None = None
    batch_size: int = 8
    precision: str = "auto"
    backend: str = "tensorflow"
    blend: str = DEFAULT_BLEND
    prefetch: bool = True
    vector_strip_rows: int = 1024
    allow_partial_coverage: bool = False
    product: str | None = None
    reflectance_check: bool = False
    stac_item: str | None = None

    def __post_init__(self) -> None:
        counts = [("--batch-size", self.batch_size, 1, "windows per model call", 8),
                  ("--mc-passes", self.mc_passes, 0, "MC-dropout passes; 0 = deterministic", 0),
                  ("vector_strip_rows", self.vector_strip_rows, 1, "rows per strip", 1024)]
        counts += [(flag, value, 1, what, example) for flag, value, what, example in (
            ("--patch-size", self.patch_size, "window size in pixels", 64),
            ("--stride", self.stride, "window step in pixels", 32)) if value is not None]
        for flag, value, minimum, what, example in counts:
            if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
                raise DeploymentError(f"{flag} must be an integer >= {minimum} ({what}), got "
                                      f"{value!r}; e.g. {flag} {example}.")
        if self.precision not in RUNTIME_PRECISIONS:
            raise DeploymentError(
                f"precision={self.precision!r} is not one of {list(RUNTIME_PRECISIONS)}; pass "
                f"--precision {' / '.join(RUNTIME_PRECISIONS)}."
            )
        if self.backend not in BACKEND_CHOICES:
            raise DeploymentError(
                f"backend={self.backend!r} is not one of {list(BACKEND_CHOICES)}; pass "
                f"--backend {' / '.join(BACKEND_CHOICES)}."
            )
        if self.blend not in BLENDS:
            raise DeploymentError(
                f"blend={self.blend!r} is not one of {list(BLENDS)}; pass --blend "
                f"{' / '.join(BLENDS)}."
            )
        if self.product is not None and self.product not in PRODUCTS:
            raise DeploymentError(
                f"product={self.product!r} is not one of {list(PRODUCTS)}; pass --product "
                f"{' / '.join(PRODUCTS)}."
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DeployOptions:
        """The options of parsed ``glacier-mapping deploy`` arguments."""
        return cls(coordinates=args.coordinates, tta=args.tta, mc_passes=args.mc_passes,
                   patch_size=args.patch_size, stride=args.stride, batch_size=args.batch_size,
                   precision=args.precision, backend=args.backend, blend=args.blend,
                   allow_partial_coverage=args.allow_partial_coverage, product=args.product,
                   reflectance_check=not args.skip_reflectance_check)


@dataclass(frozen=True)
class InventoryOptions:
    """``--inventory``: write ``glaciers.gpkg`` as an inventory layer, one outline per glacier.

    The predicted ice is split by inventory outlines (or, without them, into 4-connected
    components) with :func:`glacier_mapping.inventory.split_by_inventory`, and written as
    :func:`glacier_mapping.inventory.inventory_layer` (WGS 84, RGI 7.0-style columns, area
    intervals). Needs a calibrator (calibrated confidence), the scene's date and a block size.

    Attributes:
        outlines: RGI 6.0 or 7.0 outlines (a file GDAL reads, any CRS); None splits the ice
            into connected components.
        max_distance_m: ice outside every outline but this close to one (m) goes to the
            nearest; default :data:`glacier_mapping.inventory.DEFAULT_MAX_DISTANCE_M`.
        block_px: block side (pixels) of the area intervals; default the calibrator's
            ``area_errors`` record.

    Raises:
        DeploymentError: for a negative distance or a block side below 1 (naming the option).
    """

    outlines: Path | None = None
    max_distance_m: float = DEFAULT_MAX_DISTANCE_M
    block_px: int | None = None

    def __post_init__(self) -> None:
        distance = self.max_distance_m
        if isinstance(distance, bool) or not isinstance(distance, int | float) or not (
                math.isfinite(distance) and distance >= 0):
            raise DeploymentError(f"--max-distance must be a distance >= 0 in metres, got "
                                  f"{distance!r}; e.g. --max-distance {DEFAULT_MAX_DISTANCE_M:g}.")
        block = self.block_px
        if block is not None and (isinstance(block, bool) or not isinstance(block, Integral)
                                  or block < 1):
            raise DeploymentError(f"--area-block-px must be an integer >= 1 (block side in "
                                  f"pixels), got {block!r}; e.g. --area-block-px 8.")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> InventoryOptions | None:
        """The options of parsed ``deploy`` arguments; None without ``--inventory``.

        Raises:
            DeploymentError: for ``--max-distance`` or ``--area-block-px`` without
                ``--inventory``.
        """
        if args.inventory is None:
            for flag, value in (("--max-distance", args.max_distance),
                                ("--area-block-px", args.area_block_px)):
                if value is not None:
                    raise DeploymentError(f"{flag} applies to --inventory only; add --inventory "
                                          f"[OUTLINES] or drop {flag}.")
            return None
        outlines = None if args.inventory is True else Path(args.inventory)
        distance = DEFAULT_MAX_DISTANCE_M if args.max_distance is None else args.max_distance
        return cls(outlines, distance, args.area_block_px)


@dataclass(frozen=True)
class _InventoryPlan:
    """``--inventory``, checked: the outlines' path, distance and block size with its source."""

    outlines: Path | None
    max_distance_m: float
    block_px: int
    block_source: str
    shift: AcquisitionShift | None


@dataclass(frozen=True)
class DeploymentSetup:
    """Everything a deployment resolved and checked before its first window.

    Made by :func:`prepare_deployment`; :func:`deploy_scene` and
    :func:`glacier_mapping.mapping.map_glaciers` run its :meth:`plan` with :attr:`runner`.
    """

    options: DeployOptions
    precision: str
    model_path: Path
    info: _ModelInfo
    runner: Any
    reader: WindowReader
    region_vector_path: Path | None
    calibrator_path: str | os.PathLike[str] | None
    calibrator: Calibrator | None
    stride: int
    coverage: dict[str, float]
    notes: list[str]
    inventory: _InventoryPlan | None

    def plan(self, spread: bool = False) -> WindowPlan:
        """The window plan of these options (``spread``: also the MC-dropout spread)."""
        options = self.options
        try:
            return WindowPlan(self.info.patch_size, self.stride, options.batch_size,
                              options.blend, options.tta, options.mc_passes, options.prefetch,
                              spread)
        except ValueError as error:
            raise DeploymentError(f"{error} (--mc-passes)") from None


def deploy_scene(
    source: SceneSource,
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: DeployOptions | None = None,
    *,
    calibrator_path: str | os.PathLike[str] | None = None,
    region_vector_path: str | os.PathLike[str] | None = None,
    norm_stats: NormStats | str | os.PathLike[str] | None = None,
    inventory: InventoryOptions | None = None,
    progress: bool = True,
) -> DeploymentSummary:
    """Map glaciers on a whole scene with windowed, batched inference.

    Writes to ``out_dir``: ``glacier_class.tif`` (uint8 0/1, nodata 255, COG),
    ``confidence.tif`` (float32 calibrated confidence, nodata NaN, COG), ``glaciers.gpkg``
    (layer ``glaciers``: one polygon per 4-connected glacier component with ``area_km2``,
    ``mean_confidence``, ``estimated_iou``, ``scene`` and ``date``; with ``inventory``, the
    inventory layer instead, see :class:`InventoryOptions`), ``item.json`` (a STAC item of
    these outputs, :mod:`glacier_mapping.output_item`) and ``summary.json``.
    Every input is checked first (a refused run creates nothing); the files are written to a
    staging directory and published together, ``summary.json`` last, replacing a previous
    set; a failure or interruption leaves the previous set (or nothing) in ``out_dir``.

    Args:
        source: the scene (its optical grid is the output grid).
        model_path: ``.keras`` model with dict sensor inputs; a ``model_card.json`` beside it
            may give ``patch_size`` and ``norm_stats`` (a statistics dict or a file path
            relative to the card); a ``norm_stats.json`` beside the model is used otherwise.
        out_dir: output directory (created when needed).
        options: how to run the model (:class:`DeployOptions`); default its defaults.
        calibrator_path: calibrator JSON; without it ``confidence.tif`` holds uncalibrated
            confidence (1 - normalised entropy) and no IoU is estimated.
        region_vector_path: region-vector JSON for models with a 12-slot location input.
        norm_stats: statistics (or their JSON) overriding the model's.
        inventory: write ``glaciers.gpkg`` as an inventory layer (needs ``calibrator_path``
            and the scene's date); ``summary.json`` then has an ``inventory`` record.
        progress: show a progress bar.

    Raises:
        DeploymentError: for a bad parameter, model, calibrator, sensor mismatch, partial
            coverage, output directory, or (with ``inventory``) outlines, date or block size.
        SceneError: for a scene smaller than one window or without valid pixels.
    """
    options = DeployOptions() if options is None else options
    # GDAL's block cache defaults to 5 % of RAM and would grow with the scene; cap it so
    # peak memory stays flat in scene size.
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
        started = time.perf_counter()
        out_dir = Path(out_dir)
        setup = prepare_deployment(source, Path(model_path), options, calibrator_path,
                                   region_vector_path, norm_stats, inventory, out_dir=out_dir)
        with _staging(out_dir) as staging:
            staged = {name: staging / name for name in (CLASS_FILE, CONFIDENCE_FILE,
                                                        POLYGON_FILE)}
            totals, raster_format, seconds = _predict_and_write(source, setup, staged, progress)
            estimated = totals.estimated_iou(setup.calibrator)
            vector_start = time.perf_counter()
            record = None
            if setup.inventory is None:
                polygon_count = _write_polygons(
                    _vectorise(staged[CLASS_FILE], staged[CONFIDENCE_FILE],
                               options.vector_strip_rows),
                    source, estimated, staged[POLYGON_FILE],
                )
            else:
                polygon_count, record = _write_inventory(source, setup.inventory, staged,
                                                         options.vector_strip_rows)
            seconds["vectorise" if record is None else "inventory"] = round(
                time.perf_counter() - vector_start, 3)
            seconds["total"] = round(time.perf_counter() - started, 3)
            paths = {name: out_dir / name for name in OUTPUT_FILES}
            summary = _summary(source, setup, out_dir, paths, totals, raster_format,
                               polygon_count, seconds, record)
            item = output_item(summary.to_json(), _model_card(setup.model_path), ITEM_FILE)
            atomic_write_json(staging / ITEM_FILE, item.to_dict(include_self_link=False,
                                                                transform_hrefs=False))
            staged[ITEM_FILE] = staging / ITEM_FILE
            _publish(staged, out_dir, SUMMARY_FILE, summary.to_json())
        return summary


def run_deploy(args: argparse.Namespace) -> DeploymentSummary:
    """Open the scene of parsed ``glacier-mapping deploy`` arguments and deploy on it."""
    options = DeployOptions.from_args(args)
    inventory = InventoryOptions.from_args(args)
    name, date = args.name, args.date
    if args.stac_item is None:
        optical = args.optical
        if optical is None:
            raise DeploymentError("Pass the optical files with --optical FILE [FILE ...] or a "
                                  "STAC item with --stac-item JSON.")
        bands, scale, offset, nodata = _optical_conversion(args)
        quality, quality_mask = _quality(args.quality, args.product)
    else:
        given = [flag for flag, value in (
            ("--optical", args.optical), ("--bands", args.bands), ("--product", args.product),
            ("--optical-scale", args.optical_scale), ("--optical-offset", args.optical_offset),
            ("--quality", args.quality)) if value is not None]
        if given:
            raise DeploymentError(f"--stac-item sets the optical files, bands, scale, offset and "
                                  f"quality band; "
                                  f"drop {', '.join(given)}.")
        item = read_stac_item(args.stac_item)
        optical, bands, scale, offset, nodata = (list(item.files), OPTICAL_BANDS, item.scale,
                                                 item.offset, item.nodata)
        name, date = name or item.name, date or item.date
        quality, quality_mask = _quality(item.quality, item.mask_product)
        options = replace(options, product=item.product, stac_item=str(args.stac_item))
    dem = args.dem
    if args.dem_item is not None:
        if dem is not None:
            raise DeploymentError("--dem-item gives the elevation; drop --dem or --dem-item.")
        dem = read_dem_item(args.dem_item)
    with SceneSource(
        optical, bands, dem=dem, slope=args.slope, co_pol=args.co_pol,
        cross_pol=args.cross_pol, coherence=args.coherence, thermal=args.thermal,
        optical_scale=scale, name=name, date=date, optical_offset=offset,
        optical_nodata=nodata, quality=quality, quality_mask=quality_mask,
    ) as source:
        return deploy_scene(
            source, args.model, args.out, options, calibrator_path=args.calibrator,
            region_vector_path=args.region_vector, norm_stats=args.norm_stats,
            inventory=inventory, progress=not args.no_progress,
        )


def _quality(path: Path | str | None,
             product: str | None) -> tuple[Path | str | None, MaskConvention | None]:
    """The quality band and the mask convention of ``--quality`` (with ``--product``)."""
    if path is None:
        return None, None
    if product is None:
        raise DeploymentError("--quality needs --product: the product's convention says which "
                              "classes or bits of the quality band are clouds, shadows or no "
                              "data.")
    return path, PRODUCTS[product].mask


def _optical_conversion(
    args: argparse.Namespace,
) -> tuple[Sequence[str] | str, float, float, float | None]:
    """Band map, scale, offset and extra nodata of the optical files: ``--product`` or flags.

    With ``--product`` the band map defaults to the product's six bands in its order
    (:data:`OPTICAL_BANDS` order: one six-band file, or one file per band); ``--bands`` may
    still describe another layout. ``--optical-scale``/``--optical-offset`` are refused with it.
    """
    if args.product is None:
        if args.bands is None:
            raise DeploymentError(
                f"Pass --bands (one name per optical file band, in file order: "
                f"{','.join(OPTICAL_BANDS)} or '-' to skip one) or --product NAME "
                f"({', '.join(PRODUCTS)})."
            )
        return (args.bands, 1.0 if args.optical_scale is None else args.optical_scale,
                0.0 if args.optical_offset is None else args.optical_offset, None)
    product = PRODUCTS[args.product]
    given = [flag for flag, value in (("--optical-scale", args.optical_scale),
                                      ("--optical-offset", args.optical_offset))
             if value is not None]
    if given:
        raise DeploymentError(
            f"--product {product.name} sets the scale ({product.scale:g}) and offset "
            f"({product.offset:g}); drop {' and '.join(given)}, or drop --product to give the "
            "scale and offset yourself."
        )
    return (OPTICAL_BANDS if args.bands is None else args.bands, product.scale,
            product.offset, product.nodata)


def _check_product(source: SceneSource, product: str) -> None:
    """Refuse a scene whose optical scale and offset are not those of ``product``."""
    expected = PRODUCTS[product]
    if (source.optical_scale, source.optical_offset) != (expected.scale, expected.offset):
        raise DeploymentError(
            f"The scene's optical scale {source.optical_scale:g} and offset "
            f"{source.optical_offset:g} are not those of product {product} "
            f"({expected.scale:g}, {expected.offset:g}); open it with the product's."
        )


def _check_reflectance(source: SceneSource) -> None:
    """Refuse a scene whose sampled optical values do not look like reflectance."""
    problem = reflectance_problem(sample_optical(source), source.optical_scale,
                                  source.optical_offset)
    if problem is not None:
        raise DeploymentError(f"{source.grid_path}: {problem}. --skip-reflectance-check "
                              "(DeployOptions(reflectance_check=False)) maps it anyway.")


def prepare_deployment(
    source: SceneSource, model_path: Path, options: DeployOptions,
    calibrator_path: str | os.PathLike[str] | None,
    region_vector_path: str | os.PathLike[str] | None,
    norm_stats: NormStats | str | os.PathLike[str] | None,
    inventory: InventoryOptions | None = None,
    out_dir: Path | None = None,
) -> DeploymentSetup:
    """Check every input (and ``out_dir``, when given), creating nothing; load the model.

    Arguments as in :func:`deploy_scene`.

    Raises:
        DeploymentError: for a bad parameter, model, calibrator, sensor mismatch, partial
            coverage, reflectance, output directory or inventory setting.
        SceneError: for a scene smaller than one window or without valid pixels.
    """
    calibrator = _load_calibrator(calibrator_path)
    plan = None if inventory is None else _plan_inventory(inventory, source, calibrator_path)
    if out_dir is not None:
        _check_out_dir(out_dir)
    info, runner, card = _prepare_model(model_path, options.patch_size, options.precision,
                                        options.backend, options.mc_passes)
    precision = runner.precision
    region_vector_path = None if region_vector_path is None else Path(region_vector_path)
    mode, region_vector = _check_inputs(source, info, options.coordinates, region_vector_path)
    stats = _norm_stats(norm_stats, model_path, card)
    check_stats(stats, info.sensors)
    reader = WindowReader(source, info.sensors, stats, info.patch_size, mode, region_vector)
    stride = _check_windows(source, info, options.stride)
    if options.product is not None:
        _check_product(source, options.product)
    if options.reflectance_check:
        _check_reflectance(source)
    coverage, notes = _check_coverage(source, info.sensors, options.allow_partial_coverage)
    return DeploymentSetup(options, precision, model_path, info, runner, reader, region_vector_path,
                  calibrator_path, calibrator, stride, coverage, notes, plan)


def _load_calibrator(path: str | os.PathLike[str] | None) -> Calibrator | None:
    """The calibrator of ``--calibrator`` (None without one), fully checked."""
    if path is None:
        return None
    try:
        return load_calibrator(path)
    except (FileNotFoundError, ValueError) as error:
        raise DeploymentError(f"--calibrator: {error}") from None


def _plan_inventory(inventory: InventoryOptions, source: SceneSource,
                    calibrator_path: str | os.PathLike[str] | None) -> _InventoryPlan:
    """Check what ``--inventory`` needs (date, calibrator, block size, outlines), creating nothing.

    Call after :func:`_load_calibrator` has checked the calibrator.
    """
    if source.date is None:
        raise DeploymentError(
            f"--inventory needs the scene's acquisition date (the layer's src_date) and "
            f"{source.grid_path} has no date tag; pass --date YYYY-MM-DD."
        )
    if calibrator_path is None:
        raise DeploymentError("--inventory needs calibrated confidence (the area intervals are "
                              "drawn from it); pass --calibrator JSON.")
    block_px, source_text = inventory.block_px, "--area-block-px"
    if block_px is None:
        block_px = _calibrator_block_px(Path(calibrator_path))
        source_text = f"calibrator ({AREA_ERRORS_KEY})"
    if block_px is None:
        raise DeploymentError(
            f"--inventory needs the block size of the area intervals and the calibrator "
            f"{calibrator_path} has no '{AREA_ERRORS_KEY}' record; pass a calibrator saved with "
            "one (chapter 05 writes outputs/<profile>/calibration/<model>.json) or "
            "--area-block-px N."
        )
    outlines = None if inventory.outlines is None else Path(inventory.outlines)
    if outlines is not None:
        _check_outlines(outlines, source.grid)
    return _InventoryPlan(outlines, float(inventory.max_distance_m), int(block_px), source_text,
                          _calibrator_area_errors(Path(calibrator_path))[1])


def _calibrator_area_errors(path: Path) -> tuple[BlockSize | None, AcquisitionShift | None]:
    """The block size and acquisition shift of the calibrator's ``area_errors`` record."""
    data = json.loads(path.read_text(encoding="utf-8"))
    try:
        return calibrator_block_size(data), calibrator_shift(data)
    except ValueError as error:
        raise DeploymentError(f"--calibrator: {path}: {error}") from None


def _calibrator_block_px(path: Path) -> int | None:
    """The block side of the calibrator's ``area_errors`` record, or None without one."""
    block = _calibrator_area_errors(path)[0]
    return None if block is None else block.block_px


def _check_outlines(path: Path, grid: Grid) -> None:
    """Check that ``path`` holds RGI outlines with a CRS, from its metadata (no geometry read)."""
    fix = "pass RGI 6.0 or 7.0 outlines, or --inventory alone to split the ice into components"
    if not path.exists():
        raise DeploymentError(f"--inventory {path} does not exist; {fix}.")
    try:
        info = pyogrio.read_info(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as error:
        raise DeploymentError(f"--inventory {path} cannot be read as vector data ({error}); "
                              f"{fix}.") from None
    # the library's own column and CRS checks, on a frame with the file's fields and no rows
    empty = gpd.GeoDataFrame({name: [] for name in info["fields"]}, geometry=[],
                             crs=info["crs"])
    try:
        split_by_inventory(np.zeros((1, 1), np.uint8), Grid(grid.crs, grid.transform, 1, 1),
                           empty)
    except InventoryError as error:
        raise DeploymentError(f"--inventory {path}: {error}") from None


def _input_flags(source: SceneSource) -> dict[str, str]:
    """The command-line option that supplied each input file."""
    flags: dict[str, str] = {}
    for sensor, channels in source.channels.items():
        for index, channel in enumerate(channels):
            if channel is not None:
                flag = "--slope" if sensor == "dem" and index == 1 else SENSOR_FLAGS[sensor]
                flags.setdefault(str(channel.path), flag)
    return flags


def _check_coverage(source: SceneSource, sensors: Sequence[str],
                    allow_partial: bool) -> tuple[dict[str, float], list[str]]:
    """Each input's coverage of the optical scene, and notes on partial ones.

    Raises:
        DeploymentError: naming every partly covering input, unless ``allow_partial``.
    """
    coverage = source.coverage(sensors)
    flags = _input_flags(source)
    partial = [f"{path} ({flags[path]}) covers {100 * fraction:.1f} % of the optical scene"
               for path, fraction in coverage.items() if fraction < FULL_COVERAGE]
    if partial and not allow_partial:
        raise DeploymentError(
            f"{'; '.join(partial)}: the map would be nodata elsewhere. Pass input files that "
            "cover the whole optical scene, or --allow-partial-coverage to map only the "
            "covered part."
        )
    notes = [f"{text}; pixels outside it are nodata (--allow-partial-coverage)."
             for text in partial]
    for note in notes:
        logger.warning(note)
    return {path: round(fraction, 6) for path, fraction in coverage.items()}, notes


def _prepare_model(model_path: Path, patch_size: int | None, precision: str,
                   backend: str = "tensorflow",
                   mc_passes: int = 0) -> tuple[_ModelInfo, Any, dict[str, Any]]:
    """The model's info, the runner of the chosen backend and the model's card.

    TensorFlow runs the model's inference copy
    (:func:`glacier_mapping.inference.inference_model`); the other backends load an export
    beside the model (:func:`glacier_mapping.runtime.load_backend`) without TensorFlow.
    """
    try:
        chosen = choose_backend(backend)
        if chosen != "tensorflow" and mc_passes:
            raise BackendError(f"--mc-passes {mc_passes} needs --backend tensorflow: the "
                               f"{chosen} export runs the model without dropout.")
        if chosen == "tensorflow":
            runner = tensorflow_backend.TensorFlowRunner(_load_model(model_path), precision)
        else:
            _check_model_file(model_path)
            runner = load_backend(str(model_path), chosen, precision)
    except (BackendError, ValueError) as error:
        raise DeploymentError(f"{model_path}: {error}") from None
    card = _model_card(model_path)
    return _model_info(runner.inputs, card, patch_size, model_path), runner, card


def _check_inputs(source: SceneSource, info: _ModelInfo, coordinates: bool | None,
                  region_vector_path: Path | None) -> tuple[str | None, np.ndarray | None]:
    """Check the scene has the model's sensors; the location mode and region vector."""
    missing = [sensor for sensor in info.sensors if sensor not in source.sensors]
    if missing:
        flags = ", ".join(f"{SENSOR_FLAGS[s]} FILE" for s in missing)
        raise DeploymentError(
            f"The model needs the {missing} input(s) but the scene lacks them; pass {flags}."
        )
    mode = _location_mode(info, region_vector_path, coordinates)
    region_vector = None
    if mode == "region":
        try:
            region_vector = adaptation.load_region_vector(region_vector_path).astype(np.float32)
        except (FileNotFoundError, ValueError) as error:
            raise DeploymentError(f"--region-vector: {error}") from None
    return mode, region_vector


def _norm_stats(norm_stats: NormStats | str | os.PathLike[str] | None, model_path: Path,
                card: dict[str, Any]) -> NormStats:
    """The given statistics (or their file), else the model's (:func:`_stats_from_card`)."""
    if isinstance(norm_stats, NormStats):
        return norm_stats
    if norm_stats is not None:
        return _stats_file(Path(norm_stats))
    return _stats_from_card(model_path, card)


def _check_windows(source: SceneSource, info: _ModelInfo, stride: int | None) -> int:
    """The window step, after checking it, the scene size and that the scene has data."""
    size = info.patch_size
    stride = max(int(size * DEFAULT_STRIDE_FRACTION), 1) if stride is None else stride
    if not 1 <= stride <= size:
        raise DeploymentError(f"--stride must be in [1, {size}] (at most the patch size), got "
                              f"{stride}.")
    height, width = source.shape
    if height < size or width < size:
        raise SceneError(
            f"{source.grid_path}: scene {source.name!r} is {height} x {width} pixels, smaller "
            f"than one {size} x {size} window; the minimum scene size for this model is {size} "
            f"x {size}: pass a larger --optical scene."
        )
    source.check_not_empty(info.sensors)
    return stride


def _summary(source: SceneSource, setup: DeploymentSetup, out_dir: Path,
             paths: dict[str, Path], totals: SceneTotals, raster_format: str,
             polygon_count: int, seconds: dict[str, float],
             inventory: dict[str, Any] | None) -> DeploymentSummary:
    """What the deployment wrote and measured."""
    notes = list(setup.notes)
    if setup.calibrator is None:
        notes.append("No calibrator: confidence.tif is uncalibrated and no IoU is estimated; "
                     "pass --calibrator JSON.")
        logger.warning(notes[-1])
    options, reader = setup.options, setup.reader
    product = None if options.product is None else PRODUCTS[options.product]
    if product is not None and product.note is not None:
        notes.append(f"--product {product.name}: {product.note}")
    height, width = source.shape
    return DeploymentSummary(
        scene=source.name, date=source.date, out_dir=str(out_dir),
        outputs={name: str(path) for name, path in paths.items()},
        inputs=source.inputs(), alignment=source.alignment,
        grid={"crs": source.grid.crs.to_string(), "transform": list(source.grid.transform)[:6],
              "height": height, "width": width},
        model={"path": str(setup.model_path), "sha256": file_digest(setup.model_path),
               "sensors": list(setup.info.sensors), "patch_size": setup.info.patch_size,
               "location": reader.mode, "norm_stats": reader.stats.source},
        calibrator=None if setup.calibrator_path is None else str(setup.calibrator_path),
        region_vector=(None if setup.region_vector_path is None
                       else str(setup.region_vector_path)),
        parameters={"tta": options.tta, "mc_passes": options.mc_passes, "stride": setup.stride,
                    "batch_size": options.batch_size, "precision": setup.precision,
                    "backend": setup.runner.backend,
                    "blend": options.blend, "prefetch": options.prefetch,
                    "raster_format": raster_format,
                    "allow_partial_coverage": options.allow_partial_coverage,
                    "product": options.product, "optical_scale": source.optical_scale,
                    "optical_offset": source.optical_offset,
                    "optical_nodata": source.optical_nodata,
                    "reflectance_check": options.reflectance_check,
                    "stac_item": options.stac_item,
                    "quality": None if source.quality is None else str(source.quality.path),
                    "quality_mask": (None if source.quality_mask is None
                                     else source.quality_mask.note)},
        pixels={"total": height * width, "valid": totals.valid,
                "glacier": totals.glacier, "windows": totals.windows},
        glacier_area_km2=float(totals.area_km2), polygon_count=polygon_count,
        estimated_iou=totals.estimated_iou(setup.calibrator),
        mean_confidence=totals.mean_confidence,
        seconds=seconds,
        peak_memory_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        notes=notes, coverage=setup.coverage, inventory=inventory,
    )


def _predict_and_write(source: SceneSource, setup: DeploymentSetup, paths: dict[str, Path],
                       progress: bool) -> tuple[SceneTotals, str, dict[str, float]]:
    """Map the scene row by row into the class and confidence rasters.

    Returns:
        The scene's totals, the rasters' format and the seconds spent predicting and writing.
    """
    plan = setup.plan()
    tiled = {name: paths[name].with_name(f".{name}.part-{os.getpid()}")
             for name in (CLASS_FILE, CONFIDENCE_FILE)}
    totals = SceneTotals(windows=len(window_origins(*source.shape, plan.patch_size,
                                                    plan.stride)))
    write_seconds = 0.0
    try:
        with rasterio.open(tiled[CLASS_FILE], "w",
                           **_raster_profile(source, "uint8", CLASS_NODATA)) as class_out, \
                rasterio.open(tiled[CONFIDENCE_FILE], "w",
                              **_raster_profile(source, "float32", np.nan)) as conf_out:
            for rows in mapped_rows(source, setup.runner, setup.reader, plan, setup.calibrator,
                                    totals, progress):
                tick = time.perf_counter()
                block = Window(0, rows.top, source.grid.width, len(rows.valid))
                class_out.write(rows.classes, 1, window=block)
                conf_out.write(rows.confidence, 1, window=block)
                write_seconds += time.perf_counter() - tick
                _pause_for_tests("predict")
        tick = time.perf_counter()
        raster_format = _to_cog(tiled[CLASS_FILE], paths[CLASS_FILE], "NEAREST")
        _pause_for_tests("cog")
        _to_cog(tiled[CONFIDENCE_FILE], paths[CONFIDENCE_FILE], "AVERAGE")
        write_seconds += time.perf_counter() - tick
    finally:
        for path in tiled.values():
            path.unlink(missing_ok=True)
    return totals, raster_format, {"predict": round(totals.predict_seconds, 3),
                                   "write": round(write_seconds, 3)}


class _UnionFind:
    """Disjoint sets of component ids."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        root = self.parent.setdefault(item, item)
        while root != self.parent[root]:
            root = self.parent[root]
        while item != root:
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, first: int, second: int) -> None:
        self.parent[self.find(first)] = self.find(second)


@dataclass
class _Polygons:
    """Completed glacier components of one strip."""

    geometries: list[Any]
    pixel_counts: list[int]
    mean_confidence: list[float]


class _Components:
    """Glacier components collected strip by strip, released once no later strip can grow them."""

    def __init__(self) -> None:
        self.sets = _UnionFind()
        self.pieces: dict[int, list[Any]] = {}
        self.pixel_count: dict[int, int] = {}
        self.conf_sum: dict[int, float] = {}

    def add_strip(self, labels: np.ndarray, count: int, offset: int, conf: np.ndarray,
                  glacier: np.ndarray, transform: Any) -> None:  # noqa: ANN401
        """Record the components of one labelled strip (ids shifted by ``offset``)."""
        flat = labels.ravel()
        sizes = np.bincount(flat, minlength=count + 1)
        sums = np.bincount(flat, weights=np.nan_to_num(conf).ravel(), minlength=count + 1)
        for local in range(1, count + 1):
            self.pixel_count[offset + local] = int(sizes[local])
            self.conf_sum[offset + local] = float(sums[local])
        for geometry, value in rasterio.features.shapes(labels, mask=glacier,
                                                        transform=transform):
            self.pieces.setdefault(offset + int(value), []).append(shape(geometry))

    def release(self, open_ids: np.ndarray) -> _Polygons:
        """Merge and remove every component not connected to ``open_ids``."""
        still_open = {self.sets.find(int(item)) for item in np.unique(open_ids[open_ids > 0])}
        groups: dict[int, list[int]] = {}
        for item in self.pieces:
            root = self.sets.find(item)
            if root not in still_open:
                groups.setdefault(root, []).append(item)
        done = _Polygons([], [], [])
        for members in groups.values():
            geometries = [g for member in members for g in self.pieces.pop(member)]
            merged = geometries[0] if len(geometries) == 1 else shapely.union_all(geometries)
            total = sum(self.pixel_count.pop(m) for m in members)
            done.geometries.append(merged)
            done.pixel_counts.append(total)
            done.mean_confidence.append(sum(self.conf_sum.pop(m) for m in members) / total)
            for member in members:  # no later strip can reach a released component
                self.sets.parent.pop(member, None)
        return done


def _vectorise(class_path: Path, conf_path: Path, strip_rows: int) -> Iterator[_Polygons]:
    """Yield, strip by strip, completed polygons of 4-connected glacier components.

    A component that reaches the bottom row of a strip stays open and is merged with the
    pieces that continue it in the next strip; memory holds one strip and the open components.
    """
    components = _Components()
    offset = 0
    previous_last: np.ndarray | None = None
    with rasterio.open(class_path) as classes, rasterio.open(conf_path) as confidences:
        for top in range(0, classes.height, strip_rows):
            window = Window(0, top, classes.width, min(strip_rows, classes.height - top))
            glacier = classes.read(1, window=window) == 1
            labels, count = ndimage.label(glacier)
            labels = labels.astype(np.int32)
            ids = np.where(labels > 0, labels + offset, 0)
            if previous_last is not None:
                touching = (previous_last > 0) & (ids[0] > 0)
                for above, below in set(zip(previous_last[touching], ids[0][touching],
                                            strict=True)):
                    components.sets.union(int(above), int(below))
            components.add_strip(labels, count, offset, confidences.read(1, window=window),
                                 glacier, classes.window_transform(window))
            last = top + int(window.height) >= classes.height
            yield components.release(np.zeros(1, np.int32) if last else ids[-1])
            previous_last = ids[-1]
            offset += count


def _not_a_record_count(record: logging.LogRecord) -> bool:
    """A log filter dropping pyogrio's "Created N records" note, and nothing else."""
    return re.fullmatch(r"Created \d+ records", record.getMessage()) is None


@contextmanager
def _no_record_counts() -> Iterator[None]:
    """Silence pyogrio's "Created N records" note during the block."""
    _PYOGRIO_LOG.addFilter(_not_a_record_count)
    try:
        yield
    finally:
        _PYOGRIO_LOG.removeFilter(_not_a_record_count)


def _write_polygons(strips: Iterator[_Polygons], source: SceneSource, estimated: float | None,
                    path: Path) -> int:
    """Write the outlines GeoPackage strip by strip, atomically; returns the polygon count."""
    crs = source.grid.crs
    metric = None
    if crs.is_geographic:
        outline = gpd.GeoSeries([shapely.box(*source.grid.bounds)], crs=crs)
        metric = outline.estimate_utm_crs()
    factor = 1.0 if crs.is_geographic else crs.linear_units_factor[1]
    written = 0
    with atomic_path(path) as temporary, _no_record_counts():
        for index, polygons in enumerate(strips):
            count = len(polygons.geometries)
            geometry = gpd.GeoSeries(polygons.geometries, crs=crs)
            area = (geometry.to_crs(metric) if metric is not None and count else geometry).area
            frame = gpd.GeoDataFrame(
                {
                    "glacier_id": np.arange(written + 1, written + count + 1, dtype=np.int64),
                    "area_km2": area.to_numpy(dtype=np.float64) * factor**2 / 1e6,
                    "pixel_count": np.asarray(polygons.pixel_counts, dtype=np.int64),
                    "mean_confidence": np.asarray(polygons.mean_confidence, dtype=np.float64),
                    "estimated_iou": np.full(count, np.nan if estimated is None else estimated),
                    "scene": np.array([source.name] * count, dtype=object),
                    "date": np.array([source.date or ""] * count, dtype=object),
                },
                geometry=geometry,
            )
            if index == 0 or count:
                frame.to_file(temporary, layer=POLYGON_LAYER, driver="GPKG",
                              mode="w" if index == 0 else "a")
            written += count
            _pause_for_tests("vectorise")
    return written


def _read_outlines(path: Path, grid: Grid) -> gpd.GeoDataFrame:
    """The outlines whose bounding boxes meet the scene's (all of them across the antimeridian)."""
    crs = pyogrio.read_info(path)["crs"]
    left, bottom, right, top = transform_bounds(grid.crs, crs, *grid.bounds, densify_pts=21)
    return gpd.read_file(path, bbox=(left, bottom, right, top) if left <= right else None)


def _scene_dem(source: SceneSource, strip_rows: int) -> np.ndarray | None:
    """The ``--dem`` elevation on the optical grid (NaN where nodata); None without a DEM."""
    if "dem" not in source.channels:
        return None
    height, width = source.shape
    dem = np.empty((height, width), dtype=np.float32)
    for top in range(0, height, strip_rows):
        rows = min(strip_rows, height - top)
        dem[top : top + rows] = source.physical_window(top, 0, rows, width, ["dem"])["dem"][..., 0]
    return dem


def _write_inventory(source: SceneSource, plan: _InventoryPlan, staged: dict[str, Path],
                     strip_rows: int) -> tuple[int, dict[str, Any]]:
    """Write the inventory layer from the staged rasters (read whole); its summary record."""
    grid = source.grid
    with rasterio.open(staged[CLASS_FILE]) as classes, \
            rasterio.open(staged[CONFIDENCE_FILE]) as confidences:
        glacier_class = classes.read(1)
        probability = glacier_probability(glacier_class, confidences.read(1))
    outlines = None if plan.outlines is None else _read_outlines(plan.outlines, grid)
    split = split_by_inventory(glacier_class, grid, outlines, plan.max_distance_m,
                               valid=glacier_class != CLASS_NODATA)
    del glacier_class, outlines
    layer, drawn = inventory_layer_and_draws(
        split, probability, grid, source.date, block_px=plan.block_px,
        dem=_scene_dem(source, strip_rows), zone_m=DEFAULT_ZONE_M, level=LEVEL, samples=SAMPLES,
        seed=AREA_SEED, shift=plan.shift)
    with _no_record_counts():
        write_layer(layer, staged[POLYGON_FILE])
    low, high = drawn.scene_interval(LEVEL)
    listed = (split.glaciers["origin"] == "inventory").to_numpy()
    has_ice = (split.glaciers["pixels"] > 0).to_numpy()
    return len(layer), {
        "outlines": None if plan.outlines is None else str(plan.outlines),
        "version": split.inventory, "max_distance_m": plan.max_distance_m,
        "block_px": plan.block_px, "block_source": plan.block_source,
        "logit_shift": None if plan.shift is None else plan.shift.to_json(),
        "zone_m": DEFAULT_ZONE_M, "level": LEVEL, "samples": SAMPLES, "seed": AREA_SEED,
        "glaciers": {"inventory_with_ice": int((listed & has_ice).sum()),
                     "new": int((~listed).sum()),
                     "inventory_without_ice": int((listed & ~has_ice).sum())},
        "expected_area_km2": drawn.scene_expected_km2, "area_low_km2": low,
        "area_high_km2": high, "notes": list(split.notes),
    }


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``glacier-mapping deploy`` options to ``parser``."""
    parser.add_argument("--optical", nargs="+", type=raster_location, metavar="FILE",
                        help="optical GeoTIFF/COG file(s) or URL(s) (https://, s3://, gs://: read "
                             "window by window); the first defines the output grid")
    parser.add_argument("--stac-item", metavar="JSON",
                        help="instead of --optical: a STAC item (path or URL) whose assets are "
                             "local files; bands by eo:bands common name, scale and offset from "
                             "raster:bands or the item's product")
    parser.add_argument("--bands",
                        help=f"comma-separated name of every optical file band, in file order: "
                             f"{','.join(OPTICAL_BANDS)} or '-' to skip a band (default with "
                             "--product: the product's six bands in this order)")
    parser.add_argument("--product", choices=list(PRODUCTS),
                        help="the optical files' product: sets the scale, offset and nodata "
                             "(drop --optical-scale/--optical-offset); one six-band file or one "
                             "file per band, blue to swir2 (e.g. Sentinel-2 B02,B03,B04,B08,B11,"
                             "B12; Landsat 8-9 B2-B7)")
    parser.add_argument("--optical-scale", type=float,
                        help="factor turning optical values into reflectance (default 1; e.g. "
                             "0.0001)")
    parser.add_argument("--optical-offset", type=float,
                        help="added after the scale: reflectance = value * scale + offset "
                             "(default 0; e.g. -0.1 for Sentinel-2 L2A since January 2022)")
    parser.add_argument("--quality", type=raster_location, metavar="FILE",
                        help="the product's quality band (Sentinel-2 SCL, Landsat QA_PIXEL; "
                             "needs --product): its cloud, shadow and no-data pixels become no "
                             "data (snow and ice are kept)")
    parser.add_argument("--skip-reflectance-check", action="store_true",
                        help="map even if the sampled optical values do not look like "
                             "reflectance (by default such a scene is refused)")
    parser.add_argument("--dem", type=raster_location, metavar="FILE", help="elevation (m)")
    parser.add_argument("--dem-item", metavar="JSON",
                        help="instead of --dem: a STAC item (path or URL) of the elevation, "
                             "e.g. a Copernicus DEM tile (asset dem, elevation or data)")
    parser.add_argument("--slope", type=raster_location, metavar="FILE",
                        help="slope (deg); derived from the DEM when omitted")
    parser.add_argument("--co-pol", type=raster_location, metavar="FILE",
                        help="co-pol linear sigma0, 2 bands (ascending, descending)")
    parser.add_argument("--cross-pol", type=raster_location, metavar="FILE",
                        help="cross-pol linear sigma0, 2 bands (ascending, descending)")
    parser.add_argument("--coherence", type=raster_location, metavar="FILE",
                        help="InSAR coherence, 2 bands (ascending, descending)")
    parser.add_argument("--thermal", type=raster_location, metavar="FILE",
                        help="brightness temperature (K)")
    parser.add_argument("--model", required=True, type=Path, metavar="PATH",
                        help="trained .keras model")
    parser.add_argument("--calibrator", type=Path, metavar="JSON", help="calibrator JSON")
    parser.add_argument("--region-vector", type=Path, metavar="JSON",
                        help="region vector JSON (models with a region input)")
    parser.add_argument("--coordinates", action=argparse.BooleanOptionalAction, default=None,
                        help="give window-centre coordinates (default: as the model needs)")
    parser.add_argument("--norm-stats", type=Path, metavar="JSON",
                        help="normalisation statistics overriding the model's")
    parser.add_argument("--tta", action="store_true", help="8-fold test-time augmentation")
    parser.add_argument("--mc-passes", type=int, default=0, metavar="N",
                        help="MC-dropout passes (0 = deterministic)")
    parser.add_argument("--patch-size", type=int, metavar="N", help="window size (default: model)")
    parser.add_argument("--stride", type=int, metavar="N",
                        help="window step (default: half the patch size; 3/4 of it is about "
                             "1.8x faster on large scenes at a small IoU cost)")
    parser.add_argument("--batch-size", type=int, default=8, metavar="N")
    parser.add_argument("--precision", choices=RUNTIME_PRECISIONS, default="auto",
                        help="inference precision; auto = bfloat16 where the hardware has it "
                             "(AVX-512 BF16/AMX CPU with TF_ENABLE_ONEDNN_OPTS=1, or a GPU of "
                             "compute capability >= 8.0), else float32; int8 needs a quantised "
                             "export (python -m glacier_mapping.runtime.quantise)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="tensorflow",
                        help="inference runtime (default tensorflow; auto = the fastest "
                             "installed one measured for this CPU's kind); onnxruntime and "
                             "openvino run a model exported beside the .keras file (made on "
                             "first use, again when the model changes) without TensorFlow and "
                             "cannot run --mc-passes")
    parser.add_argument("--blend", choices=BLENDS, default=DEFAULT_BLEND,
                        help=f"window weights (default {DEFAULT_BLEND}: Gaussian, sigma = patch/8; "
                             "original: the original implementation's wide Gaussian; uniform: "
                             "plain mean)")
    parser.add_argument("--allow-partial-coverage", action="store_true",
                        help="map a scene that an input (e.g. the DEM) covers only in part "
                             "(default: refuse it); the coverage is recorded in summary.json")
    parser.add_argument("--name", help="scene name (default: first optical file name)")
    parser.add_argument("--date", help="acquisition date YYYY-MM-DD (default: from file tags)")
    parser.add_argument("--inventory", nargs="?", const=True, metavar="OUTLINES",
                        help="write glaciers.gpkg as a glacier inventory: one outline per "
                             "glacier, split by these RGI 6.0/7.0 outlines (any CRS; without a "
                             "file: by connected components), WGS 84, RGI 7.0-style columns and "
                             "area intervals; needs --calibrator, the date and a block size. "
                             "Holds the whole scene in memory (about "
                             f"{INVENTORY_BYTES_PER_PIXEL} bytes per pixel)")
    parser.add_argument("--max-distance", type=float, metavar="M",
                        help="with --inventory: ice outside every outline but within M metres "
                             f"of one goes to the nearest (default {DEFAULT_MAX_DISTANCE_M:g})")
    parser.add_argument("--area-block-px", type=int, metavar="N",
                        help="with --inventory: block side (pixels) of the area intervals "
                             f"(default: the calibrator's '{AREA_ERRORS_KEY}' record)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")


def deploy_from_args(args: argparse.Namespace) -> int:
    """Run ``glacier-mapping deploy``; returns the exit code.

    2 for a usage or input error; 130 (SIGINT, Ctrl-C) or 143 (SIGTERM) when interrupted,
    after removing the run's partial files.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with _signal_handler(_interrupt):
            summary = run_deploy(args)
    except (SceneError, DeploymentError, StacError, FileNotFoundError, ValueError) as error:
        print(f"glacier-mapping deploy: error: {error}", file=sys.stderr)
        return 2
    except DeployInterrupted as stop:
        print(f"glacier-mapping deploy: interrupted by {signal.Signals(stop.signum).name}; "
              f"no partial outputs were left in {args.out} (rerun the command to map the "
              "scene).", file=sys.stderr)
        return 128 + stop.signum
    iou = "n/a" if summary.estimated_iou is None else f"{summary.estimated_iou:.3f}"
    print(f"{summary.scene}: {summary.glacier_area_km2:.2f} km2 of glacier in "
          f"{summary.polygon_count} polygons, estimated IoU {iou}; outputs in {summary.out_dir}")
    if summary.inventory is not None:
        record, counts = summary.inventory, summary.inventory["glaciers"]
        print(f"inventory: {counts['inventory_with_ice']} inventory glaciers with ice, "
              f"{counts['new']} new, {counts['inventory_without_ice']} without ice; expected "
              f"glacier area {record['expected_area_km2']:.2f} km2 "
              f"({100 * record['level']:g} % interval {record['area_low_km2']:.2f}-"
              f"{record['area_high_km2']:.2f})")
    return 0
