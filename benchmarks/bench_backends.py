"""Inference backends on the paper-size scene: time, peak memory by component, output difference.

Every case is one ``deploy_scene`` of a synthetic 1536 x 1536 scene (optical + DEM GeoTIFFs)
with the paper-size GlaViTU (random weights, seed 0) at the original's 384 px window, stride 192
and batch 8, in a fresh child process (this script with ``--child``) that imports no
TensorFlow unless the backend is TensorFlow. The child reports its RSS after imports
(``VmRSS``), after the model is loaded (inside deploy, the runtime and its model included) and
its high-water mark (``VmHWM``) after the whole deployment, and writes every window's
probabilities to a file, so the parent compares each backend with the TensorFlow path (the
Keras model with BatchNormalization folded) of the same round: the largest difference of a
window probability (an upper bound on the blended scene's, a convex combination of them) and
the glacier IoU of the two class rasters. Exports are made once before the rounds (their time
is reported, not counted in the deployments).

All backends run in each round, one after another, for ``--rounds`` rounds (min and median are
reported; ratios to TensorFlow are taken within a round). On a shared machine other processes
slow some runs more than others: each run records the 1-minute load average (mean of its start
and end) and the CPU seconds of its process (user + system), which other load inflates less
than wall time. ``--isa avx2`` repeats everything
with ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``OV_CPU_MAX_ISA=AVX2`` to approximate an AVX2-only CPU:
TensorFlow's oneDNN and OpenVINO honour them (the kernels OpenVINO ran are recorded); ONNX
Runtime has no such limit, so its AVX2 rows still ran AVX-512 kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import rasterio
from common import Row

import glacier_mapping.deploy as deploy
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.machine import cpu_description, cpu_summary

PATCH = 384
STRIDE = 192
BATCH = 8
SIZE = 1536
#: Backend cases: (backend, precision).
CASES = (("tensorflow", "float32"), ("onnxruntime", "float32"), ("openvino", "float32"))
#: Environment of each instruction-set setting.
ISA_ENV = {"native": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}}
REFERENCE = ("tensorflow", "float32")


def openvino_kernels(runner: object) -> list[str]:
    """Distinct primitives of the convolutions OpenVINO compiled (e.g. ``brgconv_avx512_f32``)."""
    kinds = set()
    for request in getattr(runner, "_requests", {}).values():
        for op in request.get_compiled_model().get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if info["layerType"].astype(str) == "Convolution":
                kinds.add(info["primitiveType"].astype(str))
    return sorted(kinds)


def child(model: str, optical: str, dem: str, out_dir: str, options: str, probs: str) -> None:
    """One deployment; print its measurements as JSON (the last line of stdout)."""
    rss_imports = common.proc_status_mb("VmRSS")
    loaded: dict = {}
    prepare = deploy._prepare_model

    def measured_prepare(*args: object, **kwargs: object) -> tuple:
        start = time.perf_counter()
        info, runner, card = prepare(*args, **kwargs)
        loaded.update(seconds=time.perf_counter() - start, runner=runner,
                      rss_mb=common.proc_status_mb("VmRSS"))
        predict = runner.predict
        handle = open(probs, "wb")  # noqa: SIM115 - closed with the process

        def recording(batch: dict, **options: object) -> np.ndarray:
            result = predict(batch, **options)
            handle.write(np.ascontiguousarray(result, np.float32).tobytes())
            return result

        runner.predict = recording
        return info, runner, card

    deploy._prepare_model = measured_prepare
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with SceneSource(optical, OPTICAL_BANDS, dem=dem) as source:
        summary = deploy.deploy_scene(source, model, out_dir,
                                      deploy.DeployOptions(**json.loads(options)), progress=False)
    wall = time.perf_counter() - start
    times = os.times()
    runner = loaded["runner"]
    print(json.dumps({
        "seconds": summary.seconds, "wall": wall, "load_seconds": loaded["seconds"],
        "cpu_seconds": times.user + times.system,
        "load_average": (load_before + os.getloadavg()[0]) / 2,
        "rss_imports_mb": rss_imports, "rss_loaded_mb": loaded["rss_mb"],
        "peak_mb": common.proc_status_mb("VmHWM"), "windows": summary.pixels["windows"],
        "backend": summary.parameters["backend"], "precision": summary.parameters["precision"],
        "tensorflow_imported": "tensorflow" in sys.modules,
        "kernels": openvino_kernels(runner) if runner.backend == "openvino" else [],
        "cpu": cpu_description(), "outputs": summary.outputs}))


def run_child(paths: dict[str, Path], out_dir: Path, backend: str, precision: str,
              env: dict[str, str], probs: Path) -> dict:
    """Run one deployment child; its JSON."""
    options = json.dumps({"stride": STRIDE, "batch_size": BATCH, "backend": backend,
                          "precision": precision})
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(paths["model"]), str(paths["optical"]),
         str(paths["dem"]), str(out_dir), options, str(probs)],
        capture_output=True, text=True, env={**os.environ, **env}, check=False)
    if done.returncode:
        raise RuntimeError(f"{backend} {precision} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def glacier_iou(first: dict, second: dict) -> float:
    """IoU of the glacier pixels of two deployments' class rasters (valid pixels of both)."""
    with rasterio.open(first["outputs"]["glacier_class.tif"]) as a, \
            rasterio.open(second["outputs"]["glacier_class.tif"]) as b:
        classes_a, classes_b = a.read(1), b.read(1)
    valid = (classes_a != 255) & (classes_b != 255)
    glacier_a, glacier_b = (classes_a == 1) & valid, (classes_b == 1) & valid
    union = (glacier_a | glacier_b).sum()
    return float((glacier_a & glacier_b).sum() / union) if union else 1.0


