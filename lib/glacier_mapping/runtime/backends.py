"""The inference backend interface: a runner that maps batches of windows to probabilities.

A :class:`Runner` takes the dict of sensor windows ``(B, P, P, C)`` (float32) and an optional
location vector and returns probabilities ``(B, P, P, classes)``, with optional 8-fold
dihedral test-time augmentation; only the TensorFlow runner can run MC dropout. The
ONNX Runtime and OpenVINO runners load the exports of :mod:`glacier_mapping.runtime.artifacts`
and are imported only when chosen, so a process running them never imports TensorFlow.

``auto`` takes the first installed backend of :data:`AUTO_ORDER` for this CPU's kind
(:func:`glacier_mapping.machine.instruction_set_kind`), an order measured with
``benchmarks/bench_backends.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from glacier_mapping.lazy import lazy_module
from glacier_mapping.machine import cpu_flags, instruction_set_kind
from glacier_mapping.runtime.artifacts import BackendError, ExportedModel, ensure_export
from glacier_mapping.windows import WindowBlender, dihedral, inverse_dihedral, select_inputs

models = lazy_module("glacier_mapping.models")
onnx_backend = lazy_module("glacier_mapping.runtime.onnx_backend")
openvino_backend = lazy_module("glacier_mapping.runtime.openvino_backend")
tensorflow_backend = lazy_module("glacier_mapping.runtime.tensorflow_backend")

#: Backends, each with the Python package it needs.
BACKENDS: dict[str, str] = {"tensorflow": "tensorflow", "onnxruntime": "onnxruntime",
                            "openvino": "openvino"}
#: Values of ``--backend``.
BACKEND_CHOICES: tuple[str, ...] = ("auto", *BACKENDS)
#: Precisions a backend may be asked for (``auto``: the fastest that keeps float32 accuracy).
RUNTIME_PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "int8", "auto")
#: Precisions each backend runs.
SUPPORTED_PRECISIONS: dict[str, tuple[str, ...]] = {
    "tensorflow": ("float32", "bfloat16"),
    "onnxruntime": ("float32", "int8"),
    "openvino": ("float32", "bfloat16", "int8"),
}
#: ``auto``'s preference per CPU kind (float32, ``benchmarks/bench_backends.py``, paper-size
#: scene on a 2-core AVX-512 Xeon, 2026-12-06): OpenVINO had the lowest peak memory (0.83 GB
#: against 1.01 GB for ONNX Runtime and 1.45-1.50 GB for TensorFlow) and was the fastest in two
#: of three rounds (ONNX Runtime by 6 % in the third); under ``ONEDNN_MAX_CPU_ISA=AVX2`` and
#: ``OV_CPU_MAX_ISA=AVX2`` it took 106-169 s against TensorFlow's 275-286 s (ONNX Runtime cannot
#: be limited to AVX2, so it has no AVX2 figure).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "AVX-512": ("openvino", "onnxruntime", "tensorflow"),
    "AVX2-only": ("openvino", "onnxruntime", "tensorflow"),
}
#: CPU flags of native bfloat16 arithmetic (x86).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class Runner(Protocol):
    """What deployment needs of a backend."""

    backend: str
    precision: str
    #: Input name -> shape of one sample (``(P, P, C)`` for sensors, ``(L,)`` for location).
    inputs: dict[str, tuple[int, ...]]

    def predict(self, batch: Mapping[str, np.ndarray], location: np.ndarray | None = None,
                tta: bool = False, mc_passes: int = 0) -> np.ndarray:
        """Probabilities ``(B, P, P, classes)`` of a batch of windows."""

    def predict_spread(self, batch: Mapping[str, np.ndarray], mc_passes: int,
                       location: np.ndarray | None = None,
                       tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mean probabilities and the MC-dropout spread of the glacier probability."""


