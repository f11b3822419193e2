"""Area intervals from calibrated probabilities with spatially correlated errors."""

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage, special
from synthetic_fields import SIZE, exponential_field, gaussian_field, synthetic_scene

from glacier_mapping.area_uncertainty import (
    AcquisitionShift,
    bootstrap_areas,
    calibrator_shift,
    choose_block_size,
    correlogram,
    fit_logit_shift,
    glacier_probability,
)
from glacier_mapping.data.scenes import Grid
from glacier_mapping.pixel_geometry import expand_labels, pixel_areas_km2

GRID = Grid(CRS.from_epsg(32632), Affine(30.0, 0.0, 500_000.0, 0.0, -30.0, 5_100_000.0),
            SIZE, SIZE)


@pytest.mark.parametrize("length", [4.0, 8.0])
def test_block_size_of_an_exponential_field(length):
    rng = np.random.default_rng(int(length))
    field = np.stack([exponential_field(rng, 256, length) for _ in range(4)])
    chosen = choose_block_size(field)
    assert chosen.correlation_length_px == pytest.approx(length, rel=0.1)
    # the integral of exp(-h / L) over the plane is 2 pi L^2; 5 L keeps 96 % of it
    assert chosen.block_px == pytest.approx(np.sqrt(0.96 * 2 * np.pi) * length, rel=0.12)


def test_block_size_of_a_gaussian_field():
    rng = np.random.default_rng(3)
    sigma = 3.0
    field = np.stack([gaussian_field(rng, 256, sigma) for _ in range(4)])
    chosen = choose_block_size(field)
    assert chosen.correlation_length_px == pytest.approx(2 * sigma, rel=0.1)  # 1/e at 2 sigma
    assert chosen.block_px == pytest.approx(np.sqrt(4 * np.pi) * sigma, rel=0.12)


def test_correlogram_ignores_invalid_pixels():
    rng = np.random.default_rng(4)
    field = gaussian_field(rng, 128, 2.0)
    valid = np.ones_like(field, dtype=bool)
    valid[:, 64:] = False
    half = correlogram(field[:, :64], max_lag=10)
    masked = correlogram(np.where(valid, field, 99.0), valid, max_lag=10)
    np.testing.assert_allclose(masked, half, atol=1e-9)
    assert half[10, 10] == 1.0


def test_white_noise_needs_no_blocks_and_structure_is_refused():
    rng = np.random.default_rng(5)
    assert choose_block_size(rng.standard_normal((128, 128))).block_px == 1
    ramp = np.add.outer(np.arange(64.0), np.arange(64.0))
    with pytest.raises(ValueError, match="stays above 1/e"):
        choose_block_size(ramp)


def test_glacier_probability_from_class_and_confidence():
    classes = np.array([[1, 0, 255]], dtype=np.uint8)
    conf = np.array([[0.9, 0.8, 0.7]])
    np.testing.assert_allclose(glacier_probability(classes, conf), [[0.9, 0.2, np.nan]])


def test_draws_are_seeded_and_average_to_the_expected_area():
    rng = np.random.default_rng(6)
    p = rng.uniform(0, 1, (40, 50))
    p[0, 0] = np.nan
    zones = np.zeros((40, 50), dtype=np.int32)
    zones[:20] = 3
    zones[20:, :25] = 7
    areas = np.full((40, 50), 0.0009)
    first = bootstrap_areas(p, zones, areas, block_px=4, samples=2000, seed=1)
    again = bootstrap_areas(p, zones, areas, block_px=4, samples=2000, seed=1)
    np.testing.assert_array_equal(first.samples_km2, again.samples_km2)
    assert list(first.labels) == [3, 7]
    expected = [np.nansum(p[:20]) * 0.0009, p[20:, :25].sum() * 0.0009]
    np.testing.assert_allclose(first.expected_km2, expected)
    np.testing.assert_allclose(first.samples_km2.mean(axis=0), expected, rtol=0.02)
    assert first.scene_expected_km2 == pytest.approx(np.nansum(p) * 0.0009)
    low, high = first.interval()
    assert (low < first.expected_km2).all() and (high > first.expected_km2).all()
    certain = bootstrap_areas(np.round(p), zones, areas, block_px=4, samples=5)
    assert np.ptp(certain.samples_km2, axis=0).max() == 0.0


