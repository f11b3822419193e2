"""The optical input of a STAC item: one asset per band, chosen by common name, and its scale.

``glacier-mapping deploy --stac-item ITEM.json`` reads the item with pystac (a local path or a
URL), takes the single-band asset of each of the common names blue, green, red, nir (nir08 when
the item has no nir), swir16 and swir22 from its ``eo:bands`` (STAC 1.0) or ``bands`` with
``eo:common_name`` (STAC 1.1), and the scale, offset and nodata from its ``raster:bands`` (or
``raster:scale``/``raster:offset``) when every chosen asset gives them, else from the product
registry (:data:`glacier_mapping.products.PRODUCTS`) found from the item's collection, or its
``constellation``/``platform`` and processing level. The product's quality band (Sentinel-2
``scl``, Landsat ``qa_pixel``), when the item has it, masks clouds, shadows and no data. Assets
may be local files or URLs (``https://``, ``s3://``, ``gs://``), which GDAL reads window by
window with range requests.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac

from glacier_mapping.data.scenes import raster_location
from glacier_mapping.products import PRODUCTS, Product

#: Common names of the optical channels, in OPTICAL_BANDS order; alternatives in turn.
COMMON_NAMES: tuple[tuple[str, ...], ...] = (
    ("blue",), ("green",), ("red",), ("nir", "nir08"), ("swir16",), ("swir22",))
#: Sentinel-2 processing baseline from which L1C and L2A carry the -1000 offset.
OFFSET_BASELINE = (4, 0)


class StacError(ValueError):
    """A STAC item is unusable; the message names the item, the asset and the fix."""


@dataclass(frozen=True)
class StacOptical:
    """The optical files and their conversion to reflectance, read from a STAC item.

    Attributes:
        files: one file (a local Path or a URL) per channel, in OPTICAL_BANDS order.
        scale: reflectance = value * scale + offset.
        offset: see ``scale``.
        nodata: value of missing data (None when neither the item nor a product gives one).
        product: the registry product whose scale and offset these are (None when the item's
            raster bands give others, or a Sentinel-2 item predates the offset).
        name: the item's id.
        date: the item's acquisition date (``YYYY-MM-DD``) or None.
        quality: the item's quality band (the asset named after the product's mask band,
            e.g. ``scl`` or ``qa_pixel``), None when it has none or no product is known.
        mask_product: the product whose mask convention applies to ``quality``.
    """

    files: tuple[Path | str, ...]
    scale: float
    offset: float
    nodata: float | None
    product: str | None
    name: str
    date: str | None
    quality: Path | str | None = None
    mask_product: str | None = None


def _bands(asset: pystac.Asset) -> list[Mapping[str, Any]]:
    """The band objects of an asset (STAC 1.1 ``bands`` or 1.0 ``eo:bands``)."""
    fields = asset.extra_fields
    return list(fields.get("bands") or fields.get("eo:bands") or [])


def _common_name(band: Mapping[str, Any]) -> str | None:
    return band.get("eo:common_name", band.get("common_name"))


def _raster(asset: pystac.Asset) -> dict[str, Any]:
    """The asset's single band's scale, offset and nodata, where given."""
    fields = asset.extra_fields
    merged: dict[str, Any] = {}
    for band in (fields.get("raster:bands") or [{}])[:1] + _bands(asset)[:1]:
        for key in ("scale", "offset", "nodata"):
            for spelling in (key, f"raster:{key}"):
                if spelling in band:
                    merged[key] = band[spelling]
    return merged


def _product(item: pystac.Item) -> Product | None:
    """The registry product of an item: by collection, else constellation and level."""
    collection = (item.collection_id or "").lower().replace("sentinel-2", "sentinel2")
    if collection in PRODUCTS:
        return PRODUCTS[collection]
    properties = item.properties
    mission = str(properties.get("constellation") or properties.get("platform") or "").lower()
    level = str(properties.get("processing:level") or "").lower()
    if mission.startswith("sentinel-2"):
        product_type = str(properties.get("s2:product_type", "")).upper()
        level = level or {"S2MSI2A": "l2a", "S2MSI1C": "l1c"}.get(product_type, "")
        return PRODUCTS.get(f"sentinel2-{level}")
    if mission.startswith("landsat"):
        return PRODUCTS.get(f"landsat-c2-{level[:2]}") if level else None
    return None


def _old_sentinel2_baseline(item: pystac.Item) -> bool:
    """Whether a Sentinel-2 item predates the -1000 offset (baseline < 04.00)."""
    baseline = item.properties.get("s2:processing_baseline")
    if baseline is None:
        return False
    try:
        major, minor = (int(part) for part in str(baseline).split(".")[:2])
    except ValueError:
        return False
    return (major, minor) < OFFSET_BASELINE


def _asset_location(asset: pystac.Asset) -> Path | str:
    """The asset's file: a local Path, or its URL (read window by window by GDAL)."""
    return raster_location(asset.get_absolute_href() or asset.href)


