import pytest

from glacier_mapping.data.regions import REGIONS, get_region
from glacier_mapping.data.schema import REGION_CODES


def test_all_eleven_regions_with_real_locations():
    assert set(REGIONS) == set(REGION_CODES)
    for code, region in REGIONS.items():
        assert region.code == code
        assert -90 <= region.lat <= 90 and -180 <= region.lon <= 180
        hemisphere = 326 if region.lat >= 0 else 327
        assert region.utm_epsg // 100 == hemisphere
        zone = int((region.lon + 180) // 6) + 1
        assert abs(region.utm_epsg % 100 - zone) <= 1  # Norway/Svalbard exceptions


def test_sensors_mirror_the_paper():
    full_sar = {code for code, r in REGIONS.items() if "cross_pol_sar" in r.sensors}
    assert full_sar == {"ALP", "NZ", "SC", "SVAL"}
    coherence = {code for code, r in REGIONS.items() if "in_sar" in r.sensors}
    assert coherence == full_sar
    co_only = {
        code for code, r in REGIONS.items()
        if "co_pol_sar" in r.sensors and "cross_pol_sar" not in r.sensors
    }
    assert co_only == {"SA"}
    assert all(r.sensors[:2] == ("optical", "dem") for r in REGIONS.values())


def test_debris_and_tidewater_parameters():
    assert REGIONS["HMA"].debris_share == max(r.debris_share for r in REGIONS.values())
    assert REGIONS["SVAL"].tidewater and not REGIONS["HMA"].tidewater
    assert REGIONS["AN"].paper_code == "ANT" and REGIONS["LL"].paper_code == "TRP"


def test_get_region_error_lists_codes():
    assert get_region("ALP").paper_code == "ALP"
    with pytest.raises(ValueError, match="valid codes are .*SVAL"):
        get_region("MARS")