def test_interval_coverage_with_correlated_errors():
    rng = np.random.default_rng(2024)
    validation = [synthetic_scene(rng) for _ in range(8)]
    probability = np.stack([p for p, _ in validation])
    residual = np.stack([truth - p for p, truth in validation])
    square_root = choose_block_size(residual)
    block = choose_block_size(residual, probability)
    assert block.block_px > square_root.block_px
    areas = pixel_areas_km2(GRID)
    hits = {"blocks": [], "pixels": []}
    scene_hits = []
    for scene in range(30):
        p, truth = synthetic_scene(rng)
        labels = ndimage.label(p > 0.5)[0]
        zones = expand_labels(labels, GRID, 100.0)
        true_area = np.bincount(zones.ravel(), weights=(truth * areas).ravel())
        for name, size in (("blocks", block.block_px), ("pixels", 1)):
            drawn = bootstrap_areas(p, zones, areas, size, samples=400, seed=scene)
            low, high = drawn.interval(0.9)
            truth_zone = true_area[drawn.labels]
            hits[name].extend((truth_zone >= low) & (truth_zone <= high))
            if name == "blocks":
                scene_low, scene_high = drawn.scene_interval(0.9)
                scene_hits.append(scene_low <= (truth * areas).sum() <= scene_high)
    coverage = {name: float(np.mean(values)) for name, values in hits.items()}
    print(f"\n90 % interval coverage over {len(hits['blocks'])} glaciers in 30 scenes: "
          f"{coverage['blocks']:.3f} with {block.block_px} px blocks (correlation length "
          f"{block.correlation_length_px:.1f} px), {coverage['pixels']:.3f} with independent "
          f"pixels; scene totals {np.mean(scene_hits):.3f}")
    assert 0.80 <= coverage["blocks"] <= 0.98
    assert coverage["pixels"] < coverage["blocks"]


def test_a_known_logit_shift_is_recovered():
    rng = np.random.default_rng(8)
    p = rng.uniform(0.02, 0.98, 200_000)
    truth = rng.uniform(size=p.size) < special.expit(special.logit(p) - 1.2)
    assert fit_logit_shift(p, truth) == pytest.approx(-1.2, abs=0.03)
    assert np.isnan(fit_logit_shift(np.ones(10), np.ones(10)))  # p = 1 cannot be moved


def test_acquisition_shift_spread_and_record():
    shift = AcquisitionShift.from_shifts(np.array([-1.0, 0.0, 0.5, np.nan]))
    assert (shift.mean_logit, shift.acquisitions) == (pytest.approx(-0.5 / 3), 3)
    record = {"area_errors": {"block_px": 4, "radius_px": 9, "correlation_length_px": 2.0,
                              "logit_shift": shift.to_json()}}
    assert calibrator_shift(record).acquisitions == 3
    assert calibrator_shift({"area_errors": {"block_px": 4}}) is None
    with pytest.raises(ValueError, match="area_errors.logit_shift"):
        calibrator_shift({"area_errors": {"logit_shift": {"mean_logit": 0.0, "sd_logit": -1,
                                                          "acquisitions": 3}}})
    with pytest.raises(ValueError, match="at least 2"):
        AcquisitionShift.from_shifts(np.array([0.3]))


def test_a_scene_wide_shift_widens_and_moves_the_interval():
    rng = np.random.default_rng(9)
    p = rng.uniform(0.05, 0.95, (60, 60))
    zones = np.ones((60, 60), dtype=np.int32)
    areas = np.full((60, 60), 0.0009)
    plain = bootstrap_areas(p, zones, areas, block_px=6, samples=400, seed=2)
    none = AcquisitionShift(0.0, 0.0, 5)
    same = bootstrap_areas(p, zones, areas, block_px=6, samples=400, seed=2, shift=none)
    assert same.expected_km2[0] == pytest.approx(plain.expected_km2[0])
    spread = bootstrap_areas(p, zones, areas, block_px=6, samples=400, seed=2,
                             shift=AcquisitionShift(0.0, 1.0, 5))
    width = np.diff(np.r_[plain.interval()].ravel())[0]
    assert np.diff(np.r_[spread.interval()].ravel())[0] > 2 * width
    lower = bootstrap_areas(p, zones, areas, block_px=6, samples=400, seed=2,
                            shift=AcquisitionShift(-1.0, 0.0, 5))
    expected = (special.expit(special.logit(p) - 1.0) * areas).sum()
    assert lower.expected_km2[0] == pytest.approx(expected)
    assert lower.samples_km2.mean() == pytest.approx(expected, rel=0.02)
