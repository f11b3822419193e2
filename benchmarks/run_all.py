"""Run every benchmark script and write ``outputs/benchmarks/results.csv`` and ``report.md``.

Each script runs in its own process (a fresh TensorFlow, no shared compiled functions) under
a share of a 590 s budget, so the whole run stays under 10 minutes on a 2-core CPU; a script
that runs out of time or fails leaves a row saying so and the others still run.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import common
from common import OUT_DIR, PARTS_DIR, Row

from glacier_mapping.store import atomic_write_text

HERE = Path(__file__).resolve().parent
BUDGET_SECONDS = 590.0
#: (script stem, benchmark name, own time limit in seconds): the issue's figures first.
SCRIPTS: tuple[tuple[str, str, float], ...] = (
    ("bench_notebooks", "notebooks", 30.0),
    ("bench_scene", "scene", 240.0),
    ("bench_flops", "flops", 150.0),
    ("bench_stride", "stride", 150.0),
    ("bench_deploy", "deploy", 150.0),
    ("bench_inference", "inference", 90.0),
    ("bench_uncertainty", "uncertainty", 60.0),
    ("bench_training", "training", 150.0),
)
TITLES = {
    "scene": "1. Paper-size 1536 x 1536 scene (original's window, stride, batch) vs. the issue",
    "flops": "2. Achieved GFLOP/s of paper-size inference vs. a float32 matmul (oneDNN on/off)",
    "stride": "3. Window stride, blending and bfloat16 vs. glacier IoU (test split)",
    "deploy": "4. Scene deployment time and peak memory (1x, 4x, 16x area)",
    "inference": "5. GlaViTU inference throughput (predict_array)",
    "training": "6. Training and data-pipeline throughput",
    "uncertainty": "7. Cost of 8-fold TTA and MC dropout",
    "notebooks": "8. Quick-book notebook times (run manifest)",
}


def run_script(stem: str, name: str, limit: float, quick: bool) -> tuple[list[Row], float]:
    """Run one benchmark script; return its rows (or a failure row) and its wall seconds.

    The script runs in its own process group: at its time limit the whole group (with any
    child deployments) gets SIGTERM, then SIGKILL. Rows it wrote before failing are kept.
    """
    out = PARTS_DIR / f"{name}.csv"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / f"{stem}.py"), "--out", str(out)]
    if quick:
        command.append("--quick")
    print(f"== {stem} (limit {limit:.0f} s)", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=HERE, text=True, stdout=sys.stdout,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=limit)
        error = stderr[-1500:] if process.returncode else ""
    except subprocess.TimeoutExpired:
        stop_group(process)
        error = f"timed out after {limit:.0f} s"
    seconds = time.perf_counter() - start
    rows = read_rows(out)
    if error or not rows:
        print(f"!! {stem} failed: {error}", file=sys.stderr)
        reason = error.strip().splitlines()[-1] if error.strip() else "no output"
        rows.append(Row(name, "(all)", "failed", math.nan, "", f"not available: {reason}"))
    return rows, seconds


def stop_group(process: subprocess.Popen) -> None:
    """Terminate a script's process group (its children too), killing it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def read_rows(path: Path) -> list[Row]:
    """The rows of a script's CSV, or none if it wrote nothing."""
    if not path.is_file():
        return []
    with path.open() as handle:
        return [Row(**{**record, "value": float(record["value"])})
                for record in csv.DictReader(handle)]


def derived(rows: list[Row]) -> list[Row]:
    """Achieved GFLOP/s through predict_array: FLOPs per window x paper windows/s."""
    values = {(r.benchmark, r.case, r.metric): r.value for r in rows}
    flops = values.get(("flops", "paper 384px", "analytic_gflop_per_window"))
    rate = values.get(("inference", "paper 384px", "windows_per_s"))
    peak = values.get(("flops", "matmul 2048", "matmul_gflop_per_s"))
    if flops is None or rate is None:
        return []
    achieved = flops * rate
    method = "analytic_gflop_per_window x inference windows_per_s (paper 384px, predict_array)"
    result = [Row("flops", "paper 384px via predict_array", "achieved_gflop_per_s", achieved,
                  "GFLOP/s", method)]
    if peak:
        result.append(Row("flops", "paper 384px via predict_array", "achieved_to_matmul_ratio",
                          achieved / peak, "ratio", f"{method} / matmul_gflop_per_s"))
    return result


