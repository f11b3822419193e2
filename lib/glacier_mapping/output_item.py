"""The STAC item of a deployment's outputs, so that mapped scenes are indexed like their inputs.

``glacier-mapping deploy`` writes ``item.json`` beside its outputs: a STAC 1.1 item with the
scene's footprint (WGS 84) and acquisition date, the projection extension (the grid), one asset
per output (relative links, so the folder can be moved or uploaded as it is), a
``derived_from`` link to the input STAC item when there was one, and the run's figures and
model card as ``glacier_mapping:`` properties.
"""

from __future__ import annotations

import datetime
import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension
from rasterio.crs import CRS
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_geom

#: Media types of the outputs, by file suffix.
MEDIA_TYPES = {".tif": pystac.MediaType.COG, ".gpkg": "application/geopackage+sqlite3",
               ".json": pystac.MediaType.JSON}
#: Title and roles of each output file.
ASSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "glacier_class.tif": ("Glacier class (1 glacier, 0 background, 255 no data)", ("data",)),
    "confidence.tif": ("Calibrated confidence of the class", ("data", "quality")),
    "glaciers.gpkg": ("Glacier outlines", ("data",)),
    "summary.json": ("Deployment summary: inputs, parameters, figures", ("metadata",)),
}


def footprint(crs: str, transform: list[float], height: int,
              width: int) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline as a WGS 84 polygon and its bounding box."""
    left, bottom, right, top = array_bounds(height, width, Affine(*transform))
    ring = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    geometry = transform_geom(CRS.from_user_input(crs), "EPSG:4326",
                              {"type": "Polygon", "coordinates": [ring]})
    xs = [x for x, _ in geometry["coordinates"][0]]
    ys = [y for _, y in geometry["coordinates"][0]]
    return dict(geometry), [min(xs), min(ys), max(xs), max(ys)]


def output_item(summary: Mapping[str, Any], model_card: Mapping[str, Any],
                item_file: str) -> pystac.Item:
    """The STAC item of a deployment (``summary``: ``DeploymentSummary.to_json()``).

    Args:
        summary: the deployment's summary.
        model_card: the model's ``model_card.json`` (empty when it has none).
        item_file: the item's own file name, left out of its assets.
    """
    grid = summary["grid"]
    geometry, bbox = footprint(grid["crs"], grid["transform"], grid["height"], grid["width"])
    created = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    date = summary["date"]
    acquired = (None if date is None
                else datetime.datetime.fromisoformat(date).replace(tzinfo=datetime.UTC))
    properties: dict[str, Any] = {
        "title": f"Glacier map of {summary['scene']}",
        "created": created.isoformat(),
        "processing:software": {
            "glacier-mapping": importlib.metadata.version("glacier-mapping")},
        "glacier_mapping:scene": summary["scene"],
        "glacier_mapping:inputs": summary["inputs"],
        "glacier_mapping:model": {**summary["model"], "card": dict(model_card)},
        "glacier_mapping:calibrator": summary["calibrator"],
        "glacier_mapping:estimated_iou": summary["estimated_iou"],
        "glacier_mapping:glacier_area_km2": summary["glacier_area_km2"],
        "glacier_mapping:pixels": summary["pixels"],
        "glacier_mapping:parameters": summary["parameters"],
    }
    if acquired is None:  # STAC needs a time: the item then dates the processing
        properties["glacier_mapping:acquisition_date_unknown"] = True
    item = pystac.Item(
        id=f"{summary['scene']}_glaciers", geometry=geometry, bbox=bbox,
        datetime=acquired or created, properties=properties,
    )
    projection = ProjectionExtension.ext(item, add_if_missing=True)
    projection.code = grid["crs"]
    projection.shape = [grid["height"], grid["width"]]
    projection.transform = list(grid["transform"])
    for name, path in summary["outputs"].items():
        if name == item_file:
            continue
        title, roles = ASSETS.get(name, (name, ("data",)))
        item.add_asset(Path(name).stem, pystac.Asset(
            href=f"./{Path(path).name}", media_type=MEDIA_TYPES.get(Path(name).suffix),
            title=title, roles=list(roles)))
    source_item = summary["parameters"].get("stac_item")
    if source_item is not None:
        item.add_link(pystac.Link("derived_from", source_item, pystac.MediaType.JSON,
                                  "The input scene's STAC item"))
    return item
