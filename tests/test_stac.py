"""deploy --stac-item: assets by common name, scale from raster:bands or the product registry."""

import datetime
import json

import numpy as np
import pystac
import pytest
from test_deploy import scene_arrays, tiny_model, write_raster
from test_products import HEIGHT, WIDTH, deploy, maps, write_dn

from glacier_mapping.stac import StacError, read_stac_item

BANDS = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B8A": "nir08",
         "B11": "swir16", "B12": "swir22"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("stac")
    reflectance, dem = scene_arrays(HEIGHT, WIDTH)
    dn = np.round(reflectance * 10_000 + 1000).astype("uint16")  # Sentinel-2 L2A >= 04.00
    dn[:, 0, 0] = 0
    files = dict(zip(("B02", "B03", "B04", "B08", "B11", "B12"), dn, strict=True))
    files["B8A"] = dn[3] // 2  # narrow nir: must not be chosen while the item has nir
    for name, data in files.items():
        write_dn(root / f"{name}.tif", data)
    write_dn(root / "visual.tif", dn[[2, 1, 0]])
    return {"root": root, "dem": write_raster(root / "dem.tif", dem),
            "model": tiny_model(root / "model.keras"),
            "per_band": [root / f"{name}.tif" for name in ("B02", "B03", "B04", "B08", "B11",
                                                           "B12")]}


def write_item(kit, name, raster=True, collection="sentinel-2-l2a", properties=None,
               skip=(), href=None, extra_assets=None):
    """A STAC 1.0-style item (Earth Search layout) with relative hrefs to the kit's files."""
    item = pystac.Item(name, None, None, datetime.datetime(2023, 8, 1, 10, 30,
                                                           tzinfo=datetime.UTC),
                       {"constellation": "sentinel-2", **(properties or {})},
                       collection=collection)
    for band, common in BANDS.items():
        if common in skip:
            continue
        fields = {"eo:bands": [{"name": band, "common_name": common}]}
        if raster:
            fields["raster:bands"] = [{"nodata": 0, "scale": 0.0001, "offset": -0.1}]
        item.add_asset(common, pystac.Asset(href or f"{band}.tif", extra_fields=fields))
    item.add_asset("visual", pystac.Asset("visual.tif", extra_fields={"eo:bands": [
        {"name": b, "common_name": c} for b, c in (("B04", "red"), ("B03", "green"),
                                                   ("B02", "blue"))]}))
    for key, asset_href in (extra_assets or {}).items():
        item.add_asset(key, pystac.Asset(asset_href))
    path = kit["root"] / f"{name}.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


def test_stac_item_equals_product_bit_for_bit(kit, tmp_path):
    item = write_item(kit, "S2A_T32TMS_20230801")
    assert deploy(kit, tmp_path / "stac", "--stac-item", str(item), optical=()) == 0
    assert deploy(kit, tmp_path / "product", "--product", "sentinel2-l2a",
                  optical=kit["per_band"]) == 0
    for mine, theirs in zip(maps(tmp_path / "stac"), maps(tmp_path / "product"), strict=True):
        assert mine.tobytes() == theirs.tobytes()
    summary = json.loads((tmp_path / "stac" / "summary.json").read_text())
    assert summary["scene"] == "S2A_T32TMS_20230801" and summary["date"] == "2023-08-01"
    assert summary["parameters"]["product"] == "sentinel2-l2a"
    assert summary["parameters"]["stac_item"] == str(item)
    assert summary["inputs"]["optical"] == [str(path) for path in kit["per_band"]]


def test_scale_from_the_registry_by_collection_or_constellation(kit):
    by_collection = read_stac_item(write_item(kit, "a", raster=False))
    assert (by_collection.scale, by_collection.offset, by_collection.nodata) == (1e-4, -0.1, 0)
    assert by_collection.product == "sentinel2-l2a"
    by_type = read_stac_item(write_item(kit, "b", raster=False, collection=None,
                                        properties={"s2:product_type": "S2MSI1C"}))
    assert by_type.product == "sentinel2-l1c"
    old = read_stac_item(write_item(kit, "c", raster=False,
                                    properties={"s2:processing_baseline": "03.01"}))
    assert (old.scale, old.offset, old.product) == (1e-4, 0.0, None)


def test_old_baseline_item_with_new_data_is_refused_by_the_check(kit, tmp_path, capsys):
    """An item claiming baseline 03.01 over offset DN: the check names the missing offset."""
    item = write_item(kit, "d", raster=False, properties={"s2:processing_baseline": "03.01"})
    assert deploy(kit, tmp_path / "out", "--stac-item", str(item), optical=()) == 2
    assert "BOA_ADD_OFFSET (-1000) was not applied" in capsys.readouterr().err


def test_bad_items_are_refused(kit, tmp_path, capsys):
    with pytest.raises(StacError, match=r"no single-band asset with common name swir22 "):
        read_stac_item(write_item(kit, "e", skip=("swir22",)))
    with pytest.raises(StacError, match=r"asset 'blue' is remote \(https://example.com/B\.tif\)"):
        read_stac_item(write_item(kit, "f", href="https://example.com/B.tif"))
    with pytest.raises(StacError, match=r"match no product"):
        read_stac_item(write_item(kit, "g", raster=False, collection="other",
                                  properties={"constellation": "other"}))
    with pytest.raises(StacError, match=r"cannot be read as a STAC item"):
        read_stac_item(kit["dem"])
    item = write_item(kit, "h")
    assert deploy(kit, tmp_path / "out", "--stac-item", str(item), "--product",
                  "sentinel2-l2a", optical=kit["per_band"][:1]) == 2
    assert "--stac-item sets the optical files, bands, scale, offset and quality band; drop " \
           "--optical, --product." in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_items_scl_masks_clouds_as_quality_does(kit, tmp_path):
    scl = np.full((HEIGHT, WIDTH), 4, dtype="uint16")
    scl[10:20, 5:25] = 8  # cloud, medium probability
    write_dn(kit["root"] / "SCL.tif", scl)
    item = write_item(kit, "S2B_with_scl", extra_assets={"scl": "SCL.tif"})
    assert deploy(kit, tmp_path / "stac", "--stac-item", str(item), optical=()) == 0
    assert deploy(kit, tmp_path / "files", "--product", "sentinel2-l2a", "--quality",
                  str(kit["root"] / "SCL.tif"), optical=kit["per_band"]) == 0
    for mine, theirs in zip(maps(tmp_path / "stac"), maps(tmp_path / "files"), strict=True):
        assert mine.tobytes() == theirs.tobytes()
    assert (maps(tmp_path / "stac")[0][10:20, 5:25] == 255).all()
    summary = json.loads((tmp_path / "stac" / "summary.json").read_text())
    assert summary["parameters"]["quality"] == str(kit["root"] / "SCL.tif")
    output = pystac.Item.from_file(str(tmp_path / "stac" / "item.json"))
    assert [link.href for link in output.links if link.rel == "derived_from"] == [str(item)]
