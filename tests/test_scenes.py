"""Scenes from GeoTIFFs: alignment, slope, normalisation, validity and clear errors."""

import logging

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp
from rasterio.warp import transform_bounds

from glacier_mapping.data.scenes import (
    OPTICAL_BANDS,
    SceneError,
    SceneSource,
    load_scene,
    normalise_features,
    slope_from_padded,
)
from glacier_mapping.data.tiles import NormStats
from glacier_mapping.registry import RealSceneNotAvailable, everest_scene

CRS = "EPSG:32632"
ORIGIN = (500_000.0, 5_100_000.0)
SIZE = 30.0


def write_raster(path, data, crs=CRS, transform=None, nodata=None, dtype="float32"):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    transform = transform or from_origin(*ORIGIN, SIZE, SIZE)
    profile = dict(driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                   dtype=dtype, transform=transform, nodata=nodata)
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data.astype(dtype))
    return path


def plane_dem(height, width, slope_x=0.1, slope_y=0.05, base=1000.0):
    rows, cols = np.mgrid[0:height, 0:width]
    return base + slope_x * cols * SIZE + slope_y * rows * SIZE


def optical_stack(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.0, 1.0, (6, height, width)).astype("float32")


@pytest.fixture
def scene_files(tmp_path):
    height, width = 40, 50
    optical = write_raster(tmp_path / "optical.tif", optical_stack(height, width))
    dem = write_raster(tmp_path / "dem.tif", plane_dem(height, width))
    return optical, dem, (height, width)


def test_band_map_across_files_reorders_channels(tmp_path):
    data = optical_stack(20, 20)
    rgb = write_raster(tmp_path / "rgb.tif", data[[2, 1, 0]])
    rest = write_raster(tmp_path / "rest.tif", np.concatenate([data[3:], data[:1]]))
    bands = "red,green,blue,nir,swir1,swir2,-"
    with SceneSource([rgb, rest], bands) as source:
        physical = source.physical_window(0, 0, 20, 20)
    np.testing.assert_allclose(np.moveaxis(physical["optical"], -1, 0), data)


def test_aligned_scene_features_and_valid(scene_files):
    optical, dem, (height, width) = scene_files
    with SceneSource(optical, list(OPTICAL_BANDS), dem=dem) as source:
        assert source.sensors == ("optical", "dem")
        features, valid = source.read_window(0, 0, height, width)
        physical = source.physical_window(0, 0, height, width)
    assert valid.all()
    assert features["optical"].shape == (height, width, 6)
    assert features["dem"].shape == (height, width, 2)
    assert features["optical"].min() >= 0.0 and features["optical"].max() <= 1.0
    expected_slope = np.degrees(np.arctan(np.hypot(0.1, 0.05)))
    np.testing.assert_allclose(physical["dem"][..., 1], expected_slope, rtol=1e-5)
    stats = NormStats.paper()
    np.testing.assert_allclose(
        features["dem"][..., 0],
        (physical["dem"][..., 0] - stats.minimum["dem"][0])
        / (stats.maximum["dem"][0] - stats.minimum["dem"][0]),
        rtol=1e-5,
    )


def test_slope_windows_match_whole_scene(tmp_path):
    rng = np.random.default_rng(1)
    height, width = 33, 29
    dem = (plane_dem(height, width) + rng.normal(0, 20, (height, width))).astype("float32")
    optical = write_raster(tmp_path / "optical.tif", optical_stack(height, width))
    dem_path = write_raster(tmp_path / "dem.tif", dem)
    with SceneSource(optical, OPTICAL_BANDS, dem=dem_path) as source:
        whole = source.physical_window(0, 0, height, width)["dem"][..., 1]
        pieces = np.zeros_like(whole)
        for row in range(0, height, 10):
            for col in range(0, width, 8):
                h, w = min(10, height - row), min(8, width - col)
                pieces[row : row + h, col : col + w] = source.physical_window(
                    row, col, h, w
                )["dem"][..., 1]
    np.testing.assert_array_equal(pieces, whole)
    # Edges use one-sided differences, like numpy.gradient on the whole DEM.
    dz_dy, dz_dx = np.gradient(dem.astype(np.float64), SIZE)
    np.testing.assert_allclose(whole, np.degrees(np.arctan(np.hypot(dz_dx, dz_dy))), atol=1e-4)


