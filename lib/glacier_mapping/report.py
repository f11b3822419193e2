"""Pages generated from a run's outputs: "Results at a glance" and "Build information".

Nothing here is typed by hand: every number comes from ``outputs/<profile>/metrics/*.csv`` and
``manifest.json``, and the paper's numbers from the packaged ``paper_numbers.json``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

METRIC_COLUMNS: tuple[str, ...] = (
    "chapter", "experiment", "model", "preset", "strategy", "sensors", "split", "region", "seed",
    "metric", "value",
)
#: Metrics shown in the headline table of "Results at a glance" (pooled over regions).
HEADLINE_METRICS: tuple[str, ...] = (
    "iou", "iou_mean_of_regions", "ece", "iou_estimated", "parameter_count",
)


def load_metrics(output_dir: str | Path) -> pd.DataFrame:
    """All tidy metrics files of a run, concatenated (empty frame when there are none)."""
    files = sorted((Path(output_dir) / "metrics").glob("*.csv"))
    frames = [pd.read_csv(f, dtype={"seed": "string"}, keep_default_na=False) for f in files]
    if not frames:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    metrics = pd.concat(frames, ignore_index=True)
    missing = set(METRIC_COLUMNS) - set(metrics.columns)
    if missing:
        raise ValueError(f"Metrics files in {output_dir}/metrics lack columns {sorted(missing)}.")
    metrics["value"] = pd.to_numeric(metrics["value"], errors="coerce")
    return metrics


def paper_numbers() -> list[dict[str, Any]]:
    """The paper's published numbers with the selector of the matching row of this run."""
    text = (resources.files("glacier_mapping") / "paper_numbers.json").read_text()
    return json.loads(text)["numbers"]


def _matching_value(metrics: pd.DataFrame, match: dict[str, str]) -> tuple[str, str]:
    rows = metrics
    for column, wanted in match.items():
        rows = rows[rows[column].astype(str) == str(wanted)]
    if rows.empty:
        return "not computed in this run", ""
    values = rows["value"].astype(float)
    if len(values) == 1:
        text = _format(values.iloc[0])
    else:
        text = f"{values.mean():.3f} ± {values.std(ddof=1):.3f} (n={len(values)})"
    return text, str(match.get("chapter", ""))


def _format(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.3f}"


def results_at_a_glance(output_dir: str | Path, profile: str) -> str:
    """Markdown of the paper's numbers beside this run's, plus this run's headline metrics."""
    metrics = load_metrics(output_dir)
    lines = [
        "(results-at-a-glance)=",
        "# Results at a glance",
        "",
        f"Generated from `outputs/{profile}/metrics/` of this build (profile `{profile}`). "
        "Unless the book was built on the real benchmark, **this run's numbers come from the "
        "synthetic stand-in benchmark and small CPU models**: they show that the workflow "
        "reproduces the paper's *questions*, not its values. Read them side by side, not as a "
        "match.",
        "",
        "## The paper's numbers beside this run's",
        "",
        "| Claim | Paper | This run | Chapter | Source of the paper's number |",
        "|---|---|---|---|---|",
    ]
    for entry in paper_numbers():
        ours, chapter = _matching_value(metrics, entry["match"])
        link = f"{{doc}}`/notebooks/{chapter}`" if chapter else ""
        lines.append(
            f"| {entry['claim']} | {entry['paper']} | {ours} | {link} | {entry['status']} |"
        )
    lines += ["", "## This run's headline metrics", ""]
    headline = metrics[(metrics["region"] == "ALL") & metrics["metric"].isin(HEADLINE_METRICS)]
    if headline.empty:
        lines.append("No metrics were written by this run.")
    else:
        keys = ["chapter", "experiment", "model", "preset", "strategy", "sensors", "split",
                "metric"]
        table = (
            headline.groupby(keys, dropna=False)["value"]
            .agg(["mean", "std", "count"]).reset_index()
        )
        lines += [
            "| Chapter | Experiment | Model | Preset | Strategy | Sensors | Split | Metric | Value "
            "| Runs |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in table.itertuples(index=False):
            value = _format(row.mean)
            if row.count > 1 and pd.notna(row.std):
                value += f" ± {row.std:.3f}"
            lines.append(
                f"| {{doc}}`/notebooks/{row.chapter}` | {row.experiment} | {row.model} | "
                f"{row.preset} | {row.strategy} | "
                f"{row.sensors} | {row.split} | {row.metric} | {value} | {row.count} |"
            )
    return "\n".join(lines) + "\n"


def build_information(output_dir: str | Path) -> str:
    """Markdown of the run manifest: profile, commit, versions, time and memory per notebook."""
    manifest_path = Path(output_dir) / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{manifest_path} is missing: run `glacier-mapping run --profile ...` first."
        )
    manifest = json.loads(manifest_path.read_text())
    profile = manifest["profile"]
    lines = [
        "(build-information)=",
        "# Build information",
        "",
        f"- Profile: `{profile['name']}` ({profile['description']})",
        f"- Seed: {manifest['seed']}",
        f"- Git commit: `{manifest['git_commit']}`",
        f"- Platform: {manifest['platform']}, {manifest['cpu_count']} CPU(s)",
        f"- Started: {manifest['started']}; notebook time "
        f"{manifest.get('total_notebook_seconds', 0):.0f} s",
        "",
        "## Notebooks",
        "",
        "| Notebook | Status | Time (s) | Peak memory (MB) | Artifacts reused | computed |",
        "|---|---|---|---|---|---|",
    ]
    for nb in manifest["notebooks"]:
        lines.append(
            f"| {nb['notebook']} | {nb['status']} | {nb.get('seconds', '')} | "
            f"{nb.get('peak_memory_mb', '')} | {nb.get('artifacts_reused', '')} | "
            f"{nb.get('artifacts_computed', '')} |"
        )
    lines += ["", "## Package versions", "", "| Package | Version |", "|---|---|"]
    lines += [f"| {name} | {version} |" for name, version in manifest["versions"].items()]
    return "\n".join(lines) + "\n"


def paper_comparison(metrics: pd.DataFrame, chapter: str) -> pd.DataFrame:
    """The paper's numbers that concern one chapter beside this run's (from its metrics)."""
    rows = []
    for entry in paper_numbers():
        if entry["match"].get("chapter") != chapter:
            continue
        ours, _ = _matching_value(metrics, entry["match"])
        rows.append({"claim": entry["claim"], "paper": entry["paper"], "this run": ours,
                     "source of the paper's number": entry["status"]})
    return pd.DataFrame(rows)
