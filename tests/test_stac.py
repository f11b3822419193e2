"""deploy --stac-item: assets by common name, scale from raster:bands or the product registry."""

import argparse
import datetime
import functools
import http.server
import json
import re
import threading
from pathlib import Path

import numpy as np
import pystac
import pytest
from test_deploy import scene_arrays, tiny_model, write_raster
from test_products import HEIGHT, WIDTH, deploy, maps, write_dn

from glacier_mapping.data.scenes import OPTICAL_BANDS
from glacier_mapping.deploy import add_deploy_arguments, deploy_from_args
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


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP range requests, as object stores do for COGs."""

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return None
        size = path.stat().st_size
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        start, end = (0, size - 1) if match is None else (
            int(match[1]), min(int(match[2] or size - 1), size - 1))
        self.send_response(200 if match is None else 206)
        if match is not None:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        handle = path.open("rb")
        handle.seek(start)
        self.length = end - start + 1
        return handle

    def copyfile(self, source, outputfile):
        outputfile.write(source.read(self.length))

    def log_message(self, *args):
        type(self).requests.append((self.command, self.path, self.headers.get("Range")))


@pytest.fixture
def served(kit):
    """The kit's folder over HTTP on the loopback interface, for the test's duration only."""
    handler = type("Handler", (_RangeHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(kit["root"])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    thread.join(timeout=10)


def test_remote_assets_are_read_by_range_requests(kit, tmp_path, served):
    url, requests = served
    item = write_item(kit, "S2A_remote")
    remote = json.loads(item.read_text())
    for asset in remote["assets"].values():
        asset["href"] = f"{url}/{asset['href']}"
    item.write_text(json.dumps(remote))
    assert deploy(kit, tmp_path / "remote", "--stac-item", str(item), optical=()) == 0
    assert deploy(kit, tmp_path / "local", "--product", "sentinel2-l2a",
                  optical=kit["per_band"]) == 0
    for mine, theirs in zip(maps(tmp_path / "remote"), maps(tmp_path / "local"), strict=True):
        assert mine.tobytes() == theirs.tobytes()
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert summary["inputs"]["optical"][0] == f"{url}/B02.tif"
    rasters = [header for command, path, header in requests
               if command == "GET" and path.endswith(".tif")]
    assert rasters and all(header and header.startswith("bytes=") for header in rasters)
    # the item itself remote, its relative hrefs resolved against its URL
    relative = write_item(kit, "S2A_remote_relative")
    assert deploy(kit, tmp_path / "url", "--stac-item", f"{url}/{relative.name}",
                  optical=()) == 0
    for mine, theirs in zip(maps(tmp_path / "url"), maps(tmp_path / "local"), strict=True):
        assert mine.tobytes() == theirs.tobytes()


def test_dem_item_equals_dem_file(kit, tmp_path, capsys):
    dem_item = pystac.Item("Copernicus_DSM_COG_10_N46_00_E009_00", None, None,
                           datetime.datetime(2021, 4, 22, tzinfo=datetime.UTC), {})
    dem_item.add_asset("data", pystac.Asset("dem.tif", roles=["data"]))
    path = kit["root"] / "dem_item.json"
    path.write_text(json.dumps(dem_item.to_dict(include_self_link=False)))
    item = write_item(kit, "S2A_dem_item")
    parser = argparse.ArgumentParser()
    add_deploy_arguments(parser)
    args = parser.parse_args(["--stac-item", str(item), "--dem-item", str(path), "--model",
                              str(kit["model"]), "--out", str(tmp_path / "item"),
                              "--no-progress", "--precision", "float32"])
    assert deploy_from_args(args) == 0
    assert deploy(kit, tmp_path / "file", "--stac-item", str(item), optical=()) == 0
    for mine, theirs in zip(maps(tmp_path / "item"), maps(tmp_path / "file"), strict=True):
        assert mine.tobytes() == theirs.tobytes()
    dem_item.assets.clear()
    path.write_text(json.dumps(dem_item.to_dict(include_self_link=False)))
    args.out = tmp_path / "bad"
    assert deploy_from_args(args) == 2
    assert "no elevation asset" in capsys.readouterr().err


LANDSAT_BANDS = {"SR_B2": "blue", "SR_B3": "green", "SR_B4": "red", "SR_B5": "nir08",
                 "SR_B6": "swir16", "SR_B7": "swir22"}


def _landsat_item(kit):
    """A Landsat Collection 2 Level-2 item: DN = (reflectance + 0.2) / 2.75e-5, QA_PIXEL."""
    reflectance, _ = scene_arrays(HEIGHT, WIDTH)
    dn = np.round((reflectance + 0.2) / 2.75e-5).astype("uint16")
    qa = np.full((HEIGHT, WIDTH), 21824, dtype="uint16")  # clear land
    qa[5:15, 30:45] = 22280  # high-confidence cloud (bit 3 set)
    item = pystac.Item("LC09_L2SP_140041_20230815", None, None,
                       datetime.datetime(2023, 8, 15, 4, 40, tzinfo=datetime.UTC),
                       {"platform": "landsat-9"}, collection="landsat-c2-l2")
    for index, (band, common) in enumerate(LANDSAT_BANDS.items()):
        write_dn(kit["root"] / f"{band}.tif", dn[index])
        item.add_asset(common, pystac.Asset(str(kit["root"] / f"{band}.tif"), extra_fields={
            "eo:bands": [{"name": band, "common_name": common}],
            "raster:bands": [{"nodata": 0, "scale": 2.75e-5, "offset": -0.2}]}))
    write_dn(kit["root"] / "QA_PIXEL.tif", qa)
    item.add_asset("qa_pixel", pystac.Asset(str(kit["root"] / "QA_PIXEL.tif")))
    return item, qa


def test_static_catalogue_items_equal_explicit_flags(kit, tmp_path):
    """A self-contained pystac catalogue of a Sentinel-2 L2A and a Landsat C2 L2 item."""
    landsat, qa = _landsat_item(kit)
    sentinel = pystac.Item.from_file(str(write_item(kit, "S2A_catalogue")))
    for key, asset in sentinel.assets.items():  # absolute hrefs before the catalogue moves
        asset.href = str(kit["root"] / Path(asset.href).name)
        sentinel.assets[key] = asset
    catalogue = pystac.Catalog("scenes", "Scenes to map")
    catalogue.add_items([sentinel, landsat])
    catalogue.normalize_hrefs(str(tmp_path / "catalogue"))
    catalogue.save(pystac.CatalogType.SELF_CONTAINED)
    found = {item.id: item for item in pystac.Catalog.from_file(
        str(tmp_path / "catalogue" / "catalog.json")).get_items(recursive=True)}
    assert set(found) == {"S2A_catalogue", landsat.id}

    s2_item = tmp_path / "catalogue" / "S2A_catalogue" / "S2A_catalogue.json"
    assert deploy(kit, tmp_path / "s2_item", "--stac-item", str(s2_item), optical=()) == 0
    assert deploy(kit, tmp_path / "s2_flags", "--bands", ",".join(OPTICAL_BANDS),
                  "--optical-scale", "0.0001", "--optical-offset", "-0.1",
                  optical=kit["per_band"]) == 0
    for mine, theirs in zip(maps(tmp_path / "s2_item"), maps(tmp_path / "s2_flags"),
                            strict=True):
        assert mine.tobytes() == theirs.tobytes()

    landsat_item = tmp_path / "catalogue" / landsat.id / f"{landsat.id}.json"
    assert deploy(kit, tmp_path / "l_item", "--stac-item", str(landsat_item), optical=()) == 0
    assert deploy(kit, tmp_path / "l_flags", "--product", "landsat-c2-l2", "--quality",
                  str(kit["root"] / "QA_PIXEL.tif"),
                  optical=[kit["root"] / f"{band}.tif" for band in LANDSAT_BANDS]) == 0
    for mine, theirs in zip(maps(tmp_path / "l_item"), maps(tmp_path / "l_flags"),
                            strict=True):
        assert mine.tobytes() == theirs.tobytes()
    classes = maps(tmp_path / "l_item")[0]
    assert (classes[qa == 22280] == 255).all() and (classes[qa == 21824] != 255).any()
    summary = json.loads((tmp_path / "l_item" / "summary.json").read_text())
    assert summary["parameters"]["product"] == "landsat-c2-l2"
    assert summary["scene"] == landsat.id and summary["date"] == "2023-08-15"