def test_slope_from_padded_flat_is_zero():
    assert np.all(slope_from_padded(np.ones((5, 6)), np.ones(3), np.ones(3)) == 0.0)


def test_dem_in_other_crs_and_resolution_is_aligned(tmp_path, caplog):
    height, width = 40, 50
    optical = write_raster(tmp_path / "optical.tif", optical_stack(height, width))
    # A DEM in geographic coordinates at about 90 m covering the optical scene and more.
    left, bottom, right, top = transform_bounds(CRS, "EPSG:4326", ORIGIN[0] - 600,
                                                ORIGIN[1] - height * SIZE - 600,
                                                ORIGIN[0] + width * SIZE + 600, ORIGIN[1] + 600)
    res = 0.001  # about 80-110 m
    cols, rows = int(np.ceil((right - left) / res)), int(np.ceil((top - bottom) / res))
    lon = left + (np.arange(cols) + 0.5) * res
    lat = top - (np.arange(rows) + 0.5) * res
    dem = 1000.0 + 5000.0 * (lon[None, :] - left) + 8000.0 * (top - lat[:, None])
    dem_path = write_raster(tmp_path / "dem_4326.tif", dem, crs="EPSG:4326",
                            transform=from_origin(left, top, res, res))
    with caplog.at_level(logging.INFO, logger="glacier_mapping.data.scenes"):
        source = SceneSource(optical, OPTICAL_BANDS, dem=dem_path)
    with source:
        assert "reprojected from EPSG:4326" in source.alignment[str(dem_path)]
        assert any("dem_4326.tif" in message for message in caplog.messages)
        physical = source.physical_window(0, 0, height, width)
        features, valid = source.read_window(0, 0, height, width)
    assert valid.all()
    elevation = physical["dem"][..., 0]
    assert elevation.shape == (height, width)
    # Sensible values: the same linear function of lon/lat sampled at the optical pixels.
    xs = ORIGIN[0] + (np.arange(width) + 0.5) * SIZE
    ys = ORIGIN[1] - (np.arange(height) + 0.5) * SIZE
    grid_x, grid_y = np.meshgrid(xs, ys)
    lons, lats = warp(CRS, "EPSG:4326", grid_x.ravel(), grid_y.ravel())
    expected = 1000.0 + 5000.0 * (np.array(lons) - left) + 8000.0 * (top - np.array(lats))
    np.testing.assert_allclose(elevation.ravel(), expected, atol=0.5)
    assert 0.0 < np.nanmean(physical["dem"][..., 1]) < 89.0

    scene = load_scene(SceneSource(optical, OPTICAL_BANDS, dem=dem_path))
    assert scene.features["dem"].rio.crs.to_string() == CRS
    assert scene.features["dem"].rio.transform() == from_origin(*ORIGIN, SIZE, SIZE)
    np.testing.assert_allclose(scene.arrays()["dem"], features["dem"], atol=1e-5)
    np.testing.assert_array_equal(scene.valid.values, valid)


def test_nodata_and_nan_become_invalid_and_zero(tmp_path):
    height, width = 20, 20
    data = optical_stack(height, width)
    data[0, 3, 4] = -9999.0
    data[2, 5, 6] = np.nan
    optical = write_raster(tmp_path / "optical.tif", data, nodata=-9999.0)
    dem = plane_dem(height, width)
    dem[10, 10] = np.nan
    dem_path = write_raster(tmp_path / "dem.tif", dem)
    with SceneSource(optical, OPTICAL_BANDS, dem=dem_path) as source:
        features, valid = source.read_window(0, 0, height, width)
    assert not valid[3, 4] and not valid[5, 6] and not valid[10, 10]
    # A NaN elevation also spoils the derived slope of its four neighbours.
    assert not valid[9, 10] and not valid[11, 10] and not valid[10, 9] and not valid[10, 11]
    assert valid.sum() == height * width - 7
    for array in features.values():
        assert np.isfinite(array).all()
        assert (array[~valid] == 0).all()