def prepare(folder: Path, size: int) -> tuple[dict[str, Path], float]:
    """Scene GeoTIFFs, the paper-size model and its exports (seconds of exporting)."""
    import bench_deploy  # imports Keras: the parent only
    import keras

    from glacier_mapping.data.regions import get_region
    from glacier_mapping.data.synthetic import generate_scene
    from glacier_mapping.models import build_model
    from glacier_mapping.runtime.artifacts import run_export_child

    region = get_region("ALP")
    scene = generate_scene(region, size // 2, 0, region.year)
    paths = bench_deploy.write_scene(folder, scene.features, scene.transform, scene.crs, size)
    keras.utils.set_random_seed(0)
    paths["model"] = folder / "paper" / "model.keras"
    paths["model"].parent.mkdir()
    build_model("glavitu", common.SENSORS, PATCH, "paper").save(paths["model"])
    start = time.perf_counter()
    run_export_child(["glacier_mapping.runtime.export", str(paths["model"]), "onnx", "openvino"])
    return paths, time.perf_counter() - start


def case_rows(isa: str, case: tuple[str, str], results: list[dict], reference: list[dict],
              differences: list[float], ious: list[float]) -> list[Row]:
    """Min and median of each figure of one backend case over the rounds."""
    backend, precision = case
    cpu = results[0]["cpu"]
    label = f"{isa}, {backend} {precision}"
    method = (f"deploy_scene, paper GlaViTU {PATCH} px, stride {STRIDE}, batch {BATCH}, "
              f"{SIZE}x{SIZE} synthetic scene, fresh child process per run (model load "
              f"included, exports made beforehand); {len(results)} rounds; CPU "
              f"{cpu_summary(cpu)}")
    figures = {
        "deploy_seconds": ([r["seconds"]["total"] for r in results], "s"),
        "predict_seconds": ([r["seconds"]["predict"] for r in results], "s"),
        "model_load_seconds": ([r["load_seconds"] for r in results], "s"),
        "process_cpu_seconds": ([r["cpu_seconds"] for r in results], "s"),
        "load_average_1min": ([r["load_average"] for r in results], "load"),
        "peak_rss_mb": ([r["peak_mb"] for r in results], "MB"),
        "rss_after_imports_mb": ([r["rss_imports_mb"] for r in results], "MB"),
        "model_load_rss_mb": ([r["rss_loaded_mb"] - r["rss_imports_mb"] for r in results], "MB"),
        "inference_rss_mb": ([r["peak_mb"] - r["rss_loaded_mb"] for r in results], "MB"),
        "speedup_vs_tensorflow": ([ref["seconds"]["total"] / r["seconds"]["total"]
                                   for r, ref in zip(results, reference, strict=True)], "x"),
        "peak_rss_vs_tensorflow": ([r["peak_mb"] / ref["peak_mb"]
                                    for r, ref in zip(results, reference, strict=True)], "ratio"),
    }
    if case != REFERENCE:
        figures["max_abs_probability_difference"] = (differences, "abs")
        figures["glacier_iou_vs_tensorflow"] = (ious, "IoU")
    rows = []
    for metric, (values, unit) in figures.items():
        rows.append(Row("backends", label, f"{metric}_min", min(values), unit, method))
        rows.append(Row("backends", label, f"{metric}_median", statistics.median(values), unit,
                        method))
    kernels = sorted({kind for r in results for kind in r["kernels"]})
    if kernels:
        print(f"{label}: OpenVINO convolution kernels {kernels}")
    print(f"{label}: TensorFlow imported in the deploy process: "
          f"{any(r['tensorflow_imported'] for r in results)}")
    return rows


def run(quick: bool, rounds: int, isas: list[str], out: Path | None) -> list[Row]:
    """All rows; with ``out``, rows so far are written after every instruction-set setting."""
    size = PATCH * 2 if quick else SIZE
    rows = []
    print(f"CPU: {cpu_summary()}")
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        folder = Path(tmp)
        paths, export_seconds = prepare(folder, size)
        rows.append(Row("backends", "paper GlaViTU", "export_seconds", export_seconds, "s",
                        "one child process: TensorFlow import, ONNX and OpenVINO exports, "
                        "each checked against Keras on 2 random windows"))
        for isa in isas:
            results = {case: [] for case in CASES}
            differences = {case: [] for case in CASES}
            ious = {case: [] for case in CASES}
            for round_ in range(rounds):
                windows = {}
                for case in CASES:
                    name = f"{isa}-{round_}-{case[0]}-{case[1]}"
                    probs = folder / f"{name}.f32"
                    result = run_child(paths, folder / name, *case, ISA_ENV[isa], probs)
                    results[case].append(result)
                    windows[case] = np.fromfile(probs, np.float32)
                    probs.unlink()
                    print(f"{isa} round {round_}: {case[0]} {case[1]}: "
                          f"{result['seconds']['total']:.1f} s ({result['cpu_seconds']:.0f} CPU "
                          f"s), peak {result['peak_mb']:.0f} MB, load "
                          f"{result['load_average']:.1f}", flush=True)
                for case in CASES:
                    differences[case].append(
                        float(np.abs(windows[case] - windows[REFERENCE]).max()))
                    ious[case].append(glacier_iou(results[case][-1], results[REFERENCE][-1]))
            for case in CASES:
                rows += case_rows(isa, case, results[case], results[REFERENCE], differences[case],
                                  ious[case])
            if out is not None:
                common.write_rows(rows, out)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 768 px scene (a smoke run)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all backends")
    parser.add_argument("--isa", nargs="+", choices=sorted(ISA_ENV), default=["native", "avx2"])
    parser.add_argument("--out", type=Path, default=None, help="CSV of this script's rows")
    args = parser.parse_args()
    common.finish("backends", run(args.quick, args.rounds, args.isa, args.out), args.out)


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        main()
