"""The 11 regions of the benchmark: real locations and the parameters of their synthetic stand-ins.

Codes follow :data:`glacier_mapping.data.schema.REGION_CODES` (the original code's codes); the
paper's own codes are in :attr:`Region.paper_code`. Which sensors a region has mirrors the paper
(see FACTS.md 1.3-1.4): SAR co- and cross-polarised backscatter and InSAR coherence only in ALP,
NZ, SC and SVAL; co-polarised backscatter only in SA. Thermal availability, elevation ranges,
ELAs, debris shares, cloudiness and seasonal snow are *our* choices for the synthetic stand-in:
rounded, literature-flavoured values for one representative place per region, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

from glacier_mapping.data.schema import REGION_CODES, check_sensors

_OPT_DEM = ("optical", "dem")
_ALL_SAR = ("co_pol_sar", "cross_pol_sar", "in_sar")


@dataclass(frozen=True)
class Region:
    """One benchmark region and the parameters of its synthetic stand-in.

    Attributes:
        code: region code of the original code (``schema.REGION_CODES``).
        paper_code: the paper's code (e.g. ``ANT`` for ``AN``).
        subregion: subregion code used in tile names (``<SUBREGION>-<i>-<j>``).
        name: human-readable name of the region and the place standing in for it.
        lat: latitude of the scene centre (degrees north).
        lon: longitude of the scene centre (degrees east).
        utm_epsg: EPSG code of the UTM zone of the scene.
        elevation_range: lowest and highest elevation of the synthetic terrain (m); a negative
            minimum puts sea in the scene.
        ela: equilibrium-line altitude of the main acquisition (m).
        debris_share: share of glacier area that is debris-covered.
        cloudiness: typical cloud-cover fraction of an acquisition.
        seasonal_snow: 0..1, how far seasonal snow reaches below the ELA (1 = 400 m below).
        vegetation_line: elevation (m) below which gentle slopes are vegetated.
        tidewater: whether glaciers calve into the sea (ice melange, icebergs).
        sensors: sensor groups available (``schema.SENSORS`` names).
        year: year of the main acquisition (the paper's year where known).
        difficulty: short note on what makes the region hard or easy.
    """

    code: str
    paper_code: str
    subregion: str
    name: str
    lat: float
    lon: float
    utm_epsg: int
    elevation_range: tuple[float, float]
    ela: float
    debris_share: float
    cloudiness: float
    seasonal_snow: float
    vegetation_line: float
    tidewater: bool
    sensors: tuple[str, ...]
    year: int
    difficulty: str

    def __post_init__(self) -> None:
        """Check that the parameters are consistent."""
        if self.code not in REGION_CODES:
            raise ValueError(f"Region code {self.code!r} is not one of {list(REGION_CODES)}.")
        low, high = self.elevation_range
        if not low < self.ela < high:
            raise ValueError(
                f"Region {self.code}: ELA {self.ela} m outside {self.elevation_range}."
            )
        for field in ("debris_share", "cloudiness", "seasonal_snow"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                raise ValueError(f"Region {self.code}: {field} must lie in [0, 1].")
        if check_sensors(self.sensors) != self.sensors or self.sensors[:2] != _OPT_DEM:
            raise ValueError(
                f"Region {self.code}: sensors {self.sensors} must start with optical, dem and "
                "follow the canonical order of schema.SENSORS."
            )

    @property
    def has_sar(self) -> bool:
        """Whether any SAR product (backscatter or coherence) exists for the region."""
        return any(name in self.sensors for name in _ALL_SAR)


REGIONS: dict[str, Region] = {
    region.code: region
    for region in (
        Region(
            "ALP", "ALP", "ALP", "European Alps (Bernese Alps, Aletsch)", 46.50, 8.03, 32632,
            (1400.0, 4200.0), 2950.0, 0.08, 0.15, 0.2, 2100.0, False,
            (*_OPT_DEM, *_ALL_SAR, "thermal"), 2015,
            "Moderate: clean valley glaciers, some debris, seasonal snow on rock.",
        ),
        Region(
            "AN", "ANT", "AN1", "Antarctica (Antarctic Peninsula)", -64.60, -62.40, 32720,
            (-250.0, 1900.0), 700.0, 0.0, 0.35, 0.6, -1000.0, True,
            _OPT_DEM, 2020,
            "Easy on land, hard at calving fronts: melange and sea ice look like glacier.",
        ),
        Region(
            "AWA", "AWA", "AWA1", "Alaska and Western America (Juneau Icefield)", 58.60, -134.30,
            32608, (-200.0, 2300.0), 1050.0, 0.08, 0.4, 0.3, 700.0, True,
            (*_OPT_DEM, "thermal"), 2019,
            "Tidewater termini with melange; cloudy; vegetated forelands.",
        ),
        Region(
            "CA", "CAU", "CA", "Caucasus (Elbrus)", 43.35, 42.45, 32638,
            (1700.0, 5000.0), 3550.0, 0.15, 0.25, 0.25, 2400.0, False,
            (*_OPT_DEM, "thermal"), 2018,
            "Moderate: debris-covered tongues at the margins.",
        ),
        Region(
            "GR", "GRL", "GR1", "Greenland periphery (Ammassalik)", 65.70, -37.50, 32624,
            (-250.0, 2000.0), 850.0, 0.02, 0.25, 0.3, 300.0, True,
            (*_OPT_DEM, "thermal"), 2019,
            "Easy clean ice; fjords with melange in front of calving glaciers.",
        ),
        Region(
            "HMA", "HMA", "HMA1", "High-Mountain Asia (Everest, Khumbu)", 27.95, 86.85, 32645,
            (3800.0, 8000.0), 5800.0, 0.30, 0.2, 0.2, 4300.0, False,
            (*_OPT_DEM, "thermal"), 2018,
            "Hardest: long debris-covered tongues that look like the surrounding moraines.",
        ),
        Region(
            "LL", "TRP", "LL2", "Low latitudes (Cordillera Blanca, Peru)", -9.10, -77.60, 32718,
            (3600.0, 6700.0), 5250.0, 0.05, 0.45, 0.3, 4200.0, False,
            (*_OPT_DEM, "thermal"), 2016,
            "Small steep glaciers, frequent cloud, fresh snow on peaks.",
        ),
        Region(
            "NZ", "NZL", "NZ", "New Zealand (Southern Alps, Aoraki/Mt Cook)", -43.60, 170.20,
            32759, (500.0, 3700.0), 2100.0, 0.18, 0.5, 0.3, 1100.0, False,
            (*_OPT_DEM, *_ALL_SAR, "thermal"), 2019,
            "Cloudy; debris-covered Tasman-like tongues; SAR and coherence help.",
        ),
        Region(
            "SA", "SAN", "SA2", "Southern Andes (Southern Patagonian Icefield)", -49.50, -73.30,
            32718, (-150.0, 3300.0), 1550.0, 0.05, 0.55, 0.35, 600.0, True,
            (*_OPT_DEM, "co_pol_sar"), 2016,
            "Very cloudy; calving into fjords and lakes; co-polarised SAR only.",
        ),
        Region(
            "SC", "SCA", "SC2", "Scandinavia (Jostedalsbreen)", 61.70, 7.00, 32632,
            (300.0, 2050.0), 1150.0, 0.02, 0.35, 0.35, 1000.0, False,
            (*_OPT_DEM, *_ALL_SAR, "thermal"), 2018,
            "Easy clean plateau ice; seasonal snow patches are the main confounder.",
        ),
        Region(
            "SVAL", "SVAL", "SVAL1", "Svalbard (Kongsfjorden)", 78.90, 12.50, 32633,
            (-200.0, 1200.0), 400.0, 0.03, 0.3, 0.4, -1000.0, True,
            (*_OPT_DEM, *_ALL_SAR, "thermal"), 2020,
            "Easy clean ice; melange in fjords is the main false positive.",
        ),
    )
}


def get_region(code: str) -> Region:
    """Return the region with the given code.

    Raises:
        ValueError: if the code is unknown; the message lists the valid codes.
    """
    try:
        return REGIONS[code]
    except KeyError:
        raise ValueError(
            f"Unknown region code {code!r}; valid codes are {sorted(REGIONS)}."
        ) from None