#: Issue #9's acceptance criteria: (criterion, benchmark, case, metric, comparison, target).
ACCEPTANCE: tuple[tuple[str, str, str, str, str, float], ...] = (
    ("1536 px paper scene, float32: time / the issue's 61 s", "scene",
     "1536x1536 paper, float32", "time_vs_issue_original", "<=", 0.5),
    ("1536 px paper scene, bfloat16: time / the issue's 61 s", "scene",
     "1536x1536 paper, bfloat16", "time_vs_issue_original", "<=", 0.5),
    ("1536 px paper scene, float32: time / original modelled on this CPU", "scene",
     "1536x1536 paper, float32", "time_vs_modelled_original", "<=", 0.5),
    ("1536 px paper scene, bfloat16: time / original modelled on this CPU", "scene",
     "1536x1536 paper, bfloat16", "time_vs_modelled_original", "<=", 0.5),
    ("1536 px paper scene, float32: peak RSS / the issue's 4 GB", "scene",
     "1536x1536 paper, float32", "peak_memory_vs_issue_original", "<=", 0.25),
    ("Same output: largest confidence difference vs float64 reference", "scene",
     "1536x1536 deploy vs float64 reference", "max_confidence_difference", "<=", 1e-5),
    ("Peak RSS, 16x / 1x scene area", "deploy", "2048 vs 512", "peak_rss_ratio_16x_1x", "<=",
     1.5),
    ("float32 paper inference / float32 matmul rate", "flops", "paper 384px",
     "achieved_to_matmul_ratio", ">=", 0.6),
    ("bfloat16 speed-up, one paper window", "flops", "paper 384px, oneDNN on",
     "bfloat16_speedup", ">=", 1.5),
    ("bfloat16 speed-up, 1536 px paper scene", "scene", "1536x1536 paper", "bfloat16_speedup",
     ">=", 1.5),
    ("bfloat16 - float32 glacier IoU, test split (absolute)", "stride", "stride 32, narrow",
     "bfloat16_iou_difference", "abs<=", 0.005),
)


def acceptance_lines(rows: list[Row]) -> list[str]:
    """A table of the issue's acceptance criteria, each checked against its measured row."""
    values = {(r.benchmark, r.case, r.metric): r.value for r in rows}
    lines = ["## Acceptance criteria of issue #9 (computed from the rows below)", "",
             "| criterion | value | target | met |", "|---|---|---|---|"]
    for criterion, benchmark, case, metric, comparison, target in ACCEPTANCE:
        value = values.get((benchmark, case, metric), math.nan)
        if math.isnan(value):
            met = "not measured"
        elif comparison == "<=":
            met = "yes" if value <= target else "no"
        elif comparison == ">=":
            met = "yes" if value >= target else "no"
        else:
            met = "yes" if abs(value) <= target else "no"
        lines.append(f"| {criterion} | {fmt(value)} | {comparison} {target:g} | {met} |")
    return [*lines, ""]


def fmt(value: float) -> str:
    """A short number for the report."""
    if math.isnan(value):
        return "n/a"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def write_report(rows: list[Row], path: Path, meta: dict[str, str]) -> None:
    """A markdown table per benchmark, each figure with its method."""
    lines = ["# Benchmarks", ""]
    lines += [f"- **{key}**: {value}" for key, value in meta.items()]
    lines += ["", "Timings come from a 2-core CPU that may be shared; treat them as noisy "
              "(load averages above). Every timing states its warm-up and repetitions.", ""]
    lines += acceptance_lines(rows)
    for name in TITLES:
        selected = [r for r in rows if r.benchmark == name]
        if not selected:
            continue
        methods = list(dict.fromkeys(r.method for r in selected))
        lines += [f"## {TITLES[name]}", "", "| case | metric | value | unit | method |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r.case} | {r.metric} | {fmt(r.value)} | {r.unit} | "
                  f"[{methods.index(r.method) + 1}] |" for r in selected]
        lines += ["", "Methods:", ""]
        lines += [f"{index}. {method}" for index, method in enumerate(methods, start=1)]
        lines.append("")
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run)")
    parser.add_argument("--only", nargs="*", help="benchmark names to run (default all)")
    args = parser.parse_args()
    start = time.perf_counter()
    load_before = os.getloadavg()
    rows, seconds = [], {}
    for stem, name, limit in SCRIPTS:
        if args.only and name not in args.only:
            continue
        remaining = BUDGET_SECONDS - (time.perf_counter() - start)
        if remaining < 10:
            rows.append(Row(name, "(all)", "skipped", math.nan, "", f"not available: the "
                            f"{BUDGET_SECONDS:.0f} s budget of run_all.py was used up"))
            continue
        part, seconds[name] = run_script(stem, name, min(limit, remaining), args.quick)
        rows += part
    rows += derived(rows)
    total = time.perf_counter() - start
    rows += [Row("run_all", name, "script_seconds", value, "s", "wall time of the script")
             for name, value in seconds.items()]
    rows.append(Row("run_all", "total", "runtime_seconds", total, "s",
                    "wall time of run_all.py"))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    common.write_rows(rows, OUT_DIR / "results.csv")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "load average (1/5/15 min) before / after": (
            f"{'/'.join(f'{v:.1f}' for v in load_before)} / "
            f"{'/'.join(f'{v:.1f}' for v in os.getloadavg())}"),
        "software": (f"Python {platform.python_version()}, "
                     f"tensorflow-cpu {metadata.version('tensorflow-cpu')}"),
        "environment": (f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, "
                        f"TF_CPP_MIN_LOG_LEVEL={os.environ.get('TF_CPP_MIN_LOG_LEVEL')}"),
        "mode": "quick (smoke sizes)" if args.quick else "default",
        "run_all.py runtime": f"{total:.0f} s "
                              f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())})",
    }
    write_report(rows, OUT_DIR / "report.md", meta)
    print(f"wrote {OUT_DIR / 'results.csv'} and {OUT_DIR / 'report.md'} in {total:.0f} s")


if __name__ == "__main__":
    main()
