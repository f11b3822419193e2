"""Windowed inference with TensorFlow: blended sliding windows, test-time augmentation, MC dropout.

The window grid, blending and test-time transforms are TensorFlow-free
(:mod:`glacier_mapping.windows`, re-exported here); other runtimes are in
:mod:`glacier_mapping.runtime`.

Inference runs through one compiled ``tf.function`` per model (no Keras ``predict``, so no
input pipeline is built and torn down per call). A batch of windows is evaluated in pieces
of at most :data:`MAX_PIXELS_PER_CALL` pixels, which bounds activation memory (one 384 px
paper-size window adds about 0.4 GB to peak memory, eight at once about 3 GB with oneDNN).
Scene deployment and bfloat16 predictions run a copy of the model with BatchNormalization
folded into the convolutions (:func:`inference_model`). ``precision="bfloat16"`` runs that
copy under the Keras ``mixed_bfloat16`` policy (outputs stay float32); it pays off only where
the hardware has bfloat16 arithmetic (CPUs with AVX-512 BF16 or AMX with TensorFlow's oneDNN
optimisations on, GPUs of compute capability 8.0 or newer), which ``precision="auto"``
detects.
"""

from __future__ import annotations

import functools
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from typing import Any

import keras
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor used for CRS metadata)
import tensorflow as tf
import xarray as xr

from glacier_mapping.data.schema import GLACIER_CLASS
from glacier_mapping.machine import cpu_flags
from glacier_mapping.models import set_mc_dropout
from glacier_mapping.models.folding import folded_clone, folding_copier, folding_pairs
from glacier_mapping.windows import BLENDS as BLENDS
from glacier_mapping.windows import DEFAULT_BLEND as DEFAULT_BLEND
from glacier_mapping.windows import NARROW_SIGMA_FRACTION as NARROW_SIGMA_FRACTION
from glacier_mapping.windows import ORIGINAL_SIGMA as ORIGINAL_SIGMA
from glacier_mapping.windows import BlendedRows as BlendedRows
from glacier_mapping.windows import WindowBlender as WindowBlender
from glacier_mapping.windows import blending_window as blending_window
from glacier_mapping.windows import dihedral, inverse_dihedral, select_inputs
from glacier_mapping.windows import narrow_window as narrow_window
from glacier_mapping.windows import original_window as original_window
from glacier_mapping.windows import window_origins as window_origins

OUTPUT_HEAD = "output"
CLASS_NAMES: tuple[str, ...] = ("background", "glacier")

#: Inference precisions; ``auto`` is ``bfloat16`` where the hardware supports it.
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "auto")
#: Most window pixels one compiled model call evaluates (one 384 px window). Larger batches are
#: evaluated in pieces. Measured on the 2-core development CPU (oneDNN on), a paper-size window
#: took the same 1.5 s alone as within a batch of 8, while peak RSS was 1.3 GB for one window
#: and 3.9 GB for a batch of 8.
MAX_PIXELS_PER_CALL = 384 * 384
#: Layers whose bfloat16 copy stores its weights in bfloat16: under ``mixed_bfloat16`` they cast
#: them to bfloat16 before every use anyway, so the results are the same with one cast less
#: per layer and call (paper window: 0.79 s instead of 0.82 s, 0.73 instead of 0.77 s).
_BFLOAT16_WEIGHT_LAYERS = (keras.layers.Conv2D, keras.layers.Dense)
#: CPU flags of native bfloat16 arithmetic (x86).
_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

logger = logging.getLogger(__name__)

_COMPILED: weakref.WeakKeyDictionary[keras.Model, Callable[..., Any]] = weakref.WeakKeyDictionary()
#: model -> precision -> (its inference copy, compiled copy of the model's weights into it)
_INFERENCE_COPIES: weakref.WeakKeyDictionary[
    keras.Model, dict[str, tuple[keras.Model, Callable[[], None]]]
] = weakref.WeakKeyDictionary()


