"""Export a ``.keras`` model to ONNX or OpenVINO IR beside it (needs TensorFlow; run as a child).

``python -m glacier_mapping.runtime.export MODEL.keras {onnx,openvino}...`` writes the files of
:func:`glacier_mapping.runtime.artifacts.export_files` and their JSON record last. The path:

1. An export copy of the model: MC dropout layers become pass-throughs (their switch is a
   variable read in a ``cond``, which converters cannot freeze) and GELU is written with
   ``erf`` (TensorFlow's exact GELU uses ``erfc``, which ONNX lacks); weights are copied.
2. Its ``"output"`` head, traced with an open batch dimension, to ONNX with tf2onnx
   (opset :data:`OPSET`).
3. For OpenVINO, the ONNX file (the current ONNX export when there is one) converted to IR
   with OpenVINO's own converter, weights kept in float32 (``compress_to_fp16=False``).
4. A check: probabilities of :data:`CHECK_WINDOWS` random windows through the export against
   the Keras model; more than :data:`~glacier_mapping.runtime.artifacts.EXPORT_TOLERANCE`
   apart and nothing is written.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tf2onnx

from glacier_mapping.inference import OUTPUT_HEAD
from glacier_mapping.models import MCDropout, load_model
from glacier_mapping.runtime.artifacts import (
    EXPORT_TOLERANCE,
    FORMATS,
    BackendError,
    ExportedModel,
    export_files,
    read_export,
)
from glacier_mapping.runtime.backends import load_exported
from glacier_mapping.store import file_digest, publish_set

#: ONNX opset of the exports (supported by ONNX Runtime and OpenVINO alike).
OPSET = 17
#: Random windows the export check compares.
CHECK_WINDOWS = 2


def gelu_erf(x: tf.Tensor) -> tf.Tensor:
    """Exact GELU through ``erf``: ``x / 2 * (1 + erf(x / sqrt(2)))``."""
    return 0.5 * x * (1.0 + keras.ops.erf(x * (1.0 / math.sqrt(2.0))))


def export_copy(model: keras.Model) -> keras.Model:
    """The model as exported: MC dropout removed, GELU through ``erf``, the same weights."""

    def clone(layer: keras.Layer) -> keras.Layer:
        if isinstance(layer, MCDropout):
            return keras.layers.Identity(name=layer.name)
        config = layer.get_config()
        if config.get("activation") == "gelu":
            config["activation"] = gelu_erf
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.weights and not isinstance(layer, MCDropout):
            copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy


def input_shapes(model: keras.Model) -> dict[str, tuple[int, ...]]:
    """Input name -> shape of one sample.

    Raises:
        BackendError: for a model without named dict inputs of fixed size.
    """
    if not isinstance(model.input, dict):
        raise BackendError("The model must take a dict of named inputs (sensor names).")
    shapes = {name: tuple(tensor.shape[1:]) for name, tensor in model.input.items()}
    if any(size is None for shape in shapes.values() for size in shape):
        raise BackendError(f"Exports need fixed input sizes; the model's are {shapes}.")
    return shapes


def to_onnx(model: keras.Model, path: Path) -> None:
    """Write the model's ``"output"`` head as ONNX, with an open batch dimension."""
    signature = [{name: tf.TensorSpec((None, *shape), tf.float32, name=name)
                  for name, shape in input_shapes(model).items()}]

    @tf.function(input_signature=signature)
    def output_head(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {OUTPUT_HEAD: model(inputs, training=False)[OUTPUT_HEAD]}

    tf2onnx.convert.from_function(output_head, input_signature=signature, opset=OPSET,
                                  output_path=str(path))


def to_openvino(onnx_path: Path, path: Path) -> None:
    """Convert an ONNX file to OpenVINO IR (``.xml`` + ``.bin``), weights in float32."""
    import openvino  # only this format needs it

    openvino.save_model(openvino.convert_model(str(onnx_path)), str(path),
                        compress_to_fp16=False)


def check_export(model: keras.Model, exported: ExportedModel) -> float:
    """Largest probability difference between the export and the Keras model.

    Raises:
        BackendError: above :data:`~glacier_mapping.runtime.artifacts.EXPORT_TOLERANCE`.
    """
    rng = np.random.default_rng(0)
    windows = {name: rng.random((CHECK_WINDOWS, *shape), dtype=np.float32)
               for name, shape in exported.inputs.items()}
    expected = np.asarray(model(windows, training=False)[OUTPUT_HEAD])
    runner = load_exported(exported, "float32")
    difference = float(np.abs(runner.predict(windows) - expected).max())
    if not difference <= EXPORT_TOLERANCE:
        raise BackendError(
            f"The {exported.format} export differs from the Keras model by {difference:.2g} "
            f"(more than {EXPORT_TOLERANCE:g}): a layer the converter does not translate "
            "faithfully; use --backend tensorflow."
        )
    return difference


def export(model_path: Path, fmt: str) -> dict:
    """Export ``model_path`` to ``fmt`` beside it, checked, record last; return the record."""
    if fmt not in FORMATS:
        raise BackendError(f"Unknown export format {fmt!r}; choose one of {list(FORMATS)}.")
    source_sha256 = file_digest(model_path)
    model = load_model(model_path)
    shapes = input_shapes(model)
    files = export_files(model_path, fmt)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=model_path.parent) as tmp:
        staged = {key: Path(tmp) / path.name for key, path in files.items() if key != "record"}
        onnx_path = staged["main"] if fmt == "onnx" else Path(tmp) / "model.onnx"
        current = None if fmt == "onnx" else read_export(model_path, "onnx", False, source_sha256)
        if current is None:
            to_onnx(export_copy(model), onnx_path)
        else:
            onnx_path = current.path
        if fmt == "openvino":
            to_openvino(onnx_path, staged["main"])
        exported = ExportedModel(staged["main"], fmt, False, shapes, OUTPUT_HEAD, {})
        difference = check_export(model, exported)
        record = {
            "source": model_path.name,
            "source_sha256": source_sha256,
            "format": fmt,
            "quantised": False,
            "files": {path.name: file_digest(path) for path in staged.values()},
            "inputs": {name: list(shape) for name, shape in shapes.items()},
            "output_head": OUTPUT_HEAD,
            "opset": OPSET,
            "versions": exporter_versions(fmt),
            "check": {"windows": CHECK_WINDOWS, "max_abs_difference": difference,
                      "tolerance": EXPORT_TOLERANCE},
        }
        publish_set({path.name: path for path in staged.values()}, model_path.parent,
                    files["record"].name, record)
    return record


def exporter_versions(fmt: str) -> dict[str, str]:
    """Versions of the packages that made an export."""
    packages = ["tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx",
                "onnxruntime" if fmt == "onnx" else "openvino"]
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except ModuleNotFoundError:
            continue
    return found


def main(argv: list[str] | None = None) -> None:
    """Command line of the export child."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .keras model")
    parser.add_argument("formats", nargs="+", choices=sorted(FORMATS), metavar="format",
                        help=f"one or more of {sorted(FORMATS)}")
    args = parser.parse_args(argv)
    try:
        for fmt in args.formats:
            export(args.model, fmt)
    except BackendError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
