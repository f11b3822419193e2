"""Chapter 07 (IoU estimation): which predictions are estimated, the tidy rows, the findings."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from glacier_mapping import evidence
from glacier_mapping.claims import CLAIMS
from glacier_mapping.evaluation import OVERALL
from glacier_mapping.experiments.runner import Experiment
from glacier_mapping.findings import Finding, judge, publish_findings
from glacier_mapping.metrics import model_columns, table_rows
from glacier_mapping.trained_models import histories
from glacier_mapping.uncertainty import correlation_interval
from glacier_mapping.workflow import Context

CHAPTER = "07_iou_estimation"


def estimation_metric_rows(
    levels: Mapping[str, pd.DataFrame], quality: pd.DataFrame, trained: Experiment
) -> pd.DataFrame:
    """Tidy rows: ``iou`` and ``iou_estimated`` per tile, region and scene, plus quality.

    ``experiment`` names the unit (``tile <name>``, ``region``, ``scene <name>``); quality rows
    (``iou_estimate_pearson_r``, ``_mae``, ``_bias``, ``_n``) have region ``ALL``, split
    ``all`` and the level as experiment.
    """
    columns = model_columns(trained.spec)
    units = {"tile": lambda f: "tile " + f["tile"], "region (test)": lambda f: "region",
             "scene (independent)": lambda f: "scene " + f["scene"]}
    frames = [table_rows(frame.assign(experiment=units[level](frame)),
                         {"iou": "iou", "iou_estimated": "iou_estimated"}, **columns)
              for level, frame in levels.items() if level in units]
    summary = quality.reset_index().assign(split="all", region=OVERALL)
    summary["experiment"] = summary["level"]
    frames.append(table_rows(summary, {
        key: f"iou_estimate_{key}" for key in ("pearson_r", "mae", "bias", "n")}, **columns))
    return pd.concat(frames, ignore_index=True)


def estimation_findings(context: Context, model: Experiment,
                        levels: Mapping[str, pd.DataFrame]) -> list[Finding]:  # noqa: ANN401
    """Chapter 07: correlation of estimated and true IoU per tile, region and scene."""
    late = evidence.unconverged(histories([model]))
    keys = {"tile": "iou_estimate_tiles", "region (test)": "iou_estimate_regions",
            "scene (independent)": "iou_estimate_scenes"}
    what = {"tile": "tiles", "region (test)": "regions", "scene (independent)": "scenes"}
    return publish_findings(context.output_dir, CHAPTER, [
        judge(CLAIMS[key], correlation_interval(levels[level]["iou_estimated"],
                                                levels[level]["iou"], what=what[level]),
              synthetic=context.synthetic, models=[model.card.name], unconverged=late)
        for level, key in keys.items() if level in levels
    ])
