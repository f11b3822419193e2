import numpy as np
import pytest

from glacier_mapping.data.regions import REGIONS
from glacier_mapping.data.synthetic import SurfaceClass, generate_scene, parse_date

SIZE = 192


@pytest.fixture(scope="module")
def scenes():
    return {code: generate_scene(r, SIZE, 3, r.year) for code, r in REGIONS.items()}


def test_deterministic_and_seed_dependent():
    region = REGIONS["ALP"]
    a = generate_scene(region, 96, 1, 2015)
    b = generate_scene(region, 96, 1, 2015)
    c = generate_scene(region, 96, 2, 2015)
    for name in a.features:
        np.testing.assert_array_equal(a.features[name], b.features[name])
    assert not np.array_equal(a.features["optical"], c.features["optical"])


def test_later_date_same_terrain_more_retreat():
    region = REGIONS["SVAL"]
    main = generate_scene(region, SIZE, 0, 2020)
    later = generate_scene(region, SIZE, 0, "2026-08-31")
    assert later.ela > main.ela
    assert later.labels.sum() < main.labels.sum()
    np.testing.assert_array_equal(main.features["dem"][..., 1], later.features["dem"][..., 1])
    assert not np.array_equal(main.features["optical"], later.features["optical"])


def test_only_available_sensors_and_metadata(scenes):
    for code, scene in scenes.items():
        region = REGIONS[code]
        assert scene.sensors == region.sensors
        assert scene.crs == f"EPSG:{region.utm_epsg}"
        xmin, xmax, ymin, ymax = scene.bounds
        assert xmin < region.lon < xmax and ymin < region.lat < ymax
        assert scene.labels.dtype == np.uint8 and scene.labels.shape == (SIZE, SIZE)
        for name, array in scene.features.items():
            assert array.dtype == np.float32 and array.shape[:2] == (SIZE, SIZE), name


def test_value_ranges(scenes):
    for scene in scenes.values():
        f = scene.features
        assert 0.0 <= f["optical"].min() and f["optical"].max() <= 2.0
        low, high = scene.region.elevation_range
        assert low - 50 <= f["dem"][..., 0].min() and f["dem"][..., 0].max() <= high + 50
        assert 0.0 <= f["dem"][..., 1].min() and f["dem"][..., 1].max() < 90.0
        for name in ("co_pol_sar", "cross_pol_sar"):
            if name in f:
                assert -6.0 <= f[name].min() and f[name].max() <= 1.8
        if "in_sar" in f:
            assert 0.0 <= f["in_sar"].min() and f["in_sar"].max() <= 1.0
        if "thermal" in f:
            assert 220.0 < f["thermal"].min() and f["thermal"].max() < 322.1


def test_glacier_share_plausible(scenes):
    for code, scene in scenes.items():
        share = scene.labels.mean()
        assert 0.03 < share < 0.85, (code, share)


def test_labels_are_clean_plus_debris_ice(scenes):
    scene = scenes["HMA"]
    glacier = np.isin(scene.surface, [SurfaceClass.FIRN, SurfaceClass.CLEAN_ICE,
                                      SurfaceClass.DEBRIS_ICE])
    np.testing.assert_array_equal(scene.labels == 1, glacier)


def test_debris_richer_in_hma_than_svalbard():
    def debris(code):
        s = generate_scene(REGIONS[code], 256, 0, REGIONS[code].year)
        return (s.surface == SurfaceClass.DEBRIS_ICE).sum() / s.labels.sum()

    assert debris("HMA") > 2 * debris("SVAL")


def test_coherence_low_on_moving_ice(scenes):
    for code in ("ALP", "NZ", "SVAL"):
        scene = scenes[code]
        coherence = scene.features["in_sar"].mean(axis=-1)
        rock = coherence[scene.surface == SurfaceClass.ROCK].mean()
        for ice in (SurfaceClass.CLEAN_ICE, SurfaceClass.DEBRIS_ICE):
            mask = scene.surface == ice
            if mask.sum() > 20:
                assert coherence[mask].mean() < rock - 0.2, (code, ice)


def test_snow_bright_in_visible_dark_in_swir(scenes):
    scene = scenes["ALP"]
    optical = scene.features["optical"]
    clear = scene.classes != SurfaceClass.CLOUD
    lit = ~scene.shadow & clear
    snow = lit & np.isin(scene.surface, [SurfaceClass.SEASONAL_SNOW, SurfaceClass.FIRN])
    rock = lit & (scene.surface == SurfaceClass.ROCK)
    assert optical[snow][:, 1].mean() > 2 * optical[rock][:, 1].mean()
    assert optical[snow][:, 4].mean() < 0.5 * optical[rock][:, 4].mean()
    cloud = scene.classes == SurfaceClass.CLOUD
    if cloud.sum() > 20:
        assert optical[cloud][:, 4].mean() > optical[snow][:, 4].mean()


def test_debris_on_ice_cooler_than_rock(scenes):
    scene = scenes["HMA"]
    thermal = scene.features["thermal"][..., 0]
    clear = scene.classes != SurfaceClass.CLOUD
    debris = clear & (scene.surface == SurfaceClass.DEBRIS_ICE)
    rock = clear & (scene.surface == SurfaceClass.ROCK)
    assert thermal[debris].mean() < thermal[rock].mean()


def test_bad_arguments():
    with pytest.raises(ValueError, match="ISO date"):
        parse_date("last summer", REGIONS["ALP"])
    with pytest.raises(ValueError, match="size"):
        generate_scene(REGIONS["ALP"], 8, 0, 2015)
    assert parse_date(2019, REGIONS["NZ"]).month == 2
