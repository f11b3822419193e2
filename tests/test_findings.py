"""Findings from hand-made metrics: every verdict kind, the convergence rule and the intervals."""

import math

import numpy as np
import pandas as pd
import pytest

from glacier_mapping import evidence
from glacier_mapping.claims import CLAIMS, claims_of
from glacier_mapping.convergence import assess
from glacier_mapping.findings import (
    Claim,
    findings_table,
    judge,
    load_findings,
    write_findings,
)
from glacier_mapping.uncertainty import (
    Estimate,
    bootstrap,
    correlation_interval,
    pooled_iou,
    seed_interval,
)

CLAIM = Claim(key="a_beats_b", chapter="02_x", statement="A beats B", source="test",
              test="IoU A − B")


def tiles_of(model: str, tp: int, fp: int, fn: int, regions=("R1", "R2", "R3"), per=6,
             jitter=0, seed=0) -> pd.DataFrame:
    """Hand-made tile counts: ``per`` tiles per region with the given counts (+- jitter)."""
    rng = np.random.default_rng(seed)
    rows = []
    for region in regions:
        for index in range(per):
            noise = rng.integers(-jitter, jitter + 1, 3) if jitter else (0, 0, 0)
            rows.append({"tile": f"{region}-{index}", "region": region, "model": model,
                         "tp": tp + noise[0], "fp": fp + noise[1], "fn": fn + noise[2]})
    return pd.DataFrame(rows)


def test_clear_gain_holds_and_clear_loss_fails():
    tiles = pd.concat([tiles_of("A", 90, 5, 5, jitter=3), tiles_of("B", 70, 15, 15, jitter=3,
                                                                       seed=1)])
    gain = evidence.model_difference(tiles, "A", "B")
    assert gain.value == pytest.approx(0.9 - 0.7, abs=0.02) and gain.low > 0.1
    assert judge(CLAIM, gain, synthetic=True).verdict == "holds"
    margin = evidence.region_drop(tiles[tiles.model == "A"].assign(
        tp=lambda f: np.where(f.region == "R3", 20, f.tp)), "R3")
    assert margin.value > 0.15 and margin.low > 0
    loss = evidence.model_difference(tiles, "B", "A")
    finding = judge(CLAIM, loss, synthetic=True)
    assert finding.verdict == "fails" and "below 0" in finding.reason


def test_difference_within_noise_is_inconclusive():
    rng = np.random.default_rng(3)
    rows = []
    for model in ("A", "B"):
        for region in ("R1", "R2"):
            for index in range(8):
                tp = int(rng.integers(20, 90))
                rows.append({"tile": f"{region}-{index}", "region": region, "model": model,
                             "tp": tp, "fp": int(rng.integers(5, 40)), "fn": 100 - tp})
    estimate = evidence.model_difference(pd.DataFrame(rows), "A", "B")
    assert estimate.low < 0 < estimate.high
    finding = judge(CLAIM, estimate, synthetic=True)
    assert finding.verdict == "inconclusive" and "within noise" in finding.reason


def test_unconverged_models_make_a_clear_gain_inconclusive():
    gain = Estimate(0.2, 0.15, 0.25, "hand-made", 10)
    finding = judge(CLAIM, gain, synthetic=True, models=["A", "B"], unconverged=["B"])
    assert finding.verdict == "inconclusive" and "not levelled off: B" in finding.reason
    training = Claim(key="t", chapter="02_x", statement="s", source="s", test="t",
                     compares_training=True)
    both = judge(training, gain, synthetic=True, unconverged=["B"], seeds=1)
    assert "not levelled off" in both.reason and "one training seed" in both.reason
    assert "inconclusive" in finding.sentence().lower()


