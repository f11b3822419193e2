"""Seeded synthetic glacier scenes: terrain, glaciers, surface classes and every sensor from them.

Stands in for: one acquisition of one region of the paper's benchmark (optical, DEM, SAR
backscatter, InSAR coherence, thermal and the reference outlines), so that every question the
book asks can be answered for the physical reasons the paper gives: debris-covered ice is
spectrally close to rock but decorrelates in InSAR; seasonal snow and ice melange are bright
confounders; clouds hide the surface from optical sensors but not from SAR.

Breaks down: the terrain is fractal noise rather than eroded landscapes; glaciers are in balance
with the acquisition's ELA (no dynamic lag, no surges); shadows are self-shadows from a
hillshade (no cast shadows from distant peaks); each sensor is a per-class lookup plus a few
physical modifiers and noise, not a radiative-transfer or SAR scattering model. Numbers from
models trained on it say how methods *rank* for these reasons, not how well they do on Earth.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from affine import Affine
from pyproj import Transformer
from scipy import ndimage

from glacier_mapping.data.regions import Region

#: Default ground resolution (m); coarser than the paper's 10 m for speed on a CPU.
DEFAULT_PIXEL_SIZE_M = 30.0
#: ELA rise per year after the region's main year (m/yr): a warming trend drives retreat.
ELA_RISE_M_PER_YEAR = 12.0
#: Largest grid (pixels per side) on which ice is routed; finer scenes are routed coarser.
_ROUTING_GRID = 192
#: Wavelength (m) above which terrain has no extra power, so scenes grow by adding valleys.
_TERRAIN_OUTER_SCALE_M = 12_000.0
#: Spread of the terrain field mapped onto the elevation range (larger = gentler slopes).
_RELIEF = 3.0


class SurfaceClass(IntEnum):
    """Surface classes of the class map; glacier = FIRN, CLEAN_ICE and DEBRIS_ICE."""

    ROCK = 0
    VEGETATION = 1
    WATER = 2
    SEASONAL_SNOW = 3
    FIRN = 4
    CLEAN_ICE = 5
    DEBRIS_ICE = 6
    MELANGE = 7
    CLOUD = 8


GLACIER_CLASSES = (SurfaceClass.FIRN, SurfaceClass.CLEAN_ICE, SurfaceClass.DEBRIS_ICE)

# Per-class TOA reflectance: blue, green, red, NIR, SWIR1, SWIR2.
_OPTICAL = np.array(
    [
        [0.12, 0.14, 0.17, 0.22, 0.28, 0.22],  # rock
        [0.04, 0.07, 0.05, 0.35, 0.18, 0.09],  # vegetation
        [0.09, 0.09, 0.07, 0.04, 0.015, 0.01],  # water (turbid)
        [0.88, 0.86, 0.83, 0.74, 0.08, 0.06],  # seasonal snow
        [0.78, 0.76, 0.72, 0.60, 0.06, 0.05],  # firn
        [0.55, 0.52, 0.45, 0.30, 0.03, 0.02],  # clean ice
        [0.11, 0.13, 0.16, 0.21, 0.25, 0.20],  # debris-covered ice (close to rock)
        [0.62, 0.60, 0.56, 0.44, 0.05, 0.04],  # melange
        [0.75, 0.75, 0.74, 0.72, 0.55, 0.40],  # cloud (bright in SWIR)
    ],
    dtype=np.float32,
)
# Per-class C-band sigma0 (dB): co-pol, cross-pol. Wet snow is dark.
_SAR_DB = np.array(
    [[-8, -15], [-8, -13], [-20, -27], [-18, -25], [-10, -17], [-12, -20], [-9, -16],
     [-7, -14], [-8, -15]],
    dtype=np.float32,
)
# Per-class interferometric coherence (mean): stable ground high, moving ice low.
_COHERENCE = np.array([0.75, 0.25, 0.05, 0.25, 0.2, 0.15, 0.3, 0.05, 0.75], dtype=np.float32)
# Per-class brightness temperature at the region's reference elevation (K), before sunlight.
_THERMAL_K = np.array(
    [281.0, 287.0, 277.0, 271.0, 271.0, 272.0, 276.0, 273.0, 250.0], dtype=np.float32
)
# Extra warming of sunlit surfaces (K at full illumination): rock warms most, debris on ice less.
_THERMAL_SUN_K = np.array([10.0, 4.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0, 0.0], dtype=np.float32)

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class SyntheticScene:
    """One synthetic acquisition of one region.

    Attributes:
        region: the region it stands in for.
        date: acquisition date (ISO ``YYYY-MM-DD``).
        features: raw physical arrays per sensor, ``H x W x C`` float32 (units as in the
            paper's schema: reflectance, m and degrees, log10 sigma0, coherence, K).
        labels: ``H x W`` uint8, 1 = glacier (clean + debris-covered ice).
        classes: ``H x W`` uint8 class map as seen from above (clouds on top).
        surface: ``H x W`` uint8 class map of the ground (no clouds).
        shadow: ``H x W`` bool, terrain self-shadow at the acquisition's sun angle.
        crs: projected CRS, ``EPSG:<utm>`` of the region.
        transform: affine transform of the scene in that CRS (north-up).
        bounds: geographic bounds ``(xmin, xmax, ymin, ymax)`` in EPSG:4326 (lon, lat).
        ela: ELA of this acquisition (m).
        pixel_size_m: ground resolution (m).
    """

    region: Region
    date: str
    features: dict[str, np.ndarray]
    labels: np.ndarray
    classes: np.ndarray
    surface: np.ndarray
    shadow: np.ndarray
    crs: str
    transform: Affine
    bounds: tuple[float, float, float, float]
    ela: float
    pixel_size_m: float
    sensors: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        """Record the sensors present."""
        self.sensors = tuple(self.features)

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return self.labels.shape

    def window_bounds(
        self, row: int, col: int, height: int, width: int
    ) -> tuple[float, float, float, float]:
        """Geographic bounds ``(xmin, xmax, ymin, ymax)`` (EPSG:4326) of a pixel window."""
        return _geographic_bounds(self.crs, self.transform, row, col, height, width)

    def window_transform(self, row: int, col: int) -> Affine:
        """Affine transform of a window whose top-left pixel is ``(row, col)``."""
        return self.transform @ Affine.translation(col, row)


def parse_date(date: str | int, region: Region) -> dt.date:
    """Turn a year or an ISO date into a date; a bare year means the end of the melt season.

    The end of the melt season is 31 August north of 20 degrees south and 28 February south
    of it, when snow cover is smallest and glacier mapping is easiest.

    Raises:
        ValueError: if the date cannot be parsed.
    """
    if isinstance(date, int | np.integer):
        month, day = (8, 31) if region.lat > -20.0 else (2, 28)
        return dt.date(int(date), month, day)
    try:
        return dt.date.fromisoformat(str(date))
    except ValueError:
        raise ValueError(
            f"date={date!r} is neither a year (int) nor an ISO date like '2019-08-31'."
        ) from None


def scene_rng(seed: int, region_code: str, date_key: int) -> np.random.Generator:
    """A numpy Generator seeded stably from (seed, region code, date key); not Python hash()."""
    digest = hashlib.sha256(region_code.encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:4], "little"), date_key])


def fractal_noise(
    rng: np.random.Generator, shape: tuple[int, int], beta: float, outer_scale_px: float
) -> np.ndarray:
    """Spectral noise with power ~ k**-beta below the outer scale (in pixels), zero mean.

    The amplitude is normalised so that a scene much larger than the outer scale has unit
    variance; smaller scenes miss the long wavelengths and vary less, as a window of a larger
    landscape would.
    """
    height, width = shape
    spectrum = np.fft.rfft2(rng.standard_normal(shape))
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.rfftfreq(width)[None, :]
    k0 = 1.0 / outer_scale_px
    spectrum *= np.maximum(np.hypot(kx, ky), k0) ** (-beta / 2.0)
    spectrum[0, 0] = 0.0
    noise = np.fft.irfft2(spectrum, s=shape)
    radius = np.linspace(0.0, 0.5, 4097)
    reference = np.trapezoid(2 * np.pi * radius * np.maximum(radius, k0) ** -beta, radius)
    return (noise / np.sqrt(reference)).astype(np.float32)


def slope_degrees(elevation: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """Slope (degrees) of a DEM by central differences at the given pixel size."""
    dz_dy, dz_dx = np.gradient(elevation.astype(np.float64), pixel_size_m)
    return np.degrees(np.arctan(np.hypot(dz_dx, dz_dy))).astype(np.float32)


def _terrain(
    rng: np.random.Generator, size: int, region: Region, pixel_size_m: float
) -> np.ndarray:
    """Fractal terrain with ridges and valleys scaled to the region's elevation range."""
    outer = _TERRAIN_OUTER_SCALE_M / pixel_size_m
    base = fractal_noise(rng, (size, size), 4.0, outer)
    ridged = 0.8 - np.abs(fractal_noise(rng, (size, size), 3.6, outer * 0.5))
    rough = fractal_noise(rng, (size, size), 3.0, outer * 0.1)
    shape = base + 0.6 * ridged + 0.05 * rough
    unit = 0.5 + 0.5 * np.tanh(shape / _RELIEF)
    low, high = region.elevation_range
    z = low + (high - low) * unit**1.3
    if region.tidewater:  # a coast on the western side: valleys there drown into fjords
        coast = np.clip(1.0 - np.arange(size) / (0.45 * size), 0.0, 1.0)[None, :]
        z = np.maximum(z - 0.35 * (high - low) * coast, low)
    return z.astype(np.float32)


def _receivers(z: np.ndarray, exponent: float = 1.1) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-flow-direction receivers: index (-1 = none) and weight per neighbour."""
    height, width = z.shape
    padded = np.pad(z, 1, constant_values=np.inf)
    index = np.arange(z.size).reshape(z.shape)
    padded_index = np.pad(index, 1, constant_values=-1)
    drops, targets = [], []
    for dy, dx in _NEIGHBOURS:
        neighbour = padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        drops.append(np.maximum(z - neighbour, 0.0) / np.hypot(dy, dx))
        targets.append(padded_index[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width])
    drop = np.stack(drops).reshape(8, -1) ** exponent
    total = drop.sum(axis=0)
    weight = np.divide(drop, total, out=np.zeros_like(drop), where=total > 0)
    target = np.where(weight > 0, np.stack(targets).reshape(8, -1), -1)
    return target, weight


def route_ice(z: np.ndarray, accumulation: np.ndarray, ablation: np.ndarray) -> np.ndarray:
    """Route ice surplus downslope and return the ice flux reaching each cell.

    Cells are processed in topological order of the downhill graph, one front at a time
    (vectorised over the front): a cell's inflow plus accumulation, minus what melts there,
    is passed to its lower neighbours in proportion to slope (multiple flow directions).
    """
    target, weight = _receivers(z)
    edges = target >= 0
    indegree = np.bincount(target[edges], minlength=z.size)
    flux = accumulation.ravel().astype(np.float64)
    melt = ablation.ravel()
    front = np.flatnonzero(indegree == 0)
    while front.size:
        outflow = np.maximum(flux[front] - melt[front], 0.0)
        receivers = target[:, front]
        valid = receivers >= 0
        hit = receivers[valid]
        np.add.at(flux, hit, (weight[:, front] * outflow)[valid])
        np.subtract.at(indegree, hit, 1)
        hit = np.unique(hit)
        front = hit[indegree[hit] == 0]
    return flux.reshape(z.shape)


def _glacier_mask(
    z: np.ndarray, slope: np.ndarray, ela: float, rng: np.random.Generator
) -> np.ndarray:
    """Glacier mask: mass balance around the ELA routed downslope on a coarse grid."""
    size = z.shape[0]
    factor = max(1, int(np.ceil(size / _ROUTING_GRID)))
    sample = (slice(factor // 2, None, factor),) * 2
    coarse = ndimage.uniform_filter(z, factor)[sample]
    coarse_slope = ndimage.uniform_filter(slope, factor)[sample]
    balance = 0.006 * (coarse - ela)  # m w.e. per year, linear balance gradient
    accumulation = np.clip(balance, 0.0, 2.0) * (coarse_slope < 45.0)
    ablation = np.clip(-balance, 0.0, None) * 0.3
    sea = coarse < 0.0
    ablation = np.where(sea, np.inf, ablation)  # ice reaching the sea calves
    inflow = route_ice(coarse, accumulation, ablation)
    ice = ((inflow > 1e-3) & ~sea & (coarse_slope < 55.0)).astype(np.float32)
    zoom = (size / coarse.shape[0], size / coarse.shape[1])
    smooth = ndimage.zoom(ndimage.gaussian_filter(ice, 0.7), zoom, order=1)[:size, :size]
    edge_noise = 0.06 * fractal_noise(rng, z.shape, 3.0, 30.0)
    return (smooth + edge_noise > 0.5) & (z > 0.0) & (slope < 65.0)


def _sun_angles(region: Region, date: dt.date) -> tuple[float, float]:
    """Sun elevation and azimuth (degrees) near local noon of the acquisition (approximate)."""
    declination = 23.44 * np.sin(np.radians(360.0 / 365.0 * (date.timetuple().tm_yday - 81)))
    elevation = float(np.clip(90.0 - abs(region.lat - declination), 8.0, 80.0)) - 15.0
    azimuth = 150.0 if region.lat >= declination else 30.0  # morning pass, sun to the south/north
    return max(elevation, 5.0), azimuth


def _illumination(
    z: np.ndarray, pixel_size_m: float, sun_elevation: float, sun_azimuth: float
) -> np.ndarray:
    """Cosine of the local solar incidence angle (hillshade), negative in self-shadow."""
    dz_dy, dz_dx = np.gradient(z.astype(np.float64), pixel_size_m)
    slope = np.arctan(np.hypot(dz_dx, dz_dy))
    aspect = np.arctan2(-dz_dx, dz_dy)  # direction of steepest descent, clockwise from north
    zenith = np.radians(90.0 - sun_elevation)
    azimuth = np.radians(sun_azimuth)
    cos_i = np.cos(zenith) * np.cos(slope) + np.sin(zenith) * np.sin(slope) * np.cos(
        azimuth - aspect
    )
    return cos_i.astype(np.float32)


def _surface_classes(
    region: Region,
    z: np.ndarray,
    slope: np.ndarray,
    glacier: np.ndarray,
    ela: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Surface class map (no clouds) from terrain, glacier mask and the acquisition's snow."""
    shape = z.shape
    surface = np.full(shape, SurfaceClass.ROCK, dtype=np.uint8)
    patchy = fractal_noise(rng, shape, 2.6, 60.0)
    vegetated = (z < region.vegetation_line + 120.0 * patchy) & (slope < 35.0)
    surface[vegetated] = SurfaceClass.VEGETATION
    snowline = ela - 400.0 * region.seasonal_snow + rng.normal(0.0, 60.0)
    glacier_snowline = ela + rng.normal(0.0, 40.0)
    snow = (z > snowline + 150.0 * patchy) & (slope < 40.0)
    surface[snow] = SurfaceClass.SEASONAL_SNOW
    lakes = (z - ndimage.minimum_filter(z, 25) < 4.0) & (slope < 4.0) & (z < ela)
    water = (z <= 0.0) | lakes
    surface[water] = SurfaceClass.WATER
    if region.tidewater:
        sea = z <= 0.0
        front = ndimage.binary_dilation(glacier, iterations=2) & sea
        distance = ndimage.distance_transform_edt(~front)
        icebergs = fractal_noise(rng, shape, 2.0, 20.0)
        melange = sea & front.any() & (
            (distance < 40.0 * (1.0 + 0.5 * patchy)) | ((icebergs > 1.5) & (distance < 150.0))
        )
        surface[melange] = SurfaceClass.MELANGE
    surface[glacier] = SurfaceClass.CLEAN_ICE
    if region.debris_share > 0.0 and glacier.any():
        walls = ndimage.uniform_filter((slope > 30.0).astype(np.float32), 9)
        score = (z - ela) / max(ela - region.elevation_range[0], 1.0) + 0.1 * patchy
        score -= 0.3 * walls
        ablation_zone = glacier & (z < ela)
        share = min(1.0, region.debris_share * glacier.sum() / max(ablation_zone.sum(), 1))
        if ablation_zone.any():
            threshold = np.quantile(score[ablation_zone], share)
            surface[ablation_zone & (score <= threshold)] = SurfaceClass.DEBRIS_ICE
    surface[glacier & (z > glacier_snowline + 50.0 * patchy)] = SurfaceClass.FIRN
    return surface


def _clouds(
    rng: np.random.Generator, shape: tuple[int, int], cloudiness: float
) -> np.ndarray:
    """Cloud opacity (0..1) with a cover drawn around the region's cloudiness."""
    cover = float(np.clip(cloudiness * rng.uniform(0.0, 1.4), 0.0, 0.7))
    if cover < 0.01:
        return np.zeros(shape, dtype=np.float32)
    noise = fractal_noise(rng, shape, 3.0, max(shape) / 2.0)
    threshold = np.quantile(noise, 1.0 - cover)
    return np.clip((noise - threshold) / 0.4 + 0.5, 0.0, 1.0).astype(np.float32)


def _optical(
    classes: np.ndarray,
    cloud: np.ndarray,
    illumination: np.ndarray,
    sun_elevation: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """TOA reflectance: class spectra x illumination, surface texture, haze, clouds, noise."""
    surface_reflectance = _OPTICAL[classes]
    texture = 1.0 + 0.08 * fractal_noise(rng, classes.shape, 1.8, 50.0)[..., None]
    direct = np.clip(illumination, 0.0, None) / np.sin(np.radians(sun_elevation))
    light = (0.15 + 0.85 * np.clip(direct, 0.0, 2.5))[..., None]
    shift = np.array([6, -6])  # cloud shadow offset (pixels)
    cloud_shadow = np.roll(cloud, tuple(shift), axis=(0, 1))[..., None]
    light = light * (1.0 - 0.6 * cloud_shadow)
    haze = rng.uniform(0.0, 0.03) * np.array([1.0, 0.8, 0.6, 0.4, 0.1, 0.05], dtype=np.float32)
    ground = surface_reflectance * texture * light + haze
    alpha = cloud[..., None]
    reflectance = (1.0 - alpha) * ground + alpha * _OPTICAL[SurfaceClass.CLOUD]
    reflectance += rng.normal(0.0, 0.01, reflectance.shape)
    return np.clip(reflectance, 0.0, 2.0).astype(np.float32)


def _local_incidence(z: np.ndarray, pixel_size_m: float, look_azimuth: float) -> np.ndarray:
    """Cosine of the SAR local incidence angle for a 39 degree beam looking to ``look_azimuth``."""
    return _illumination(z, pixel_size_m, 90.0 - 39.0, (look_azimuth + 180.0) % 360.0)


def _sar(
    surface: np.ndarray,
    z: np.ndarray,
    pixel_size_m: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-pol and cross-pol log10(sigma0 + 1e-6) and coherence, ascending and descending."""
    co, cross, coherence = [], [], []
    base_cos = np.cos(np.radians(39.0))
    base_coherence = _COHERENCE[surface]
    for look_azimuth in (80.0, 280.0):  # ascending looks east, descending looks west
        cos_local = _local_incidence(z, pixel_size_m, look_azimuth)
        geometry_db = 10.0 * np.log10(np.clip(cos_local, 0.05, None) / base_cos)
        radar_shadow = cos_local <= 0.05
        for channel, out in ((0, co), (1, cross)):
            sigma_db = _SAR_DB[surface, channel] + geometry_db - 15.0 * radar_shadow
            speckle = rng.gamma(4.0, 1.0 / 4.0, surface.shape)  # 4-look intensity speckle
            sigma = 10.0 ** (sigma_db / 10.0) * speckle
            out.append(np.log10(sigma + 1e-6))
        noise = rng.normal(0.0, 0.08, surface.shape)
        gamma = base_coherence * np.clip(cos_local / base_cos, 0.3, 1.0) + noise
        coherence.append(np.clip(gamma, 0.0, 1.0))
    return tuple(np.stack(parts, axis=-1).astype(np.float32) for parts in (co, cross, coherence))


def _thermal(
    classes: np.ndarray,
    cloud: np.ndarray,
    z: np.ndarray,
    illumination: np.ndarray,
    region: Region,
    rng: np.random.Generator,
) -> np.ndarray:
    """Brightness temperature (K): class temperature + sunlight - lapse rate, 100 m blurred."""
    reference = float(np.mean(region.elevation_range))
    lapse = -0.0065 * (z - reference)
    climate = -0.15 * (abs(region.lat) - 45.0)
    surface_k = _THERMAL_K[classes] + _THERMAL_SUN_K[classes] * np.clip(illumination, 0, 1)
    surface_k = np.where(
        np.isin(classes, (SurfaceClass.SEASONAL_SNOW, SurfaceClass.FIRN, SurfaceClass.CLEAN_ICE)),
        surface_k,
        surface_k + lapse + climate,
    )
    kelvin = (1.0 - cloud) * surface_k + cloud * _THERMAL_K[SurfaceClass.CLOUD]
    kelvin = ndimage.gaussian_filter(kelvin, 1.5) + rng.normal(0.0, 1.0, classes.shape)
    return kelvin[..., None].astype(np.float32)


def _geographic_bounds(
    crs: str, transform: Affine, row: int, col: int, height: int, width: int
) -> tuple[float, float, float, float]:
    """Bounds ``(xmin, xmax, ymin, ymax)`` in EPSG:4326 of a window of a projected grid."""
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    rows = np.array([row, row, row + height, row + height, row + height / 2, row])
    cols = np.array([col, col + width, col, col + width, col, col + width / 2])
    xs = transform.a * cols + transform.b * rows + transform.c
    ys = transform.d * cols + transform.e * rows + transform.f
    lon, lat = to_lonlat.transform(xs, ys)
    return float(np.min(lon)), float(np.max(lon)), float(np.min(lat)), float(np.max(lat))


def scene_transform(region: Region, size: int, pixel_size_m: float) -> Affine:
    """North-up UTM transform of a ``size x size`` scene centred on the region's location."""
    to_utm = Transformer.from_crs("EPSG:4326", f"EPSG:{region.utm_epsg}", always_xy=True)
    easting, northing = to_utm.transform(region.lon, region.lat)
    half = size * pixel_size_m / 2.0
    left = round(easting - half, -2)
    top = round(northing + half, -2)
    return Affine(pixel_size_m, 0.0, left, 0.0, -pixel_size_m, top)


def generate_scene(
    region: Region,
    size: int,
    seed: int,
    date: str | int,
    ela_shift_m: float = 0.0,
    pixel_size_m: float = DEFAULT_PIXEL_SIZE_M,
) -> SyntheticScene:
    """Generate one acquisition of a region.

    The terrain depends only on (seed, region, size, pixel size), so acquisitions of one region
    share it; everything else (ELA, snow, clouds, sun, noise) also depends on the date.

    Args:
        region: the region to stand in for.
        size: scene height and width in pixels.
        seed: base seed; the generator is seeded from (seed, region code, date).
        date: a year (end of the melt season) or an ISO date.
        ela_shift_m: extra ELA shift (m) on top of the date's trend (positive = retreat).
        pixel_size_m: ground resolution in metres.

    Returns:
        The scene, with only the sensors the region has.

    Raises:
        ValueError: for a size below 32 px, a non-positive pixel size or a bad date.
    """
    if size < 32:
        raise ValueError(f"size={size} is too small; use at least 32 pixels.")
    if pixel_size_m <= 0:
        raise ValueError(f"pixel_size_m={pixel_size_m} must be positive.")
    when = parse_date(date, region)
    terrain_rng = scene_rng(seed, region.code, 0)
    rng = scene_rng(seed, region.code, when.toordinal())

    z = _terrain(terrain_rng, size, region, pixel_size_m)
    slope = slope_degrees(z, pixel_size_m)
    ela = region.ela + ela_shift_m + ELA_RISE_M_PER_YEAR * (when.year - region.year)
    glacier = _glacier_mask(z, slope, ela, terrain_rng)
    surface = _surface_classes(region, z, slope, glacier, ela, rng)

    sun_elevation, sun_azimuth = _sun_angles(region, when)
    illumination = _illumination(z, pixel_size_m, sun_elevation, sun_azimuth)
    cloud = _clouds(rng, z.shape, region.cloudiness)
    classes = np.where(cloud > 0.5, np.uint8(SurfaceClass.CLOUD), surface).astype(np.uint8)

    features: dict[str, np.ndarray] = {
        "optical": _optical(surface, cloud, illumination, sun_elevation, rng),
        "dem": np.stack(
            [z + rng.normal(0.0, 2.0, z.shape).astype(np.float32), slope], axis=-1
        ).astype(np.float32),
    }
    if region.has_sar:
        co, cross, coherence = _sar(surface, z, pixel_size_m, rng)
        for name, array in (("co_pol_sar", co), ("cross_pol_sar", cross), ("in_sar", coherence)):
            if name in region.sensors:
                features[name] = array
    if "thermal" in region.sensors:
        features["thermal"] = _thermal(classes, cloud, z, illumination, region, rng)

    transform = scene_transform(region, size, pixel_size_m)
    crs = f"EPSG:{region.utm_epsg}"
    return SyntheticScene(
        region=region,
        date=when.isoformat(),
        features=features,
        labels=np.isin(surface, GLACIER_CLASSES).astype(np.uint8),
        classes=classes,
        surface=surface,
        shadow=illumination < 0.05,
        crs=crs,
        transform=transform,
        bounds=_geographic_bounds(crs, transform, 0, 0, size, size),
        ela=float(ela),
        pixel_size_m=float(pixel_size_m),
    )