def predict_windows(
    model: keras.Model,
    batch: Mapping[str, np.ndarray],
    tta: bool = False,
    mc_passes: int = 0,
    location: np.ndarray | None = None,
) -> np.ndarray:
    """Predict class probabilities of a batch of square windows.

    The batch runs through the model's compiled function in pieces of at most
    :data:`MAX_PIXELS_PER_CALL` window pixels. For bfloat16, pass the model returned by
    :func:`inference_model`.

    Args:
        model: Keras model with dict inputs and a dict output with an ``"output"`` entry.
        batch: Sensor name -> ``(B, P, P, C)`` arrays (inputs the model lacks are ignored).
        tta: Average over the 8 dihedral transforms (rotations by 90 degrees, with and
            without a flip), each inverted before averaging.
        mc_passes: If > 0, average this many passes with MC dropout on (via
            ``glacier_mapping.models.set_mc_dropout``); 0 runs the model deterministically.
        location: Location vector ``(L,)`` repeated for every window, or ``(B, L)``.

    Returns:
        float32 probabilities ``(B, P, P, classes)``.
    """
    if mc_passes < 0:
        raise ValueError(f"mc_passes must be >= 0, got {mc_passes}.")
    inputs = _model_inputs(model, batch, location)
    if mc_passes == 0:
        return _average_transforms(model, inputs, tta)
    total = sum(_mc_dropout_passes(model, inputs, tta, mc_passes))
    return (total / np.float32(mc_passes)).astype(np.float32)