def test_too_few_seeds_level_claims_and_equivalence():
    one_seed = seed_interval([0.05])
    assert one_seed.value == 0.05 and not one_seed.has_interval
    assert "too few" in judge(CLAIM, one_seed, synthetic=True).reason
    level = Claim(key="lvl", chapter="02_x", statement="IoU > 0.85", source="t", test="IoU",
                  kind="level", margin=0.85)
    high = Estimate(0.95, 0.93, 0.97, "hand-made", 10)
    assert judge(level, high, synthetic=True).verdict == "inconclusive"
    assert judge(level, high, synthetic=False).verdict == "holds"
    assert judge(level, Estimate(0.5, 0.4, 0.6, "h", 10), synthetic=False).verdict == "fails"
    within = Claim(key="w", chapter="02_x", statement="little", source="t", test="d",
                   kind="within", margin=0.02)
    assert judge(within, Estimate(0.0, -0.01, 0.015, "h", 3), synthetic=True).verdict == "holds"
    assert judge(within, Estimate(0.1, 0.05, 0.15, "h", 3), synthetic=True).verdict == "fails"
    assert judge(within, Estimate(0.0, -0.05, 0.05, "h", 3),
                 synthetic=True).verdict == "inconclusive"
    with pytest.raises(ValueError, match="kind='more'"):
        Claim(key="x", chapter="c", statement="s", source="s", test="t", kind="more")


def test_seed_interval_is_a_t_interval():
    estimate = seed_interval([0.1, 0.2, 0.3])
    assert estimate.value == pytest.approx(0.2)
    assert estimate.high - estimate.value == pytest.approx(4.3027 * 0.1 / math.sqrt(3), rel=1e-3)


def test_bootstrap_is_paired_and_seeded():
    a = tiles_of("A", 80, 10, 10, jitter=5)
    b = a.assign(model="B", tp=a.tp - 10, fn=a.fn + 10)  # B is A minus 10 TP on every tile
    tiles = pd.concat([a, b])
    first = evidence.pooled_difference(tiles, "A", "B", seed=5)
    # Paired: the difference barely varies although the tiles do.
    assert first.high - first.low < 0.02 and first.low > 0.05
    assert evidence.pooled_difference(tiles, "A", "B", seed=5) == first
    single = bootstrap(a.head(1), pooled_iou)
    assert not single.has_interval
    one_per_region = bootstrap(a.groupby("region").head(1), pooled_iou)
    assert not one_per_region.has_interval


def test_weakest_region_decides_every_region_claims():
    estimates = {"R1": Estimate(0.1, 0.05, 0.15, "h", 3), "R2": Estimate(0.04, 0.01, 0.07, "h", 3)}
    assert evidence.weakest_region(estimates)[0] == "R2"
    estimates["R3"] = Estimate(-0.1, -0.15, -0.05, "h", 3)
    assert evidence.weakest_region(estimates)[0] == "R3"
    estimates["R4"] = Estimate(0.1, float("nan"), float("nan"), "h", 1)
    assert evidence.weakest_region(estimates)[0] == "R3"  # a clear failure still decides


def test_seed_gains_pair_models_by_seed():
    per_seed = pd.DataFrame([
        {"region": r, "seed": s, "sensor set": name, "iou": base + (0.1 if name == "sar" else 0)
         + 0.01 * s}
        for r, base in (("R1", 0.5), ("R2", 0.6)) for s in (1, 2, 3)
        for name in ("optical", "sar")])
    gains = evidence.seed_gains(per_seed, "sar", "optical")
    assert set(gains) == {"R1", "R2"}
    assert gains["R1"].value == pytest.approx(0.1) and gains["R1"].n == 3
    assert evidence.mean_seed_gain(per_seed, "sar", "optical").value == pytest.approx(0.1)


def test_convergence_rule():
    def history(values):
        return pd.DataFrame({"epoch": range(1, len(values) + 1),
                             "val_output_glacier_iou": values})

    levelled = assess(history([0.3, 0.5, 0.6, 0.62, 0.615, 0.625]))
    assert levelled.converged and levelled.window == 2
    rising = assess(history([0.3, 0.4, 0.5, 0.55, 0.6, 0.65]))
    assert not rising.converged and "still improving" in rising.reason
    short = assess(history([0.3, 0.5, 0.6]))
    assert not short.converged and "too short" in short.reason
    with pytest.raises(ValueError, match="no validation glacier-IoU column"):
        assess(pd.DataFrame({"epoch": [1], "loss": [0.3]}))
    table = evidence.convergence_table({"a": history([0.3, 0.5, 0.6, 0.62, 0.615, 0.625])})
    assert bool(table.loc["a", "levelled off"])


