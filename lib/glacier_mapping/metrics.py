"""The book's tidy metrics: one row per number, in ``outputs/<profile>/metrics/<chapter>.csv``.

This module owns the columns, the row builders and the writer and reader; every chapter's
numbers pass through it, and the Results page and the findings read them back with
:func:`load_metrics`. ``region`` is ``ALL`` for pooled or averaged values; columns that do not
apply are empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from glacier_mapping.evaluation import (
    COUNT_COLUMNS,
    OVERALL,
    SCORE_NAMES,
    metrics_from_counts,
    paper_average,
)
from glacier_mapping.store import atomic_path

#: The columns of every metrics file, in order.
COLUMNS: tuple[str, ...] = (
    "chapter", "experiment", "model", "preset", "strategy", "sensors", "split", "region", "seed",
    "metric", "value",
)


class ModelSpec(Protocol):
    """What the metrics need to know of an experiment (``ExperimentSpec`` has it)."""

    architecture: str
    preset: str
    strategy: str
    sensors: tuple[str, ...]
    seed: int


def model_columns(spec: ModelSpec) -> dict[str, Any]:
    """The ``model, preset, strategy, sensors, seed`` columns of an experiment's rows."""
    return {"model": spec.architecture, "preset": spec.preset, "strategy": spec.strategy,
            "sensors": "+".join(spec.sensors), "seed": spec.seed}


def value_rows(values: Mapping[str, float], **columns: Any) -> pd.DataFrame:  # noqa: ANN401
    """One row per named value (``metric``, ``value``), each with the given columns."""
    return pd.DataFrame([{**columns, "metric": name, "value": value}
                         for name, value in values.items()])


def count_rows(counts: Mapping[str, float], metrics: Sequence[str] = ("iou", "precision", "recall"),
               **columns: Any) -> pd.DataFrame:  # noqa: ANN401
    """Rows of the scores computed from confusion counts (IoU, precision, recall by default)."""
    scores = metrics_from_counts(counts)
    return value_rows({name: scores[name] for name in metrics}, **columns)


def table_rows(frame: pd.DataFrame, metric_columns: Mapping[str, str],
               experiment: str | None = None, **columns: Any) -> pd.DataFrame:  # noqa: ANN401
    """Rows from a wide table with ``split`` and ``region`` columns, one per metric column.

    Args:
        frame: One row per measurement; ``experiment`` is taken from its ``experiment`` column
            when present, else from the argument.
        metric_columns: Column of ``frame`` -> metric name.
        experiment: Experiment name when ``frame`` has no ``experiment`` column.
        **columns: Further columns of every row (e.g. :func:`model_columns`).
    """
    return pd.DataFrame([
        {**columns, "experiment": record.get("experiment", experiment),
         "split": record["split"], "region": record["region"], "metric": metric,
         "value": float(record[column])}
        for record in frame.to_dict("records") for column, metric in metric_columns.items()
    ])


def evaluation_rows(evaluation: pd.DataFrame, **columns: Any) -> pd.DataFrame:  # noqa: ANN401
    """Rows of an :func:`~glacier_mapping.evaluation.evaluate_predictions` table.

    One row per region-level score and count (region ``ALL`` for the pooled values), plus
    ``iou_mean_of_regions`` and ``iou_std_of_regions`` (the paper's average, see
    :func:`~glacier_mapping.evaluation.paper_average`); tile and subregion rows are left out.

    Raises:
        ValueError: if ``evaluation`` is not an ``evaluate_predictions`` table.
    """
    needed = ("level", "region", *COUNT_COLUMNS, *SCORE_NAMES)
    missing = [name for name in needed if name not in evaluation]
    if missing:
        raise ValueError(f"The evaluation lacks columns {missing}; pass the output of "
                         "evaluation.evaluate_predictions.")
    rows = evaluation[evaluation["level"].isin(("region", "overall"))]
    long = rows.melt(id_vars=["region"], value_vars=[*SCORE_NAMES, *COUNT_COLUMNS],
                     var_name="metric", value_name="value")
    mean, spread = paper_average(rows.loc[rows["level"] == "region", "iou"].to_numpy())
    summary = pd.DataFrame({"region": OVERALL, "metric": ["iou_mean_of_regions",
                                                          "iou_std_of_regions"],
                            "value": [mean, spread]})
    long = pd.concat([long, summary], ignore_index=True)
    long = long.assign(**columns, value=long["value"].astype("float64"))
    return long[[c for c in COLUMNS if c in long]].reset_index(drop=True)


def write_metrics(path: str | Path, chapter: str, rows: pd.DataFrame) -> Path:
    """Write a chapter's rows atomically with every column of :data:`COLUMNS`."""
    frame = rows.copy()
    frame["chapter"] = chapter
    for column in COLUMNS:
        if column not in frame:
            frame[column] = ""
    with atomic_path(path) as tmp:
        frame[list(COLUMNS)].to_csv(tmp, index=False)
    return Path(path)


def load_metrics(output_dir: str | Path) -> pd.DataFrame:
    """All metrics files of a run, concatenated (empty frame when there are none)."""
    files = sorted((Path(output_dir) / "metrics").glob("*.csv"))
    frames = [pd.read_csv(f, dtype={"seed": "string"}, keep_default_na=False) for f in files]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    metrics = pd.concat(frames, ignore_index=True)
    missing = set(COLUMNS) - set(metrics.columns)
    if missing:
        raise ValueError(f"Metrics files in {output_dir}/metrics lack columns {sorted(missing)}.")
    metrics["value"] = pd.to_numeric(metrics["value"], errors="coerce")
    return metrics
