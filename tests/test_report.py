"""Generated pages follow the run's metrics and manifest."""

import json

import pandas as pd
import pytest

from glacier_mapping.metrics import COLUMNS, load_metrics
from glacier_mapping.report import build_information, paper_comparison, results_at_a_glance


def _write(output_dir, alps_iou):
    rows = [
        {"chapter": "02_glavitu_training", "experiment": "glavitu-global", "model": "glavitu",
         "preset": "small", "strategy": "global", "sensors": "optical+dem", "split": "test",
         "region": "ALP", "seed": 42, "metric": "iou", "value": alps_iou},
        {"chapter": "02_glavitu_training", "experiment": "glavitu-global", "model": "glavitu",
         "preset": "small", "strategy": "global", "sensors": "optical+dem", "split": "test",
         "region": "ALL", "seed": 42, "metric": "iou_mean_of_regions", "value": 0.7},
    ]
    (output_dir / "metrics").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows)[list(COLUMNS)].to_csv(
        output_dir / "metrics" / "02_glavitu_training.csv", index=False)


def test_results_page_changes_with_the_metrics(tmp_path):
    _write(tmp_path, 0.612)
    first = results_at_a_glance(tmp_path, "quick")
    assert "0.612" in first and "0.844" in first
    _write(tmp_path, 0.733)
    second = results_at_a_glance(tmp_path, "quick")
    assert "0.733" in second and "0.612" not in second
    assert "not computed in this run" in second  # claims without a matching row say so


def test_results_page_starts_with_the_verdicts_and_ends_with_a_browser(tmp_path):
    from glacier_mapping.claims import CLAIMS
    from glacier_mapping.findings import judge, write_findings
    from glacier_mapping.uncertainty import Estimate

    _write(tmp_path, 0.612)
    write_findings(tmp_path, "02_glavitu_training", [
        judge(CLAIMS["debris_region_drop"], Estimate(0.2, 0.1, 0.3, "bootstrap", 20),
              synthetic=True),
        judge(CLAIMS["glavitu_beats_deeplab"], Estimate(0.03, 0.01, 0.05, "bootstrap", 20),
              synthetic=True, seeds=1),
    ])
    page = results_at_a_glance(tmp_path, "quick")
    verdicts = page.index("Which of the paper's findings hold")
    assert verdicts < page.index("The paper's numbers beside") < page.index("All of this run")
    assert "2 findings: 1 holds, 0 fails, 1 inconclusive" in page
    assert "**holds ✓**" in page and "one training seed" in page
    assert '<input type="search"' in page and "<td>iou_mean_of_regions</td>" in page


def test_paper_comparison_for_one_chapter(tmp_path):
    _write(tmp_path, 0.5)
    table = paper_comparison(load_metrics(tmp_path), "02_glavitu_training")
    alps = table[table.claim.str.startswith("GlaViTU, optical+DEM, European Alps")]
    assert alps["this run"].item() == "0.500" and alps["paper"].item() == 0.844


def test_metrics_without_required_columns_are_refused(tmp_path):
    (tmp_path / "metrics").mkdir()
    pd.DataFrame({"metric": ["iou"], "value": [1]}).to_csv(tmp_path / "metrics" / "x.csv")
    with pytest.raises(ValueError, match="lack columns"):
        load_metrics(tmp_path)


def test_build_information_lists_notebooks(tmp_path):
    manifest = {
        "profile": {"name": "quick", "description": "d"}, "seed": 42, "git_commit": "abc123",
        "platform": "Linux", "cpu_count": 2, "started": "t", "total_notebook_seconds": 12.5,
        "notebooks": [{"notebook": "01_x", "status": "ok", "seconds": 12.5,
                       "peak_memory_mb": 300.0, "artifacts_reused": 1,
                       "artifacts_computed": 0}],
        "versions": {"keras": "3.15.1"},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    page = build_information(tmp_path)
    assert "abc123" in page and "| 01_x | ok | 12.5 | 300.0 | 1 | 0 |" in page
    assert "| keras | 3.15.1 |" in page
    with pytest.raises(FileNotFoundError, match="glacier-mapping run"):
        build_information(tmp_path / "missing")
