"""Figure 4: ``deploy_scene`` time and peak memory for scenes of 1x, 4x and 16x area.

Each deployment runs in a fresh child process (this script with ``--child``) on synthetic
GeoTIFFs (optical 6 bands + DEM; slope derived), with a small-preset GlaViTU (64 px, random
weights: time does not depend on the weights, the polygon count does) and deploy_scene's
defaults (stride half a patch, batch 8, precision ``auto``, read-ahead thread on). The 1x scene
is also deployed without the read-ahead thread. The child reports its
RSS high-water mark as ``VmHWM`` of ``/proc/self/status`` and its RSS after imports; the parent
also samples the child's RSS with psutil as a cross-check. ``ru_maxrss`` (``RUSAGE_SELF`` in
the child, ``RUSAGE_CHILDREN`` in the parent) is not used: on Linux it keeps the parent's RSS
at fork across ``exec``, so it would grow with this script's own memory. Larger scenes are
mirror-tiled from one synthetic scene, so the terrain stays continuous.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import keras
import numpy as np
import psutil
import rasterio
from common import Row

from glacier_mapping.data.regions import get_region
from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource
from glacier_mapping.data.synthetic import generate_scene
from glacier_mapping.deploy import DeployOptions, deploy_scene
from glacier_mapping.models import build_model

PATCH = 64
PRESET = "small"


def write_scene(folder: Path, base: dict[str, np.ndarray], transform: object, crs: str,
                size: int) -> dict[str, Path]:
    """Mirror-tile the base arrays to ``size x size`` and write optical and DEM GeoTIFFs."""
    paths = {}
    for name, bands in (("optical", base["optical"]), ("dem", base["dem"][..., :1])):
        reps = -(-size // bands.shape[0])
        tiled = np.pad(bands, ((0, bands.shape[0] * (reps - 1)),) * 2 + ((0, 0),),
                       mode="symmetric")[:size, :size]
        data = np.moveaxis(tiled, -1, 0).astype(np.float32)
        path = folder / f"{name}_{size}.tif"
        with rasterio.open(path, "w", driver="GTiff", height=size, width=size,
                           count=data.shape[0], dtype="float32", crs=crs, transform=transform,
                           tiled=True, blockxsize=256, blockysize=256) as dataset:
            dataset.write(data)
        paths[name] = path
    return paths


def child(model: str, optical: str, dem: str, out_dir: str, options: str) -> None:
    """Run one deployment and print its measurements as JSON (the last line of stdout).

    ``options`` is a JSON object of :class:`~glacier_mapping.deploy.DeployOptions` fields. The
    imports (TensorFlow and the library) are part of the baseline, not of the scene.
    """
    baseline = common.proc_status_mb("VmRSS")
    start = time.perf_counter()
    with SceneSource(optical, OPTICAL_BANDS, dem=dem) as source:
        summary = deploy_scene(source, model, out_dir, DeployOptions(**json.loads(options)),
                               progress=False)
    wall = time.perf_counter() - start
    peak = common.proc_status_mb("VmHWM")
    print(json.dumps({"seconds": summary.seconds, "wall": wall, "peak_mb": peak,
                      "baseline_mb": baseline, "windows": summary.pixels["windows"],
                      "polygons": summary.polygon_count,
                      "parameters": summary.parameters, "outputs": summary.outputs}))


def run_child(args: list[str]) -> tuple[dict, float]:
    """Run a child deployment; return its JSON and the psutil-sampled peak RSS (MB)."""
    process = subprocess.Popen([sys.executable, __file__, "--child", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched = psutil.Process(process.pid)
    sampled = 0.0
    while process.poll() is None:
        try:
            sampled = max(sampled, watched.memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"deployment child failed:\n{err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1]), sampled


def deploy_method(result: dict) -> str:
    """How a deployment row was measured."""
    parameters = result["parameters"]
    return (f"deploy_scene, {PRESET} GlaViTU {PATCH} px, stride {parameters['stride']}, batch "
            f"{parameters['batch_size']}, precision {parameters['precision']} (auto), prefetch "
            f"{parameters['prefetch']}, synthetic optical + DEM GeoTIFFs; one run per scene in a "
            "fresh child process (includes model load and one trace)")


def result_rows(case: str, size: int, result: dict, sampled: float) -> list[Row]:
    """Time and memory rows of one deployment."""
    method = deploy_method(result)
    seconds = result["seconds"]
    parts = ("predict", "write", "vectorise")
    split = "deploy_scene's own split of deploy_seconds (summary.json 'seconds')"
    return [
        Row("deploy", case, "deploy_seconds", seconds["total"], "s", method),
        *(Row("deploy", case, f"{part}_seconds", seconds[part], "s", split) for part in parts),
        Row("deploy", case, "setup_seconds",
            seconds["total"] - sum(seconds[part] for part in parts), "s",
            "deploy_seconds minus predict, write and vectorise (model load, checks)"),
        Row("deploy", case, "seconds_per_megapixel", seconds["total"] / (size * size / 1e6),
            "s/MP", method),
        Row("deploy", case, "windows", result["windows"], "count", method),
        Row("deploy", case, "polygons", result["polygons"], "count", method),
        *common.child_memory_rows("deploy", case, result, sampled),
    ]


def prefetch_rows(case: str, on: dict, off: dict) -> list[Row]:
    """The same scene without the read-ahead thread, and the speed-up of reading ahead."""
    method = deploy_method(off)
    return [
        Row("deploy", f"{case}, no prefetch", "deploy_seconds", off["seconds"]["total"], "s",
            method),
        Row("deploy", f"{case}, no prefetch", "predict_seconds", off["seconds"]["predict"], "s",
            method),
        Row("deploy", case, "prefetch_predict_speedup",
            off["seconds"]["predict"] / on["seconds"]["predict"], "x",
            "predict_seconds without / with the read-ahead thread (one run each)"),
    ]


def run(quick: bool) -> list[Row]:
    sizes = (128, 256, 512) if quick else (512, 1024, 2048)
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        folder = Path(tmp)
        keras.utils.set_random_seed(0)
        model_path = folder / "model.keras"
        build_model("glavitu", common.SENSORS, PATCH, PRESET).save(model_path)
        region = get_region("ALP")
        scene = generate_scene(region, sizes[0], 0, region.year)
        for size in sizes:
            paths = write_scene(folder, scene.features, scene.transform, scene.crs, size)
            result, sampled = run_child([str(model_path), str(paths["optical"]),
                                         str(paths["dem"]), str(folder / f"out_{size}"), "{}"])
            results[size] = result
            case = f"{size}x{size} ({(size // sizes[0]) ** 2}x area)"
            rows += result_rows(case, size, result, sampled)
            if size == sizes[0]:
                off, _ = run_child([str(model_path), str(paths["optical"]), str(paths["dem"]),
                                    str(folder / f"out_{size}_serial"), '{"prefetch": false}'])
                rows += prefetch_rows(case, result, off)
    small, large = results[sizes[0]], results[sizes[-1]]
    middle = results[sizes[1]]
    extra = (large["peak_mb"] - large["baseline_mb"]) / max(
        small["peak_mb"] - small["baseline_mb"], 1e-9)
    marginal = (large["seconds"]["total"] - middle["seconds"]["total"]) / (
        (sizes[-1] ** 2 - sizes[1] ** 2) / 1e6)
    summary = f"{sizes[-1]} vs {sizes[0]}"
    rows += [
        Row("deploy", summary, "peak_rss_ratio_16x_1x", large["peak_mb"] / small["peak_mb"],
            "ratio", "peak_rss_mb of the 16x scene / the 1x scene"),
        Row("deploy", summary, "rss_growth_ratio_16x_1x", extra, "ratio",
            "(peak - after-imports RSS) of the 16x scene / the same of the 1x scene"),
        Row("deploy", f"{sizes[-1]} vs {sizes[1]}", "marginal_seconds_per_megapixel", marginal,
            "s/MP", "(deploy_seconds 16x - 4x) / (area 16x - 4x): fixed costs cancel"),
    ]
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        args = common.parse_args(__doc__.splitlines()[0])
        common.finish("deploy", run(args.quick), args.out)
