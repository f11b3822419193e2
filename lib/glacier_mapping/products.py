"""Known satellite products: band names, reflectance scale and offset, nodata and cloud masks.

``glacier-mapping deploy --product NAME`` takes the band map, scale and offset from
:data:`PRODUCTS` instead of ``--bands``/``--optical-scale``/``--optical-offset``, so that a
scene in a product's own digital numbers (DN) becomes reflectance as
``DN * scale + offset``. :func:`reflectance_problem` judges, on a sample of a scene's optical
values (:func:`sample_optical`), whether they look like reflectance at all; ``deploy`` refuses a
scene that does not, naming the likely cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from glacier_mapping.data.scenes import OPTICAL_BANDS, SceneSource


@dataclass(frozen=True)
class MaskConvention:
    """Which pixels of a product's quality band are not usable.

    Attributes:
        band: the quality band's name in the product.
        kind: ``"classes"`` (mask pixels whose value is in ``values``) or ``"bits"`` (mask
            pixels with any of the bit positions ``values`` set).
        values: the classes or bit positions to mask.
        note: what the values mean and what is deliberately not masked.
    """

    band: str
    kind: Literal["classes", "bits"]
    values: tuple[int, ...]
    note: str

    def unusable(self, values: np.ndarray) -> np.ndarray:
        """Where quality-band ``values`` mark a pixel unusable (NaN, no quality: usable)."""
        known = np.isfinite(values)
        codes = np.where(known, values, 0).astype(np.int64)
        if self.kind == "classes":
            hit = np.isin(codes, self.values)
        else:
            hit = (codes & sum(1 << bit for bit in self.values)) != 0
        return known & hit


@dataclass(frozen=True)
class Product:
    """A product's optical bands and their conversion to reflectance.

    Attributes:
        name: the ``--product`` name.
        title: human-readable product name.
        bands: the product's band names, in :data:`OPTICAL_BANDS` order (blue, green, red, nir,
            swir1, swir2).
        common_names: the STAC ``eo:bands`` common names of those bands, in the same order.
        scale: reflectance = DN * scale + offset.
        offset: see ``scale``.
        nodata: DN of missing data.
        mask: the product's cloud and quality mask convention.
        note: caveats recorded with a deployment (None when there are none).
    """

    name: str
    title: str
    bands: tuple[str, ...]
    common_names: tuple[str, ...]
    scale: float
    offset: float
    nodata: float
    mask: MaskConvention
    note: str | None = None


#: Sentinel-2 Scene Classification (SCL) of the Sen2Cor L2A processor (ESA, Sentinel-2 L2A
#: Algorithm Theoretical Basis Document, section "Scene classification"): 0 no data,
#: 1 saturated or defective, 3 cloud shadow, 8 cloud medium probability, 9 cloud high
#: probability, 10 thin cirrus are masked. Snow and ice (11) is NOT masked: it is what we map.
SENTINEL2_SCL = MaskConvention(
    "SCL", "classes", (0, 1, 3, 8, 9, 10),
    "Sen2Cor SCL classes 0 no data, 1 saturated/defective, 3 cloud shadow, 8/9 cloud medium/high "
    "probability, 10 thin cirrus; 11 snow/ice is not masked (it is what is mapped).",
)
#: Landsat Collection 2 QA_PIXEL bits (USGS, Landsat 8-9 Collection 2 Level-2 Science Product
#: Guide LSDS-1619, table "Pixel Quality Assessment"): bit 0 fill, 1 dilated cloud, 3 cloud,
#: 4 cloud shadow are masked. Bit 5 snow is NOT masked: it is what we map.
LANDSAT_QA_PIXEL = MaskConvention(
    "QA_PIXEL", "bits", (0, 1, 3, 4),
    "QA_PIXEL bits 0 fill, 1 dilated cloud, 3 cloud, 4 cloud shadow; bit 5 snow is not masked "
    "(it is what is mapped).",
)
_SENTINEL2_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
_SENTINEL2_COMMON = ("blue", "green", "red", "nir", "swir16", "swir22")
#: Landsat 8-9 OLI band numbers (Landsat 4-7 TM/ETM+ number them differently: pass --bands).
_OLI_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7")
_LANDSAT_COMMON = ("blue", "green", "red", "nir08", "swir16", "swir22")

#: The known products, by ``--product`` name.
PRODUCTS: dict[str, Product] = {product.name: product for product in (
    # ESA, Sentinel-2 Products Specification Document (S2-PDGS-TAS-DI-PSD) and the processing
    # baseline 04.00 note (January 2022): L2A BOA reflectance = (DN + BOA_ADD_OFFSET) /
    # BOA_QUANTIFICATION_VALUE with BOA_ADD_OFFSET = -1000 and BOA_QUANTIFICATION_VALUE = 10000
    # (MTD_MSIL2A.xml), i.e. DN * 1e-4 - 0.1; DN 0 is NODATA.
    Product("sentinel2-l2a", "Sentinel-2 MSI Level-2A, processing baseline >= 04.00",
            _SENTINEL2_BANDS, _SENTINEL2_COMMON, 1e-4, -0.1, 0.0, SENTINEL2_SCL,
            "L2A of processing baseline < 04.00 (before 25 January 2022) has no offset: pass "
            "--bands and --optical-scale 0.0001 instead."),
    # Same document: L1C TOA reflectance = (DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE with
    # RADIO_ADD_OFFSET = -1000 and QUANTIFICATION_VALUE = 10000 (MTD_MSIL1C.xml); DN 0 is NODATA.
    # L1C has no SCL band; the convention is that of the L2A made from it.
    Product("sentinel2-l1c", "Sentinel-2 MSI Level-1C, processing baseline >= 04.00",
            _SENTINEL2_BANDS, _SENTINEL2_COMMON, 1e-4, -0.1, 0.0, SENTINEL2_SCL,
            "L1C of processing baseline < 04.00 (before 25 January 2022) has no offset: pass "
            "--bands and --optical-scale 0.0001 instead."),
    # USGS, Landsat 8-9 Collection 2 Level-2 Science Product Guide (LSDS-1619): surface
    # reflectance = DN * 0.0000275 - 0.2; fill value 0.
    Product("landsat-c2-l2", "Landsat 8-9 OLI Collection 2 Level-2 surface reflectance",
            tuple(f"SR_{band}" for band in _OLI_BANDS), _LANDSAT_COMMON, 2.75e-5, -0.2, 0.0,
            LANDSAT_QA_PIXEL),
    # USGS, Landsat 8-9 Collection 2 Level-1 Data Format Control Book (LSDS-1822) and "Using
    # the USGS Landsat Level-1 Data Product": TOA reflectance = REFLECTANCE_MULT_BAND_n * DN +
    # REFLECTANCE_ADD_BAND_n from the scene's MTL file, 2.0e-5 and -0.1 for every OLI band;
    # fill value 0. This is the reflectance before the sun-elevation correction.
    Product("landsat-c2-l1", "Landsat 8-9 OLI Collection 2 Level-1 TOA reflectance",
            _OLI_BANDS, _LANDSAT_COMMON, 2e-5, -0.1, 0.0, LANDSAT_QA_PIXEL,
            "Landsat Level-1 reflectance uses the MTL's usual REFLECTANCE_MULT (2e-05) and "
            "REFLECTANCE_ADD (-0.1), without the sun-elevation correction (division by "
            "sin(SUN_ELEVATION)); check the scene's MTL file."),
)}

#: Optical reflectance outside this range is implausible. Reflectance lies in [0, 1] for most
#: surfaces; sunlit fresh snow on slopes facing the sun can exceed 1 (up to about 1.3), and
#: atmospheric correction leaves small negative values over dark targets, below -0.1 only by
#: error. Digital numbers read with scale 1 lie far above (Sentinel-2 ~1000-20000, Landsat
#: ~7000-65000).
REFLECTANCE_RANGE = (-0.1, 1.5)
#: Largest share of sampled optical values outside :data:`REFLECTANCE_RANGE` a scene may have.
#: Fixed a priori: in a correctly scaled scene, saturated and defective pixels and correction
#: artefacts are well under 1 % of the values, whereas a wrong scale (DN, or a factor of 10
#: or more) moves nearly all of them out of the range.
OUTSIDE_SHARE = 0.01
#: The darkest 1 % of at least one band must lie below this reflectance. Fixed a priori: a
#: glacier scene has dark pixels in some band (snow and ice reflect about 0-0.05 at 2.2 um,
#: SWIR2; shadows and water are dark in every band); without Sentinel-2's -0.1 offset (DN
#: 1000 at reflectance 0) every value is >= 0.1, so the darkest percentile sits near 0.1; 0.09
#: leaves a margin of 0.01 for noise.
DARK_LIMIT = 0.09
#: A sample whose median exceeds this is taken for digital numbers: the products' DN of even
#: dark surfaces exceed 1000 (Sentinel-2 with its offset, Landsat Level-2 at reflectance 0:
#: 7273), whereas reflectance wrongly scaled by 10 or 100 (per cent) has a median below 100.
DN_MEDIAN = 100.0
DARK_PERCENTILE = 1.0
#: :func:`sample_optical` reads up to ``SAMPLE_GRID x SAMPLE_GRID`` windows of ``SAMPLE_PX``.
SAMPLE_GRID = 4
SAMPLE_PX = 64


def sample_optical(source: SceneSource) -> np.ndarray:
    """Valid optical reflectance of up to 16 evenly spread windows, ``(N, 6)`` float32.

    A pixel is valid where all six channels are finite (after nodata and scaling).
    """
    height, width = source.shape
    size_y, size_x = min(SAMPLE_PX, height), min(SAMPLE_PX, width)
    rows = np.unique(np.linspace(0, height - size_y, SAMPLE_GRID).astype(int))
    cols = np.unique(np.linspace(0, width - size_x, SAMPLE_GRID).astype(int))
    values = [source.physical_window(int(row), int(col), size_y, size_x, ["optical"])["optical"]
              .reshape(-1, len(OPTICAL_BANDS)) for row in rows for col in cols]
    stacked = np.concatenate(values)
    return stacked[np.isfinite(stacked).all(axis=1)]


def reflectance_problem(values: np.ndarray, scale: float, offset: float) -> str | None:
    """Why optical values ``(N, 6)`` do not look like reflectance, or None if they do.

    Args:
        values: valid optical values after scaling (:func:`sample_optical`).
        scale: the scale that was applied (named in the message).
        offset: the offset that was applied (named in the message).

    Returns:
        A one-sentence cause and fix, or None (also for an empty sample: the scene's
        emptiness is reported elsewhere).
    """
    if values.size == 0:
        return None
    low, high = REFLECTANCE_RANGE
    outside = float(((values < low) | (values > high)).mean())
    median = float(np.median(values))
    applied = f"--optical-scale {scale:g} and --optical-offset {offset:g}"
    names = ", ".join(PRODUCTS)
    if outside > OUTSIDE_SHARE:
        found = (f"{100 * outside:.1f} % of the sampled optical values lie outside "
                 f"[{low:g}, {high:g}] after {applied} (median {median:.4g})")
        if median > DN_MEDIAN:
            return (f"{found}: the values look like digital numbers, not reflectance; pass "
                    f"--product NAME ({names}) or the product's scale, e.g. --optical-scale "
                    "0.0001 for Sentinel-2")
        return (f"{found}: they do not look like reflectance; check --optical-scale and "
                f"--optical-offset, or pass --product NAME ({names})")
    darkest = float(np.percentile(values, DARK_PERCENTILE, axis=0).min())
    if darkest >= DARK_LIMIT:
        return (f"the optical values are about 0.1 too high everywhere after {applied} (the "
                f"darkest {DARK_PERCENTILE:g} % of every band is >= {darkest:.3f}, while snow "
                f"and ice at 2.2 um, shadows and water are darker than {DARK_LIMIT:g}): the "
                "Sentinel-2 BOA_ADD_OFFSET (-1000) was not applied; pass --product "
                "sentinel2-l2a (or --optical-offset -0.1)")
    return None