def test_correlation_interval_needs_points():
    x = np.linspace(0, 1, 30)
    strong = correlation_interval(x, x + np.random.default_rng(0).normal(0, 0.05, 30))
    assert strong.low > 0.9
    assert not correlation_interval([0.1, 0.5, 0.3], [0.2, 0.4, 0.1]).has_interval


def test_ece_difference_and_block_counts():
    rows = []
    for index in range(10):
        for name, offset in (("raw", 0.2), ("calibrated", 0.0)):
            rows.append({"tile": f"t{index}", "region": "R", "calibrator": name, "bin": 5,
                         "count": 100, "confidence_sum": 80.0 + 100 * offset,
                         "correct_sum": 80.0})
    estimate = evidence.ece_difference(pd.DataFrame(rows), "raw", "calibrated")
    assert estimate.value == pytest.approx(0.2) and estimate.low == pytest.approx(0.2)
    predicted = np.zeros((8, 8), bool)
    predicted[:4] = True
    blocks = evidence.block_counts(predicted, np.ones((8, 8), bool), 4)
    assert len(blocks) == 4 and blocks.tp.sum() == 32 and blocks.fn.sum() == 32


def test_findings_round_trip_and_registry(tmp_path):
    finding = judge(CLAIM, Estimate(0.1, float("nan"), float("nan"), "one seed", 1),
                    synthetic=True, models=["A"])
    write_findings(tmp_path, "02_x", [finding])
    loaded = load_findings(tmp_path)
    assert loaded[0].verdict == "inconclusive" and math.isnan(loaded[0].low)
    assert "inconclusive ?" in findings_table(loaded).data
    chapters = {claim.chapter for claim in CLAIMS.values()}
    assert {f"0{n}" for n in range(2, 10)} == {c[:2] for c in chapters}
    assert all(claims_of(c) for c in chapters)


def test_training_comparisons_need_two_seeds():
    claim = Claim(key="t", chapter="02_x", statement="A beats B", source="t", test="A − B",
                  compares_training=True)
    clear = Estimate(0.2, 0.15, 0.25, "bootstrap over tiles", 30)
    one = judge(claim, clear, synthetic=True, seeds=1)
    assert one.verdict == "inconclusive" and "one training seed" in one.reason
    assert judge(claim, clear, synthetic=True, seeds=3).verdict == "holds"


def test_region_encoding_diagnosis_names_the_supported_causes(tmp_path):
    from types import SimpleNamespace

    from glacier_mapping.chapters.strategy_comparison import region_encoding_diagnosis

    def model(name, values):
        path = tmp_path / f"{name}.csv"
        pd.DataFrame({"epoch": range(1, len(values) + 1),
                      "val_output_glacier_iou": values}).to_csv(path, index=False)
        return SimpleNamespace(card=SimpleNamespace(name=name),
                               history=lambda p=path: pd.read_csv(p))

    models = {"global": model("g", [0.3, 0.5, 0.6, 0.62, 0.61, 0.615]),
              "region_encoding": model("r", [0.2, 0.3, 0.4, 0.45, 0.5, 0.55])}
    control = pd.DataFrame({"mean of region IoUs": [0.60, 0.61, 0.62]},
                           index=["true region", "unknown slot", "uniform 1/12"])
    text = region_encoding_diagnosis(models, control, gap=-0.06)
    assert "**undertraining**" in text and "cost of the extra branch" in text
    helpful = control.assign(**{"mean of region IoUs": [0.7, 0.6, 0.6]})
    text = region_encoding_diagnosis(models, helpful, gap=-0.06)
    assert "**undertraining**" in text and "cost of the extra branch" not in text
    assert "no gap to explain" in region_encoding_diagnosis(models, helpful, gap=0.01)
