"""Exported model files beside a ``.keras`` model, keyed by the sha256 of the ``.keras`` file.

For ``model.keras`` the exports are ``model.onnx`` (ONNX Runtime) and ``model.openvino.xml`` +
``.bin`` (OpenVINO IR), and their int8 variants ``model.int8.onnx`` and
``model.openvino-int8.xml``. Each has a JSON record written last (``model.onnx.json``, ...)
with the sha256 of the source ``.keras`` file and of every exported file, the model's inputs,
the exporter's versions and the export check (largest probability difference from the Keras
model on random windows). An export whose record is missing, names another source checksum or
does not match its files is made again. Exporting needs TensorFlow, so it runs in a child
process (``python -m glacier_mapping.runtime.export``): the calling process never imports it.
Concurrent exports of one model (several workers) wait for each other on a lock file.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glacier_mapping.store import file_digest

#: Export formats and the runtime that runs each.
FORMATS: dict[str, str] = {"onnx": "onnxruntime", "openvino": "openvino"}
#: Largest max-abs probability difference from the Keras model an export may show.
EXPORT_TOLERANCE = 1e-4
#: Environment of the export child: quiet TensorFlow logs.
_CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}


class BackendError(RuntimeError):
    """An inference backend cannot be used; the message names the file or option and the fix."""


@dataclass(frozen=True)
class ExportedModel:
    """A checked export: its main file and what the record says about the model."""

    path: Path
    format: str
    quantised: bool
    inputs: dict[str, tuple[int, ...]]
    output_head: str
    record: dict[str, Any]


def export_files(model_path: Path, fmt: str, quantised: bool = False) -> dict[str, Path]:
    """The files of one export of ``model_path``: ``main``, optional ``weights``, ``record``.

    Raises:
        BackendError: for an unknown format.
    """
    if fmt not in FORMATS:
        raise BackendError(f"Unknown export format {fmt!r}; choose one of {list(FORMATS)}.")
    stem = model_path.with_suffix("")
    if fmt == "onnx":
        main = Path(f"{stem}.int8.onnx" if quantised else f"{stem}.onnx")
        files = {"main": main}
    else:
        base = f"{stem}.openvino-int8" if quantised else f"{stem}.openvino"
        main = Path(f"{base}.xml")
        files = {"main": main, "weights": Path(f"{base}.bin")}
    return {**files, "record": Path(f"{main}.json")}


def read_export(model_path: Path, fmt: str, quantised: bool = False,
                source_sha256: str | None = None) -> ExportedModel | None:
    """The export of ``model_path`` if it is complete and made from the current file, else None.

    Args:
        model_path: The ``.keras`` model.
        fmt: ``onnx`` or ``openvino``.
        quantised: The int8 variant.
        source_sha256: The model file's sha256 if already computed.
    """
    files = export_files(model_path, fmt, quantised)
    try:
        record = json.loads(files["record"].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    digest = source_sha256 or file_digest(model_path)
    if not isinstance(record, dict) or record.get("source_sha256") != digest:
        return None
    hashes = record.get("files", {})
    for key, path in files.items():
        if key != "record" and (not path.is_file() or hashes.get(path.name) != file_digest(path)):
            return None
    return ExportedModel(files["main"], fmt, quantised,
                         {name: tuple(shape) for name, shape in record["inputs"].items()},
                         record["output_head"], record)


def ensure_export(model_path: str | os.PathLike[str], fmt: str,
                  quantised: bool = False) -> ExportedModel:
    """The current export of ``model_path`` in ``fmt``, exported first if needed (child process).

    An int8 export is never made here (it needs calibration data:
    :mod:`glacier_mapping.runtime.quantise`); it must exist and match the model.

    Raises:
        BackendError: if the model file is missing, the export fails or does not pass its check.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise BackendError(f"Model file {model_path} does not exist; pass a .keras model.")
    digest = file_digest(model_path)
    current = read_export(model_path, fmt, quantised, digest)
    if current is not None:
        return current
    if quantised:
        raise BackendError(
            f"No int8 {fmt} export of {model_path} made from its current weights; run "
            f"`python -m glacier_mapping.runtime.quantise {model_path} --format {fmt} "
            "--patches PATCHES.h5` first, or use float32."
        )
    with _export_lock(export_files(model_path, fmt)["record"]):
        current = read_export(model_path, fmt, False, digest)  # another process may have won
        if current is None:
            run_export_child(["glacier_mapping.runtime.export", str(model_path), fmt])
            current = read_export(model_path, fmt, False, None)
    if current is None:
        raise BackendError(f"The {fmt} export of {model_path} is incomplete after exporting "
                           "(was the model file replaced meanwhile?); run the command again.")
    return current


def run_export_child(arguments: list[str]) -> None:
    """Run ``python -m ARGUMENTS`` (an export or quantisation) in a child process.

    Raises:
        BackendError: with the end of the child's error output when it fails.
    """
    done = subprocess.run([sys.executable, "-m", *arguments], capture_output=True, text=True,
                          env={**os.environ, **_CHILD_ENV}, check=False)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise BackendError(
            f"Exporting failed (python -m {' '.join(arguments)}): {reason}. Use --backend "
            "tensorflow to run the Keras model itself."
        )


@contextmanager
def _export_lock(record: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``RECORD.lock`` (beside the model) for one export."""
    lock = Path(f"{record}.lock")
    try:
        handle = open(lock, "a")  # noqa: SIM115 - held for the whole block
    except OSError as error:
        raise BackendError(
            f"Cannot write the export beside the model ({lock}: {error.strerror}); copy the "
            ".keras file to a writable folder."
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
