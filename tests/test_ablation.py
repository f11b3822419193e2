"""Sensor ablation: sensor sets, their experiments and the verdicts against the baseline."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from glacier_mapping.config import load_profile
from glacier_mapping.data.benchmark import BenchmarkFiles
from glacier_mapping.data.schema import SENSOR_CHANNELS
from glacier_mapping.data.tiles import make_tile, write_tiles
from glacier_mapping.experiments.ablation import (
    BASELINE,
    SENSOR_SETS,
    ablation_experiments,
    ablation_regions,
    ablation_sets,
    common_regions,
    compare_to_baseline,
    sensor_set_name,
)
from glacier_mapping.experiments.strategies import global_experiment
from glacier_mapping.store import ArtifactStore
from glacier_mapping.workflow import Context

SIZE = 16


def _context(tmp_path, profile="quick", benchmark=None, **experiments):
    loaded = load_profile(profile)
    if experiments:
        loaded = dataclasses.replace(
            loaded, experiments=dataclasses.replace(loaded.experiments, **experiments))
    out = tmp_path / "out"
    return Context(loaded, out, ArtifactStore(out / "cache"), benchmark, "k", True)


def _tile(name, region, sensors):
    features = {s: np.full((SIZE, SIZE, SENSOR_CHANNELS[s]), 0.5, np.float32) for s in sensors}
    return make_tile(name, region, features, np.zeros((SIZE, SIZE), np.uint8),
                     (0.0, 1.0, 0.0, 1.0), SIZE)


def test_sensor_set_name():
    assert sensor_set_name(("optical", "dem")) == BASELINE
    assert sensor_set_name(["optical", "dem", "thermal"]) == "+thermal"
    assert sensor_set_name(SENSOR_SETS["all"]) == "all"
    with pytest.raises(ValueError, match="not one of the ablation sets"):
        sensor_set_name(("dem", "optical"))  # the canonical order only
    with pytest.raises(ValueError, match="optical"):
        sensor_set_name(("optical",))


def test_ablation_sets_from_the_profile(tmp_path):
    assert list(ablation_sets(_context(tmp_path))) == [BASELINE, "+SAR", "+thermal"]  # quick
    every = ablation_sets(_context(tmp_path, "smoke"))  # empty: all sets
    assert every == SENSOR_SETS
    assert ablation_sets(_context(tmp_path, ablation_sets=("+thermal", BASELINE))) == {
        "+thermal": SENSOR_SETS["+thermal"], BASELINE: SENSOR_SETS[BASELINE]}


@pytest.mark.parametrize("names", [("optical+dem", "+lidar"), ("+SAR", "+thermal")])
def test_ablation_sets_refuses_unknown_names_or_no_baseline(tmp_path, names):
    context = _context(tmp_path, ablation_sets=names)
    with pytest.raises(ValueError, match=r"Profile 'quick': experiments\.ablation_sets=") as err:
        ablation_sets(context)
    assert "include the baseline 'optical+dem'" in str(err.value)


def test_ablation_experiments_of_the_quick_profile(tmp_path):
    context = _context(tmp_path)
    specs = ablation_experiments(context, ["HMA", "ALP"])
    settings = context.profile.experiments
    assert [s.name for s in specs] == [
        f"ablation-{name}-seed{seed}" for seed in settings.ablation_seeds
        for name in ("optical+dem", "+SAR", "+thermal")]
    assert [s.seed for s in specs] == [42] * 3 + [1] * 3 + [2] * 3
    assert [s.sensors for s in specs[:3]] == [SENSOR_SETS[n]
                                              for n in ("optical+dem", "+SAR", "+thermal")]
    base = global_experiment(context)
    for spec in specs:
        assert spec.regions == ("HMA", "ALP") and spec.strategy == "global"
        assert spec.epochs == settings.ablation_epochs == 12
        assert spec.preset == settings.ablation_preset == "tiny" != base.preset
        assert spec.restart_epochs == (4, 12)
        assert spec.steps_per_epoch == base.steps_per_epoch
        assert spec.learning_rate == base.learning_rate
    assert len({s.name for s in specs}) == len(specs)


def test_ablation_experiments_seeds_epochs_and_restarts(tmp_path):
    context = _context(tmp_path, ablation_epochs=6, ablation_preset=None)
    specs = ablation_experiments(context, ["HMA"], seeds=[5])
    assert [s.name for s in specs] == [
        "ablation-optical+dem-seed5", "ablation-+SAR-seed5", "ablation-+thermal-seed5"]
    assert all(s.seed == 5 and s.epochs == 6 for s in specs)
    assert all(s.restart_epochs == (4, 6) for s in specs)  # restarts past 6 epochs are cut
    assert all(s.preset == context.profile.model.preset for s in specs)
    defaults = ablation_experiments(_context(tmp_path, ablation_epochs=None), ["HMA"])
    assert all(s.epochs == 12 and s.restart_epochs == (4, 12) for s in defaults)
    smoke = ablation_experiments(_context(tmp_path, "smoke"), ["ALP"])
    assert len(smoke) == len(SENSOR_SETS) and all(s.restart_epochs == (1,) for s in smoke)
    with pytest.raises(ValueError, match="No region carries every sensor"):
        ablation_experiments(context, [])


def test_ablation_regions(tmp_path):
    root = tmp_path / "bench"
    root.mkdir()
    everything = tuple(SENSOR_CHANNELS)
    base = ("optical", "dem")
    files = {
        "train": [_tile("ALP-0-0", "ALP", everything), _tile("HMA1-0-0", "HMA", everything),
                  _tile("NZ-0-0", "NZ", base), _tile("SC2-0-0", "SC", (*base, "thermal"))],
        "val": [_tile("ALP-0-1", "ALP", base)],
        "test": [_tile("ALP-1-0", "ALP", everything), _tile("HMA1-1-0", "HMA", base),
                 _tile("NZ-1-0", "NZ", everything), _tile("SC2-1-0", "SC", (*base, "thermal"))],
    }
    for split, tiles in files.items():
        write_tiles(root / f"{split}.hdf5", tiles)
    bench = BenchmarkFiles(root, root / "train.hdf5", root / "val.hdf5", root / "test.hdf5",
                           None, None, [])
    regions = ablation_regions(_context(tmp_path, benchmark=bench))
    assert regions == {BASELINE: ["ALP", "HMA", "NZ", "SC"], "+SAR": ["ALP"],
                       "+thermal": ["ALP", "SC"], "all": ["ALP"]}
    assert common_regions(regions) == ["ALP"]


def _per_seed(differences, baseline=0.5, region="HMA", name="+SAR"):
    rows = []
    for seed, difference in enumerate(differences):
        rows.append({"region": region, "sensor set": BASELINE, "seed": seed,
                     "trained on": "HMA+ALP", "iou": baseline + 0.01 * seed})
        rows.append({"region": region, "sensor set": name, "seed": seed,
                     "trained on": "HMA+ALP", "iou": baseline + 0.01 * seed + difference})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("differences", "verdict"), [
    ([0.10, 0.12, 0.11], "better"),
    ([-0.10, -0.12, -0.11], "worse"),
    ([0.10, -0.10, 0.02], "no difference"),
    ([0.3], "undetermined (1 seed)"),
])
def test_compare_to_baseline_verdicts(differences, verdict):
    table = compare_to_baseline(_per_seed(differences))
    assert list(table.index) == [("HMA", "+SAR")]
    row = table.loc[("HMA", "+SAR")]
    assert row["verdict"] == verdict
    assert row["seeds"] == len(differences)
    assert row["mean difference"] == pytest.approx(np.mean(differences))
    assert row["IoU"] - row["baseline IoU"] == pytest.approx(np.mean(differences))
    if len(differences) > 1:
        assert row["interval low"] < row["mean difference"] < row["interval high"]
    else:
        assert np.isnan(row["interval low"]) and np.isnan(row["interval high"])


def test_compare_to_baseline_pairs_by_seed_region_and_training_regions():
    per_seed = pd.concat([
        _per_seed([0.10, 0.12, 0.11]),
        _per_seed([-0.05, -0.06, -0.04], region="ALP", name="+thermal"),
        # another comparison group (trained on ALP only) with its own, lower baseline
        _per_seed([0.5], baseline=0.3, region="ALP", name="+SAR").assign(
            **{"trained on": "ALP"}),
    ], ignore_index=True)
    table = compare_to_baseline(per_seed)
    assert sorted(table.index) == [("ALP", "+SAR"), ("ALP", "+thermal"), ("HMA", "+SAR")]
    assert table.loc[("ALP", "+thermal"), "verdict"] == "worse"
    assert table.loc[("HMA", "+SAR"), "verdict"] == "better"
    alone = table.loc[("ALP", "+SAR")]
    assert alone["seeds"] == 1 and alone["mean difference"] == pytest.approx(0.5)
    assert alone["baseline IoU"] == pytest.approx(0.3)
    # Seeds are paired: a baseline seed that is missing drops that seed.
    unpaired = _per_seed([0.10, 0.12, 0.11])
    unpaired = unpaired[~((unpaired["sensor set"] == BASELINE) & (unpaired["seed"] == 2))]
    assert compare_to_baseline(unpaired).loc[("HMA", "+SAR"), "seeds"] == 2