def _read_item(location: str | Path, where: str) -> pystac.Item:
    """The item at ``location``; ``where`` (the option and value) leads the error message."""
    try:
        return pystac.Item.from_file(str(location))
    except (OSError, ValueError, KeyError, pystac.STACError) as error:
        raise StacError(f"{where} cannot be read as a STAC item ({error}); pass an item JSON "
                        "file.") from None


def read_stac_item(location: str | Path) -> StacOptical:
    """The optical files, scale, offset and nodata of a STAC item (a path or URL).

    Raises:
        StacError: if the item cannot be read, lacks a band, or gives no scale and matches
            no product.
    """
    where = f"--stac-item {location}"
    item = _read_item(location, where)
    single = {}
    for key, asset in item.assets.items():
        bands = _bands(asset)
        if len(bands) == 1 and _common_name(bands[0]) is not None:
            single.setdefault(_common_name(bands[0]), (key, asset))
    chosen = []
    for names in COMMON_NAMES:
        found = next((single[name] for name in names if name in single), None)
        if found is None:
            raise StacError(f"{where}: no single-band asset with common name "
                            f"{' or '.join(names)} (found {sorted(single)}); the model needs "
                            "blue, green, red, nir, swir16 and swir22.")
        chosen.append(found)
    rasters = [_raster(asset) for _, asset in chosen]
    product = _product(item)
    if all("scale" in r and "offset" in r for r in rasters):
        conversions = {(float(r["scale"]), float(r["offset"])) for r in rasters}
        if len(conversions) > 1:
            raise StacError(f"{where}: the chosen assets have different raster:bands scales "
                            f"and offsets {sorted(conversions)}; one per scene is supported.")
        scale, offset = conversions.pop()
        used = None if product is None or (scale, offset) != (product.scale, product.offset) \
            else product.name
    elif product is not None:
        scale, offset, used = product.scale, product.offset, product.name
        if product.name.startswith("sentinel2") and _old_sentinel2_baseline(item):
            offset, used = 0.0, None
    else:
        raise StacError(f"{where}: the assets give no raster:bands scale and offset and the "
                        f"item's collection ({item.collection_id}) and constellation match no "
                        f"product of {list(PRODUCTS)}; deploy the files with --optical, --bands "
                        "and --optical-scale.")
    nodata = next((float(r["nodata"]) for r in rasters if "nodata" in r),
                  None if product is None else product.nodata)
    date = item.datetime or item.common_metadata.start_datetime
    quality = None if product is None else next(
        ((key, asset) for key, asset in item.assets.items()
         if key.lower() == product.mask.band.lower()), None)
    return StacOptical(
        files=tuple(_asset_location(asset) for _, asset in chosen),
        scale=scale, offset=offset, nodata=nodata, product=used, name=item.id,
        date=None if date is None else date.astimezone(datetime.UTC).date().isoformat(),
        quality=None if quality is None else _asset_location(quality[1]),
        mask_product=None if quality is None else product.name,
    )


#: Asset keys of an elevation item's DEM, in order of preference (Copernicus DEM items on
#: public catalogues name it ``data``).
DEM_ASSET_KEYS = ("dem", "elevation", "data")


def read_dem_item(location: str | Path) -> Path | str:
    """The elevation file of a DEM STAC item (``--dem-item``): a local Path or a URL.

    The asset is the first of :data:`DEM_ASSET_KEYS`, else the item's only asset with the
    ``data`` role.

    Raises:
        StacError: if the item cannot be read or has no such asset.
    """
    where = f"--dem-item {location}"
    item = _read_item(location, where)
    asset = next((item.assets[key] for key in DEM_ASSET_KEYS if key in item.assets), None)
    if asset is None:
        data = [a for a in item.assets.values() if "data" in (a.roles or [])]
        asset = data[0] if len(data) == 1 else None
    if asset is None:
        raise StacError(f"{where}: no elevation asset (keys {list(DEM_ASSET_KEYS)} or one asset "
                        f"with role 'data'; found {sorted(item.assets)}); pass the file with "
                        "--dem instead.")
    return _asset_location(asset)
