"""int8 post-training quantisation of a model's ONNX export, accepted only if accuracy holds.

``python -m glacier_mapping.runtime.quantise MODEL.keras --train TRAIN.hdf5 --test TEST.hdf5``:

1. The float32 ONNX export (:func:`glacier_mapping.runtime.artifacts.ensure_export`).
2. ONNX Runtime's static quantiser (QDQ format, int8 weights per output channel, uint8
   activations, min-max ranges) calibrated on :data:`CALIBRATION_WINDOWS` random windows of
   the training split's tiles (benchmark patches, normalised as stored).
3. The quantised ONNX file converted to OpenVINO IR as well (OpenVINO runs the QDQ pairs as
   int8 operations).
4. Each quantised model scored on every tile of the test split (glacier IoU pooled over the
   labelled pixels, probability >= 0.5, windows blended as in deployment) against the float32
   export on the same tiles. A runtime's int8 model is published beside the ``.keras`` file
   (``model.int8.onnx``, ``model.openvino-int8.xml``, with JSON records) only when its IoU is
   within :data:`IOU_TOLERANCE` of float32; otherwise it is refused with both figures.

No TensorFlow is imported here (the float32 export runs in a child process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np

from glacier_mapping.data.schema import LOCATION_INPUT
from glacier_mapping.data.tiles import iter_tiles
from glacier_mapping.evaluation import confusion_counts
from glacier_mapping.runtime.artifacts import (
    BackendError,
    ExportedModel,
    ensure_export,
    export_files,
)
from glacier_mapping.runtime.backends import load_exported, predict_image
from glacier_mapping.store import file_digest, publish_set

#: Largest drop (or gain) of test-split glacier IoU an int8 model may show against float32.
IOU_TOLERANCE = 0.005
#: Calibration windows drawn from the training split.
CALIBRATION_WINDOWS = 64


def calibration_windows(path: Path, sensors: list[str], size: int, count: int,
                        seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` random ``size`` px windows (one per dict, batch of one) of the tiles in ``path``.

    Raises:
        BackendError: if the file has no tile of at least one window.
    """
    tiles = [tile for tile in iter_tiles(path, sensors=sensors)
             if min(tile.shape) >= size]
    if not tiles:
        raise BackendError(f"{path} has no tile of at least {size} px with {sensors}.")
    rng = np.random.default_rng(seed)
    windows = []
    for _ in range(count):
        tile = tiles[rng.integers(len(tiles))]
        row = rng.integers(tile.shape[0] - size + 1)
        col = rng.integers(tile.shape[1] - size + 1)
        windows.append({name: np.ascontiguousarray(tile.features[name][None, row : row + size,
                                                                        col : col + size])
                        for name in sensors})
    return windows


class _Windows:
    """ONNX Runtime's calibration data reader over a list of input dicts."""

    def __init__(self, windows: list[dict[str, np.ndarray]]) -> None:
        self._windows: Iterator[dict[str, np.ndarray]] = iter(windows)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration input, None at the end."""
        return next(self._windows, None)


def test_iou(runner: object, path: Path, sensors: list[str]) -> float:
    """Glacier IoU of a runner over the labelled pixels of every tile in ``path`` (pooled)."""
    totals = {"tp": 0, "fp": 0, "fn": 0}
    for tile in iter_tiles(path, sensors=sensors):
        probs = predict_image(runner, tile.features)
        counts = confusion_counts((probs[..., 1] >= 0.5).astype(np.int64), tile.labels,
                                  tile.valid)
        for key in totals:
            totals[key] += counts[key]
    union = totals["tp"] + totals["fp"] + totals["fn"]
    return totals["tp"] / union if union else 1.0


def quantise(model_path: Path, train: Path, test: Path,
             count: int = CALIBRATION_WINDOWS) -> dict[str, dict]:
    """Quantise, score and publish the int8 models of ``model_path``; the figures per format.

    Returns:
        Format -> ``iou_float32``, ``iou_int8`` and ``accepted`` (published).

    Raises:
        BackendError: for a location-encoded model or training tiles smaller than a window.
    """
    import openvino
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    exported = ensure_export(model_path, "onnx")
    if LOCATION_INPUT in exported.inputs:
        raise BackendError(f"{model_path}: int8 quantisation of location-encoded models is not "
                           "supported; use float32.")
    sensors = list(exported.inputs)
    size = exported.inputs[sensors[0]][0]
    windows = calibration_windows(train, sensors, size, count)
    float_iou = test_iou(load_exported(exported, "float32"), test, sensors)
    results = {}
    with tempfile.TemporaryDirectory(prefix=".quantise-", dir=model_path.parent) as tmp:
        quantised = Path(tmp) / "int8.onnx"
        quantize_static(str(exported.path), str(quantised), _Windows(windows),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        for fmt in ("onnx", "openvino"):
            files = export_files(model_path, fmt, quantised=True)
            staged = {key: Path(tmp) / fmt / path.name for key, path in files.items()
                      if key != "record"}
            staged["main"].parent.mkdir()
            if fmt == "onnx":
                staged["main"].write_bytes(quantised.read_bytes())
            else:
                openvino.save_model(openvino.convert_model(str(quantised)), str(staged["main"]),
                                    compress_to_fp16=False)
            candidate = ExportedModel(staged["main"], fmt, True, exported.inputs,
                                      exported.output_head, {})
            iou = test_iou(load_exported(candidate, "int8"), test, sensors)
            keep = abs(iou - float_iou) <= IOU_TOLERANCE
            results[fmt] = {"iou_float32": float_iou, "iou_int8": iou, "accepted": keep}
            if not keep:
                continue
            record = {
                **{key: exported.record[key] for key in ("source", "source_sha256", "inputs",
                                                        "output_head", "opset")},
                "format": fmt, "quantised": True,
                "files": {path.name: file_digest(path) for path in staged.values()},
                "versions": {package: version(package) for package in ("onnxruntime", "openvino")},
                "quantisation": {
                    "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, "
                              "uint8 activations, min-max calibration",
                    "calibration": {"file": str(train), "windows": count, "seed": 0},
                    "test": {"file": str(test), **results[fmt], "tolerance": IOU_TOLERANCE},
                },
            }
            publish_set({path.name: path for path in staged.values()}, model_path.parent,
                        files["record"].name, record)
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .keras model")
    parser.add_argument("--train", type=Path, required=True,
                        help="benchmark HDF5 file the calibration windows come from")
    parser.add_argument("--test", type=Path, required=True,
                        help="benchmark HDF5 file (labelled) the accuracy check runs on")
    parser.add_argument("--windows", type=int, default=CALIBRATION_WINDOWS)
    args = parser.parse_args(argv)
    try:
        results = quantise(args.model, args.train, args.test, args.windows)
    except BackendError as error:
        sys.exit(f"error: {error}")
    for fmt, figures in results.items():
        print(f"{fmt}: glacier IoU float32 {figures['iou_float32']:.4f}, int8 "
              f"{figures['iou_int8']:.4f}: {'accepted' if figures['accepted'] else 'refused'}")
    if not any(figures["accepted"] for figures in results.values()):
        sys.exit(f"error: int8 changes the test-split glacier IoU of {args.model} by more than "
                 f"{IOU_TOLERANCE} in every runtime; keep float32.")


if __name__ == "__main__":
    main()