def predict_windows_spread(
    model: keras.Model,
    batch: Mapping[str, np.ndarray],
    mc_passes: int,
    tta: bool = False,
    location: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities of MC-dropout passes and the spread of their glacier probability.

    Arguments as in :func:`predict_windows`; ``mc_passes`` must be at least 2.

    Returns:
        float32 mean probabilities ``(B, P, P, classes)`` (those of :func:`predict_windows`)
        and the standard deviation of the glacier probability over the passes ``(B, P, P)``.
    """
    if mc_passes < 2:
        raise ValueError(f"The MC-dropout spread needs mc_passes >= 2, got {mc_passes}.")
    inputs = _model_inputs(model, batch, location)
    total = squares = None
    for probs in _mc_dropout_passes(model, inputs, tta, mc_passes):
        glacier = probs[..., GLACIER_CLASS].astype(np.float64)
        total = probs if total is None else total + probs
        squares = glacier**2 if squares is None else squares + glacier**2
    mean = (total / np.float32(mc_passes)).astype(np.float32)
    glacier_mean = mean[..., GLACIER_CLASS].astype(np.float64)
    variance = np.maximum(squares / mc_passes - glacier_mean**2, 0.0)
    # sample standard deviation over the passes
    return mean, np.sqrt(variance * mc_passes / (mc_passes - 1)).astype(np.float32)


def _mc_dropout_passes(model: keras.Model, inputs: dict[str, np.ndarray], tta: bool,
                       passes: int) -> Iterator[np.ndarray]:
    """The probabilities of ``passes`` runs with MC dropout on, one run at a time."""
    set_mc_dropout(model, True)
    try:
        for _ in range(passes):
            yield _average_transforms(model, inputs, tta)
    finally:
        set_mc_dropout(model, False)


def predict_heads(model: keras.Model, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Predict every output head's probabilities of a batch of windows, deterministically.

    Runs the compiled function :func:`predict_windows` uses, so validation during training
    traces nothing that the model's later predictions would not trace anyway.

    Args:
        model: Keras model with dict inputs and a dict output with an ``"output"`` entry.
        batch: Input name -> ``(B, ...)`` arrays, including the location input if the model
            takes one (inputs the model lacks are ignored).

    Returns:
        Head name -> float32 probabilities ``(B, P, P, classes)``.
    """
    inputs = _model_inputs(model, batch, None)
    outputs = model.output
    heads = tuple(outputs) if isinstance(outputs, dict) else (OUTPUT_HEAD,)
    return _call_in_pieces(_compiled(model), inputs, heads)


def predict_array(
    model: keras.Model,
    features: Mapping[str, np.ndarray],
    patch_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    tta: bool = False,
    mc_passes: int = 0,
    location: np.ndarray | None = None,
    precision: str = "float32",
    blend: str = DEFAULT_BLEND,
) -> np.ndarray:
    """Predict class probabilities of a whole image with blended sliding windows.

    Windows of ``patch_size`` start every ``stride`` pixels, and the last row and column of
    windows are shifted flush to the image edge. An image smaller than one patch is
    zero-padded at the bottom/right to a full patch (the model sees zeros there, as in the
    benchmark's padded tiles) and the result is cropped back. Window probabilities are
    blended by :class:`WindowBlender`, as in scene deployment.

    Args:
        model: Keras model with dict inputs and a dict output with an ``"output"`` entry.
        features: Sensor name -> ``(H, W, C)`` arrays of the same height and width.
        patch_size: Window side in pixels (the model's training patch size).
        stride: Window step; default half a patch (``patch_size // 2``, at least 1).
        batch_size: Windows per model call.
        tta: 8-fold dihedral test-time augmentation (about 8 times slower).
        mc_passes: MC dropout passes to average; 0 for a deterministic prediction.
        location: Location vector ``(L,)`` given to every window, if the model takes one.
        precision: ``float32``, ``bfloat16`` or ``auto`` (see :func:`resolve_precision`).
        blend: Window weights, one of :data:`BLENDS` (see :func:`blending_window`).

    Returns:
        float32 probabilities ``(H, W, classes)``.
    """
    if patch_size < 1 or batch_size < 1:
        raise ValueError(
            f"patch_size and batch_size must be >= 1, got {patch_size} and {batch_size}."
        )
    blending_window(1, blend)  # checks the name before any work
    runner = inference_model(model, precision)
    stride = max(patch_size // 2, 1) if stride is None else stride
    height, width = _image_shape(features)
    padded = {
        name: _pad_to(np.asarray(array, dtype=np.float32), patch_size)
        for name, array in features.items()
    }
    padded_height, padded_width = next(iter(padded.values())).shape[:2]
    blender = WindowBlender(padded_height, padded_width, patch_size, stride, blend)
    finished = []
    for chunk in _chunks(blender.origins, batch_size):
        windows = {
            name: np.stack([array[r : r + patch_size, c : c + patch_size] for r, c in chunk])
            for name, array in padded.items()
        }
        probs = predict_windows(runner, windows, tta=tta, mc_passes=mc_passes, location=location)
        for window_probs, (row, col) in zip(probs, chunk, strict=True):
            rows = blender.add(window_probs, row, col)
            if rows is not None:
                finished.append(rows.probs)
    return np.concatenate(finished)[:height, :width]


def resolve_precision(precision: str) -> str:
    """Return the precision to run: ``auto`` becomes ``bfloat16`` where it is fast.

    Raises:
        ValueError: For a name outside :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {list(PRECISIONS)}.")
    if precision != "auto":
        return precision
    return "bfloat16" if bfloat16_supported() else "float32"


def bfloat16_supported() -> bool:
    """Whether bfloat16 inference should beat float32 here.

    True with a GPU of compute capability 8.0 or newer, or on a CPU with AVX-512 BF16 or AMX
    when TensorFlow's oneDNN optimisations are on (``TF_ENABLE_ONEDNN_OPTS`` unset or 1 before
    TensorFlow is imported); without oneDNN, bfloat16 runs on slow generic kernels.
    """
    for device in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(device).get("compute_capability")
        if capability and capability >= (8, 0):
            return True
    return onednn_enabled() and bool(set(_BF16_CPU_FLAGS) & cpu_flags())


def onednn_enabled() -> bool:
    """Whether TensorFlow runs with its oneDNN optimisations (read when it was imported)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
    except ImportError:  # pragma: no cover - a TensorFlow without this module
        value = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower()
        return value not in ("0", "false", "off")
    return bool(_pywrap_util_port.IsMklEnabled())


def inference_model(
    model: keras.Model, precision: str = "float32", fold: bool = False
) -> keras.Model:
    """Return the model to run at ``precision``: a copy made for inference, or ``model`` itself.

    The copy (one per model and precision, cached) has every BatchNormalization that follows
    a convolution folded into that convolution (:mod:`glacier_mapping.models.folding`), so
    oneDNN runs convolution, bias and LeakyReLU as one operation (a float32 paper-size window:
    1.32 s instead of 1.39 s in alternating calls on 2 cores). A float32 copy is made only with
    ``fold``: cloning and tracing it costs 1-3 s, which a scene repays but a few tiles do not
    (the model's own compiled function, traced for validation, serves them). For ``bfloat16``
    every layer of the copy runs under the ``mixed_bfloat16`` policy (convolutions and dense
    layers under ``bfloat16``: the same arithmetic with their weights stored in bfloat16)
    except the layers that produce the model's outputs, which stay float32, so the
    probabilities are float32. The copy's weights are refreshed from ``model`` on every call
    (about 10 ms for the paper model), so training ``model`` further never leaves a stale
    copy. A float32 model with nothing to fold, or one that is not functional, is returned as
    it is.

    Args:
        model: A Keras model (functional for bfloat16).
        precision: ``float32``, ``bfloat16`` or ``auto``.
        fold: Also for float32, return the folded copy (for long runs such as scenes).

    Raises:
        ValueError: For an unknown precision or a bfloat16 request on a non-functional model.
    """
    chosen = resolve_precision(precision)
    if precision == "bfloat16" and not bfloat16_supported():
        _warn_slow_bfloat16()
    functional = isinstance(model, keras.Model) and bool(getattr(model, "outputs", None))
    if chosen == "float32" and not (fold and functional and folding_pairs(model)):
        return model
    if not functional:
        raise ValueError("precision='bfloat16' needs a functional Keras model; use 'float32'.")
    copies = _INFERENCE_COPIES.setdefault(model, {})
    if chosen not in copies:
        copy = _inference_copy(model, chosen)
        copies[chosen] = (copy, folding_copier(model, copy))
    copy, copy_weights = copies[chosen]
    copy_weights()
    return copy


@cache
def _warn_slow_bfloat16() -> None:
    """Warn once per process that bfloat16 runs without hardware support."""
    logger.warning(
        "precision='bfloat16' without native bfloat16 support (a GPU of compute capability "
        ">= 8.0, or an AVX-512 BF16/AMX CPU with TF_ENABLE_ONEDNN_OPTS=1 set before "
        "TensorFlow is imported) is usually slower than float32."
    )


def _inference_copy(model: keras.Model, precision: str) -> keras.Model:
    """Folded clone of a functional model; for bfloat16 with float32 output layers."""
    keep = {id(tensor._keras_history[0]) for tensor in model.outputs}

    def policy(layer: keras.Layer) -> str | None:
        if precision == "float32" or id(layer) in keep:
            return None
        if isinstance(layer, keras.layers.InputLayer):
            return None
        return "bfloat16" if isinstance(layer, _BFLOAT16_WEIGHT_LAYERS) else "mixed_bfloat16"

    try:
        return folded_clone(model, policy)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise ValueError(
            f"Cannot build a {precision} inference copy of model {model.name!r} ({error}); use "
            "precision='float32'."
        ) from None


def predict_dataarray(
    model: keras.Model,
    data: Mapping[str, xr.DataArray],
    patch_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    tta: bool = False,
    mc_passes: int = 0,
    location: np.ndarray | None = None,
    precision: str = "float32",
    blend: str = DEFAULT_BLEND,
) -> xr.DataArray:
    """Predict class probabilities of georeferenced ``(y, x, band)`` arrays.

    Arguments as in :func:`predict_array`; every array must have dims ``y``, ``x`` and
    ``band`` and share the same ``y``/``x`` coordinates.

    Returns:
        float32 probabilities with dims ``(y, x, class)``, the input's ``y``/``x``
        coordinates, class names ``background``/``glacier``, and the input's CRS when it has
        rioxarray metadata.
    """
    if not data:
        raise ValueError("data is empty; pass at least one sensor array.")
    reference_name, reference = next(iter(data.items()))
    features = {}
    for name, array in data.items():
        if set(array.dims) != {"y", "x", "band"}:
            raise ValueError(
                f"data[{name!r}] has dims {array.dims}; expected ('y', 'x', 'band') "
                "(rename or expand_dims first)."
            )
        for axis in ("y", "x"):
            if not np.array_equal(array[axis].values, reference[axis].values):
                raise ValueError(
                    f"data[{name!r}] and data[{reference_name!r}] differ in their {axis} "
                    "coordinates; reproject/align them to one grid first."
                )
        features[name] = array.transpose("y", "x", "band").values
    probs = predict_array(
        model,
        features,
        patch_size,
        stride=stride,
        batch_size=batch_size,
        tta=tta,
        mc_passes=mc_passes,
        location=location,
        precision=precision,
        blend=blend,
    )
    result = xr.DataArray(
        probs,
        dims=("y", "x", "class"),
        coords={
            "y": reference["y"].values,
            "x": reference["x"].values,
            "class": list(CLASS_NAMES[: probs.shape[-1]]),
        },
        name="probability",
    )
    crs = reference.rio.crs
    if crs is not None:
        result = result.rio.write_crs(crs).rio.write_transform(reference.rio.transform())
    return result


def _image_shape(features: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """Return the common ``(H, W)`` of the feature arrays, checking their shapes."""
    if not features:
        raise ValueError("features is empty; pass at least one sensor array (H, W, C).")
    shapes = {name: np.shape(array) for name, array in features.items()}
    bad = {name: shape for name, shape in shapes.items() if len(shape) != 3}
    if bad:
        raise ValueError(f"features must be (H, W, C) arrays; got shapes {bad}.")
    sizes = {shape[:2] for shape in shapes.values()}
    if len(sizes) != 1:
        raise ValueError(f"features differ in height/width: {shapes}; align them first.")
    return sizes.pop()


def _pad_to(array: np.ndarray, patch_size: int) -> np.ndarray:
    """Zero-pad an ``(H, W, C)`` array at the bottom/right to at least one patch."""
    pad_rows = max(patch_size - array.shape[0], 0)
    pad_cols = max(patch_size - array.shape[1], 0)
    if pad_rows == 0 and pad_cols == 0:
        return array
    return np.pad(array, ((0, pad_rows), (0, pad_cols), (0, 0)))


def _chunks(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    """Yield consecutive chunks of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _model_inputs(
    model: keras.Model, batch: Mapping[str, np.ndarray], location: np.ndarray | None
) -> dict[str, np.ndarray]:
    """Select the model's inputs from ``batch`` and attach the location vector."""
    names = list(model.input) if isinstance(model.input, dict) else []
    return select_inputs(names, batch, location)


def _compiled(model: keras.Model) -> Callable[..., Any]:
    """Return the model's cached compiled inference function (one per model, all heads).

    It returns every output head (the deep-supervision head costs one 1 x 1 convolution), so
    validation during training (:func:`predict_heads`) and later predictions share one trace.
    """
    function = _COMPILED.get(model)
    if function is None:
        model_ref = weakref.ref(model)  # a strong reference would keep the cache entry alive
        # One trace per model: the batch dimension is left open, so the last, smaller batch of
        # a scene does not retrace (each trace costs seconds).
        signature = {
            name: tf.TensorSpec((None, *tensor.shape[1:]), tf.float32)
            for name, tensor in model.input.items()
        } if isinstance(model.input, dict) else None

        # A partial, not a closure: TensorFlow's retracing detector keys a function by its
        # code, so one code object for every model would warn about one trace per model.
        function = tf.function(functools.partial(_model_outputs, model_ref),
                               input_signature=None if signature is None else [signature])
        _COMPILED[model] = function
    return function


def _model_outputs(
    model_ref: weakref.ref[keras.Model], inputs: dict[str, tf.Tensor]
) -> dict[str, tf.Tensor]:
    """All output heads of the referenced model, in inference mode."""
    outputs = model_ref()(inputs, training=False)
    if not isinstance(outputs, dict) or OUTPUT_HEAD not in outputs:
        raise ValueError(f"The model must return a dict with an {OUTPUT_HEAD!r} entry.")
    return outputs


def _call_in_pieces(
    function: Callable[..., Any], inputs: dict[str, np.ndarray], heads: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Run ``function`` on pieces of at most :data:`MAX_PIXELS_PER_CALL` window pixels."""
    count = next(iter(inputs.values())).shape[0]
    pixels = max((array.shape[1] * array.shape[2] for array in inputs.values() if array.ndim == 4),
                 default=1)
    step = max(MAX_PIXELS_PER_CALL // pixels, 1)
    pieces = [function({name: array[start : start + step] for name, array in inputs.items()})
              for start in range(0, count, step)]
    return {head: np.concatenate([np.asarray(piece[head], dtype=np.float32) for piece in pieces])
            if len(pieces) > 1 else np.asarray(pieces[0][head], dtype=np.float32)
            for head in heads}


def _average_transforms(model: keras.Model, inputs: dict[str, np.ndarray], tta: bool) -> np.ndarray:
    """Run the model once, or over the 8 dihedral transforms averaged after inversion."""
    function = _compiled(model)
    if not tta:
        return _call_in_pieces(function, inputs, (OUTPUT_HEAD,))[OUTPUT_HEAD]
    total = None
    for turns in range(4):
        for flip in (False, True):
            transformed = {
                name: dihedral(array, turns, flip) if array.ndim == 4 else array
                for name, array in inputs.items()
            }
            probs = _call_in_pieces(function, transformed, (OUTPUT_HEAD,))[OUTPUT_HEAD]
            restored = inverse_dihedral(probs, turns, flip)
            total = restored if total is None else total + restored
    return total / np.float32(8.0)