class ExportedRunner:
    """Shared part of the runners of exported models: input checks, pieces, TTA.

    Subclasses set :attr:`backend` and implement :meth:`_run` on at most
    :attr:`windows_per_call` windows.
    """

    backend = ""
    windows_per_call = 1

    def __init__(self, exported: ExportedModel, precision: str) -> None:
        self.exported = exported
        self.precision = precision
        self.inputs = dict(exported.inputs)

    def predict(self, batch: Mapping[str, np.ndarray], location: np.ndarray | None = None,
                tta: bool = False, mc_passes: int = 0) -> np.ndarray:
        """Probabilities ``(B, P, P, classes)`` of a batch of windows.

        Args:
            batch: Sensor name -> ``(B, P, P, C)`` arrays (inputs the model lacks are ignored).
            location: Location vector ``(L,)`` for every window, or ``(B, L)``.
            tta: Average over the 8 dihedral transforms, each inverted before averaging.
            mc_passes: Must be 0: exported models run without dropout.

        Raises:
            BackendError: for ``mc_passes > 0``.
            ValueError: for missing inputs or inconsistent batch sizes.
        """
        if mc_passes:
            self._refuse_mc_dropout(mc_passes)
        inputs = select_inputs(list(self.inputs), batch, location)
        if not tta:
            return self._in_pieces(inputs)
        total = None
        for turns in range(4):
            for flip in (False, True):
                transformed = {name: dihedral(array, turns, flip) if array.ndim == 4 else array
                               for name, array in inputs.items()}
                probs = inverse_dihedral(self._in_pieces(transformed), turns, flip)
                total = probs if total is None else total + probs
        return total / np.float32(8.0)

    def predict_spread(self, batch: Mapping[str, np.ndarray], mc_passes: int,
                       location: np.ndarray | None = None,
                       tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Refused: exported models run without dropout (:meth:`_refuse_mc_dropout`)."""
        self._refuse_mc_dropout(mc_passes)

    def _refuse_mc_dropout(self, mc_passes: int) -> None:
        """Raise the error of an MC-dropout request.

        Raises:
            BackendError: always.
        """
        raise BackendError(
            f"--mc-passes {mc_passes} needs --backend tensorflow: the {self.backend} export "
            "runs the model without dropout."
        )

    def _in_pieces(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Run :meth:`_run` on pieces of at most :attr:`windows_per_call` windows."""
        count = next(iter(inputs.values())).shape[0]
        step = self.windows_per_call
        pieces = [self._run({name: np.ascontiguousarray(array[start : start + step])
                             for name, array in inputs.items()})
                  for start in range(0, count, step)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """float32 probabilities of at most :attr:`windows_per_call` windows."""
        raise NotImplementedError


def predict_image(runner: Runner, features: Mapping[str, np.ndarray], batch_size: int = 8,
                  stride: int | None = None) -> np.ndarray:
    """Blended probabilities ``(H, W, classes)`` of an image at least one window in size.

    The windows of :class:`glacier_mapping.windows.WindowBlender` (the scene loop's blending),
    ``batch_size`` per call; ``stride`` defaults to half a window. Used to score runners on
    benchmark tiles without TensorFlow.
    """
    size = next(shape[0] for name, shape in runner.inputs.items() if len(shape) == 3)
    height, width = next(iter(features.values())).shape[:2]
    blender = WindowBlender(height, width, size, stride or max(size // 2, 1))
    finished = []
    for start in range(0, len(blender.origins), batch_size):
        chunk = blender.origins[start : start + batch_size]
        windows = {name: np.stack([array[r : r + size, c : c + size] for r, c in chunk])
                   for name, array in features.items()}
        for probs, (row, col) in zip(runner.predict(windows), chunk, strict=True):
            rows = blender.add(probs, row, col)
            if rows is not None:
                finished.append(rows.probs)
    return np.concatenate(finished)


def installed(backend: str) -> bool:
    """Whether the package of ``backend`` can be imported (without importing it)."""
    return importlib.util.find_spec(BACKENDS[backend]) is not None


def choose_backend(name: str) -> str:
    """The backend to run for ``--backend NAME``: ``auto`` picks by :data:`AUTO_ORDER`.

    Raises:
        BackendError: for an unknown name or a backend whose package is not installed.
    """
    if name not in BACKEND_CHOICES:
        raise BackendError(f"--backend {name!r} is not one of {list(BACKEND_CHOICES)}.")
    if name == "auto":
        kind = "AVX-512" if instruction_set_kind() == "AVX-512" else "AVX2-only"
        return next(backend for backend in AUTO_ORDER[kind] if installed(backend))
    if not installed(name):
        raise BackendError(
            f"--backend {name} needs the Python package {BACKENDS[name]!r}, which is not "
            f"installed; pip install {BACKENDS[name]} (pinned in pyproject.toml) or choose "
            "another backend."
        )
    return name


def resolve_runtime_precision(backend: str, precision: str) -> str:
    """The precision ``backend`` runs for ``precision`` (``auto``: bfloat16 where native).

    TensorFlow keeps its own rule (:func:`glacier_mapping.inference.resolve_precision`, applied
    by its runner); ``auto`` never picks int8, which is accepted per model (see
    :mod:`glacier_mapping.runtime.quantise`).

    Raises:
        BackendError: for a precision the backend does not run.
    """
    if precision not in RUNTIME_PRECISIONS:
        raise BackendError(f"--precision {precision!r} is not one of {list(RUNTIME_PRECISIONS)}.")
    if backend == "tensorflow" or precision != "auto":
        if precision not in (*SUPPORTED_PRECISIONS[backend], "auto"):
            raise BackendError(
                f"--backend {backend} does not run --precision {precision}; choose one of "
                f"{list(SUPPORTED_PRECISIONS[backend])}."
            )
        return precision
    native = bool(set(BF16_CPU_FLAGS) & cpu_flags())
    return "bfloat16" if native and "bfloat16" in SUPPORTED_PRECISIONS[backend] else "float32"


def load_backend(model_path: str, name: str = "auto", precision: str = "float32") -> Runner:
    """A runner of the ``.keras`` model at ``model_path`` on backend ``name``.

    The non-TensorFlow backends export the model beside the file first if needed
    (:func:`glacier_mapping.runtime.artifacts.ensure_export`).

    Args:
        model_path: A ``.keras`` model of this library.
        name: One of :data:`BACKEND_CHOICES`.
        precision: One of :data:`RUNTIME_PRECISIONS`.

    Raises:
        BackendError: for an unknown or missing backend, an unsupported precision or a failed
            export.
    """
    backend = choose_backend(name)
    chosen = resolve_runtime_precision(backend, precision)
    if backend == "tensorflow":
        return tensorflow_backend.TensorFlowRunner(models.load_model(model_path), chosen)
    fmt = "onnx" if backend == "onnxruntime" else "openvino"
    return load_exported(ensure_export(model_path, fmt, quantised=chosen == "int8"), chosen)


def load_exported(exported: ExportedModel, precision: str) -> ExportedRunner:
    """The runner of an export: ONNX Runtime for ONNX files, OpenVINO for IR."""
    if exported.format == "onnx":
        return onnx_backend.OnnxRunner(exported, precision)
    return openvino_backend.OpenVinoRunner(exported, precision)