def test_sar_is_log10_and_two_bands_required(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", optical_stack(10, 10))
    sigma = np.full((2, 10, 10), 0.1, dtype="float32")
    co_pol = write_raster(tmp_path / "co.tif", sigma)
    with SceneSource(optical, OPTICAL_BANDS, co_pol=co_pol) as source:
        physical = source.physical_window(0, 0, 10, 10)
    np.testing.assert_allclose(physical["co_pol_sar"], np.log10(0.1 + 1e-6), rtol=1e-6)
    one_band = write_raster(tmp_path / "co1.tif", sigma[:1])
    with pytest.raises(SceneError, match=r"co1.tif.*1 band.*needs 2"):
        SceneSource(optical, OPTICAL_BANDS, co_pol=one_band)


def test_missing_crs_is_an_error(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", optical_stack(10, 10), crs=None)
    with pytest.raises(SceneError, match=r"optical.tif: the raster has no CRS.*a_srs"):
        SceneSource(optical, OPTICAL_BANDS)


def test_non_overlapping_dem_is_an_error(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", optical_stack(10, 10))
    far = from_origin(ORIGIN[0] + 100_000, ORIGIN[1], SIZE, SIZE)
    dem = write_raster(tmp_path / "dem.tif", plane_dem(10, 10), transform=far)
    with pytest.raises(SceneError, match=r"dem.tif: the dem raster .* does not overlap"):
        SceneSource(optical, OPTICAL_BANDS, dem=dem)


def test_coverage_of_partial_and_nodata_inputs(tmp_path):
    optical = optical_stack(20, 40)
    optical[:, :, 30:] = np.nan  # the optical scene: its 20 x 30 valid pixels
    optical_path = write_raster(tmp_path / "optical.tif", optical)
    half = write_raster(tmp_path / "half.tif", plane_dem(20, 15))  # 15 of 30 valid columns
    holes = plane_dem(20, 40)
    holes[:5] = -9999.0  # nodata in a quarter of the rows
    holes_path = write_raster(tmp_path / "holes.tif", holes, nodata=-9999.0)
    shifted = from_origin(ORIGIN[0] + 10 * SIZE, ORIGIN[1], SIZE, SIZE)
    thermal = write_raster(tmp_path / "thermal.tif", np.full((20, 40), 270.0),
                           transform=shifted)  # covers columns 10-39: 20 of 30 valid ones
    with SceneSource(optical_path, OPTICAL_BANDS, dem=half, thermal=thermal) as source:
        coverage = source.coverage(strip_rows=7)
        assert coverage == {str(half): pytest.approx(0.5), str(thermal): pytest.approx(2 / 3)}
        assert source.coverage(["optical", "dem"]) == {str(half): pytest.approx(0.5)}
        assert source.coverage(["optical"]) == {}
    with SceneSource(optical_path, OPTICAL_BANDS, dem=holes_path) as source:
        assert source.coverage() == {str(holes_path): pytest.approx(0.75)}
    full = write_raster(tmp_path / "full.tif", plane_dem(20, 40))
    with SceneSource(optical_path, OPTICAL_BANDS, dem=full) as source:
        assert source.coverage() == {str(full): 1.0}


def test_scale_and_date_errors_name_the_option(scene_files):
    optical, _, _ = scene_files
    with pytest.raises(SceneError, match=r"--optical-scale must be a positive number, got nan"):
        SceneSource(optical, OPTICAL_BANDS, optical_scale=float("nan"))
    with pytest.raises(SceneError, match=r"--date '1/8/2020' is not a date; pass YYYY-MM-DD"):
        SceneSource(optical, OPTICAL_BANDS, date="1/8/2020")
    with SceneSource(optical, OPTICAL_BANDS, date="2020-08-01") as source:
        assert source.date == "2020-08-01"



def test_offset_follows_the_scale_and_nodata_precedes_it(tmp_path):
    reflectance = optical_stack(6, 7)
    dn = np.round(reflectance * 10_000 + 1000).astype("uint16")  # Sentinel-2 L2A >= 04.00
    dn[:, 0, 0] = 0
    path = write_raster(tmp_path / "dn.tif", dn, dtype="uint16")  # no nodata tag
    with SceneSource(path, OPTICAL_BANDS, optical_scale=1e-4, optical_offset=-0.1,
                     optical_nodata=0) as source:
        values = source.physical_window(0, 0, 6, 7)["optical"]
        assert (source.optical_offset, source.optical_nodata) == (-0.1, 0.0)
    assert np.isnan(values[0, 0]).all() and np.isfinite(values.reshape(-1, 6)[1:]).all()
    np.testing.assert_allclose(values.reshape(-1, 6)[1:],
                               np.moveaxis(reflectance, 0, -1).reshape(-1, 6)[1:], atol=1e-4)
    with pytest.raises(SceneError, match=r"^--optical-offset must be a finite number, got nan"):
        SceneSource(path, OPTICAL_BANDS, optical_offset=float("nan"))


def test_default_conversion_is_the_scale_alone(scene_files):
    """Without an offset: value * scale, bit for bit (a negative zero stays negative)."""
    array = np.array([[[-0.0, 0.25, 1e-3]]], dtype=np.float32)
    with SceneSource(scene_files[0], OPTICAL_BANDS, optical_scale=0.5) as source:
        converted = source.to_physical("optical", array)
        assert (source.optical_offset, source.optical_nodata) == (0.0, None)
    assert converted.tobytes() == (array * np.float32(0.5)).tobytes()
    assert np.signbit(converted[0, 0, 0])

def test_wrong_band_count_for_band_map(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", optical_stack(10, 10)[:4])
    with pytest.raises(SceneError, match=r"lists 6 names .* 4 \(optical.tif\) = 4 bands"):
        SceneSource(optical, OPTICAL_BANDS)


def test_missing_optical_bands_are_named(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", optical_stack(10, 10)[:4])
    with pytest.raises(SceneError, match=r"lacks band\(s\) \['swir1', 'swir2'\]"):
        SceneSource(optical, "red,green,blue,nir")


def test_unknown_and_repeated_band_names(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", optical_stack(10, 10))
    with pytest.raises(SceneError, match=r"Unknown band name\(s\) \['swir3'\]"):
        SceneSource(optical, "blue,green,red,nir,swir1,swir3")
    with pytest.raises(SceneError, match=r"\['red'\] appear more than once"):
        SceneSource(optical, "blue,green,red,red,swir1,swir2")


def test_all_nodata_scene_is_an_error(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", np.full((6, 12, 12), -1.0), nodata=-1.0)
    with SceneSource(optical, OPTICAL_BANDS) as source:
        with pytest.raises(SceneError, match=r"every pixel is nodata or NaN"):
            source.check_not_empty(strip_rows=5)
        with pytest.raises(SceneError, match=r"every pixel is nodata or NaN"):
            load_scene(source)


def test_all_nan_dem_is_an_error(tmp_path):
    optical = write_raster(tmp_path / "optical.tif", optical_stack(12, 12))
    dem = write_raster(tmp_path / "dem.tif", np.full((12, 12), np.nan))
    with SceneSource(optical, OPTICAL_BANDS, dem=dem) as source:
        source.check_not_empty(sensors=["optical"])
        with pytest.raises(SceneError, match=r"nodata or NaN in at least one of \['optical', "
                                             r"'dem'\]"):
            source.check_not_empty()


def test_unreadable_and_corrupt_files(tmp_path):
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(SceneError, match=r"garbage.tif: cannot be read as a raster"):
        SceneSource(garbage, OPTICAL_BANDS)
    with pytest.raises(SceneError, match=r"missing.tif does not exist"):
        SceneSource(tmp_path / "missing.tif", OPTICAL_BANDS)
    good = write_raster(tmp_path / "good.tif", optical_stack(64, 64))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SceneError, match=r"truncated.tif"):
        with SceneSource(truncated, OPTICAL_BANDS) as source:
            source.read_window(0, 0, 64, 64)


def test_nan_statistics_are_an_error(scene_files):
    optical, dem, _ = scene_files
    stats = NormStats.paper()
    stats.maximum["dem"] = [float("nan"), 89.0]
    with SceneSource(optical, OPTICAL_BANDS, dem=dem) as source:
        with pytest.raises(SceneError, match=r"'dem' channel 0 are min=-103.3, max=nan"):
            source.read_window(0, 0, 5, 5, stats=stats)


def test_window_outside_scene_and_missing_sensor(scene_files):
    optical, _, _ = scene_files
    with SceneSource(optical, OPTICAL_BANDS) as source:
        with pytest.raises(SceneError, match=r"leaves the 40 x 50 scene"):
            source.read_window(35, 0, 10, 10)
        with pytest.raises(SceneError, match=r"no \['thermal'\] input"):
            source.read_window(0, 0, 5, 5, sensors=["thermal"])


def test_center_lonlat_in_degrees(scene_files):
    optical, _, _ = scene_files
    with SceneSource(optical, OPTICAL_BANDS) as source:
        lon, lat = source.center_lonlat(0, 0, 40, 50)
    # UTM 32N, easting 500 km + 750 m: just east of 9 E; northing 5100 km - 600 m: about 46 N.
    assert 9.0 < lon < 9.02
    assert 46.0 < lat < 46.05


def test_everest_scene_lacks_swir():
    try:
        scene = everest_scene()
    except RealSceneNotAvailable as missing:
        pytest.skip(f"real example scenes absent: {missing}")
    with pytest.raises(SceneError, match=r"lacks band\(s\) \['swir1', 'swir2'\]"):
        SceneSource([scene.rgb, scene.nir], scene.bands)
    padded = [*scene.bands[:3], "-"]
    with pytest.raises(SceneError, match=r"lists 6 names .* 3 \(LE71400412000304SGS00_RGB.tif\)"
                                         r" \+ 1 \(LE71400412000304SGS00_B4.tif\) = 4 bands"):
        SceneSource([scene.rgb, scene.nir], [*padded, "swir1", "swir2"])


def test_standardised_statistics_are_not_clipped():
    """Min-max statistics clip scenes to the training range; standardisation (clip=False) not."""
    physical = {"dem": np.array([[[-50.0, 1.0], [250.0, 3.0]]], dtype=np.float32)}
    minmax = NormStats({"dem": [0.0, 0.0]}, {"dem": [100.0, 4.0]})
    standardised = NormStats({"dem": [0.0, 0.0]}, {"dem": [100.0, 4.0]}, clip=False)
    clipped, _ = normalise_features(physical, minmax)
    kept, valid = normalise_features(physical, standardised)
    np.testing.assert_allclose(clipped["dem"], [[[0.0, 0.25], [1.0, 0.75]]])
    np.testing.assert_allclose(kept["dem"], [[[-0.5, 0.25], [2.5, 0.75]]])
    assert valid.all()


def test_norm_stats_json_keeps_clip(tmp_path):
    NormStats({"dem": [0.0, 0.0]}, {"dem": [1.0, 1.0]}, clip=False).to_json(tmp_path / "s.json")
    assert NormStats.from_json(tmp_path / "s.json").clip is False
    (tmp_path / "old.json").write_text('{"sensors": {"dem": {"min": [0, 0], "max": [1, 1]}}}')
    assert NormStats.from_json(tmp_path / "old.json").clip is True  # files written before
