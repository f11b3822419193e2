"""Pages generated from a run's outputs: "Results at a glance" and "Build information".

Nothing here is typed by hand: every number comes from ``outputs/<profile>/metrics/*.csv`` and
``manifest.json``, and the paper's numbers from the packaged ``paper_numbers.json``.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from glacier_mapping.findings import VERDICT_MARKS, Finding, load_findings
from glacier_mapping.machine import cpu_summary
from glacier_mapping.metrics import load_metrics

#: Columns of the metrics browser of "Results at a glance".
BROWSER_COLUMNS: tuple[str, ...] = ("chapter", "experiment", "split", "region", "metric")


def paper_numbers() -> list[dict[str, Any]]:
    """The paper's published numbers with the selector of the matching row of this run."""
    text = (resources.files("glacier_mapping") / "paper_numbers.json").read_text()
    return json.loads(text)["numbers"]


def _matching_value(metrics: pd.DataFrame, match: dict[str, str],
                    best_of: str | None = None) -> tuple[str, str]:
    rows = metrics
    for column, wanted in match.items():
        rows = rows[rows[column].astype(str) == str(wanted)]
    if rows.empty:
        return "not computed in this run", ""
    if best_of:
        means = rows.groupby(best_of)["value"].mean()
        return f"{_format(means.max())} ({means.idxmax()})", str(match.get("chapter", ""))
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
    """Markdown of the verdicts, the paper's numbers beside this run's, and a metrics browser."""
    metrics = load_metrics(output_dir)
    lines = [
        "(results-at-a-glance)=",
        "# Results at a glance",
        "",
        f"Generated from `outputs/{profile}/` of this build (profile `{profile}`). Unless the "
        "book was built on the real benchmark, **this run's numbers come from the synthetic "
        "stand-in benchmark and small CPU models**: they test whether the paper's findings "
        "hold *here*, not the paper's values.",
        "",
        "## Which of the paper's findings hold in this run",
        "",
        "Each verdict is computed from this run's metrics (see the chapter for the evidence): "
        "*holds* when the whole 95 % interval of the effect lies on the claim's side, *fails* "
        "when it lies on the other side, *inconclusive* when it straddles the margin, when the "
        "models behind it had not converged or were trained with one seed, or when an "
        "absolute IoU is read on synthetic data.",
        "",
        *verdict_table(load_findings(output_dir)),
        "",
        "## The paper's numbers beside this run's",
        "",
        "| Claim | Paper | This run | Chapter | Source of the paper's number |",
        "|---|---|---|---|---|",
    ]
    for entry in paper_numbers():
        ours, chapter = _matching_value(metrics, entry["match"], entry.get("best_of"))
        link = f"{{doc}}`/notebooks/{chapter}`" if chapter else ""
        lines.append(
            f"| {entry['claim']} | {entry['paper']} | {ours} | {link} | {entry['status']} |"
        )
    lines += ["", "## All of this run's metrics", "",
              "Type in the box to filter the rows (e.g. `HMA`, `ece`, `spatial`); values are "
              "means over seeds with their standard deviation.", "",
              metrics_browser(metrics)]
    return "\n".join(lines) + "\n"


def verdict_table(findings: list[Finding]) -> list[str]:
    """Markdown lines of the findings' verdicts, one row per finding, in chapter order."""
    if not findings:
        return ["No findings were written by this run."]
    counts = pd.Series([f.verdict for f in findings]).value_counts()
    summary = ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICT_MARKS)
    lines = [f"{len(findings)} findings: {summary}.", "",
             "| Finding (paper) and how it is tested here | Verdict | Effect (95 % interval) "
             "| Why |",
             "|---|---|---|---|"]
    for finding in findings:
        lines.append(
            f"| {finding.statement} ({{doc}}`chapter {finding.chapter[:2]} "
            f"</notebooks/{finding.chapter}>`)<br><small>Tested as {finding.test}. Source: "
            f"{finding.source}</small> | **{VERDICT_MARKS[finding.verdict]}** | "
            f"{finding.interval()} | {finding.reason}<br><small>{finding.method}</small> |"
        )
    return lines


def metrics_browser(metrics: pd.DataFrame) -> str:
    """A filterable HTML table of every metric (mean ± sd over seeds), scrolling in its box."""
    if metrics.empty:
        return "No metrics were written by this run."
    table = (metrics.groupby(list(BROWSER_COLUMNS), dropna=False)["value"]
             .agg(["mean", "std", "count"]).reset_index())
    rows = []
    for row in table.itertuples(index=False):
        value = _format(row.mean)
        if row.count > 1 and pd.notna(row.std):
            value += f" ± {row.std:.3f} (n={row.count})"
        cells = [html.escape(str(getattr(row, c))) for c in BROWSER_COLUMNS]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in [*cells, value]) + "</tr>")
    header = "".join(f"<th>{c}</th>" for c in (*BROWSER_COLUMNS, "value"))
    return (
        '<div class="metrics-browser">\n'
        '<input type="search" placeholder="Filter metrics…" aria-label="Filter metrics" '
        'style="width:100%;max-width:24em;margin-bottom:0.5em" '
        "oninput=\"const q=this.value.toLowerCase();this.nextElementSibling.querySelectorAll("
        "'tbody tr').forEach(r=>{r.style.display=r.textContent.toLowerCase().includes(q)?'':"
        "'none'})\">\n"
        '<div class="metrics-browser-scroll" style="overflow:auto;max-height:32em;'
        'max-width:100%">\n'
        '<table style="font-size:0.85em;width:100%">'
        f"<thead><tr>{header}</tr></thead>\n<tbody>\n" + "\n".join(rows)
        + "\n</tbody></table>\n</div>\n</div>"
    )


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
        f"- CPU the times below were measured on: "
        f"{cpu_summary(manifest['cpu']) if 'cpu' in manifest else 'not recorded'}",
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
