"""Registry of the real example scenes: pinned upstream URLs, sha256 checksums, local copies.

The files are byte-for-byte copies of GlacioHack/geoutils-data at a fixed commit, except the
derived ``glacier_mask_rgi60*.tif`` masks, which exist only in the shared kit (see
``real_scenes/README.md``). A local copy is looked up, in order, in the ``local_dir`` argument,
the ``GLACIER_MAPPING_REAL_SCENES`` environment variable, ``<repo>/../shared/real_scenes`` and
the download cache; downloading happens only when explicitly allowed.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from glacier_mapping.store import atomic_path, file_digest

#: Environment variable naming a directory laid out like ``shared/real_scenes``.
ENV_VAR = "GLACIER_MAPPING_REAL_SCENES"
#: Environment variable overriding the download cache directory.
CACHE_ENV_VAR = "GLACIER_MAPPING_CACHE"
UPSTREAM_REPO = "GlacioHack/geoutils-data"
UPSTREAM_COMMIT = "bd45050f82f552fc2a1c977993f20b0c13eeb05b"
_RAW = f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}/data"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_DEFAULT_SHARED = _REPO_ROOT.parent / "shared" / "real_scenes"


@dataclass(frozen=True)
class RegistryEntry:
    """One registered file.

    Attributes:
        path: path relative to the real-scenes directory.
        sha256: checksum of the exact bytes.
        url: pinned upstream raw URL, or None for files derived in the shared kit only.
    """

    path: str
    sha256: str
    url: str | None


def _entry(path: str, sha256: str, upstream: str | None) -> RegistryEntry:
    return RegistryEntry(path, sha256, None if upstream is None else f"{_RAW}/{upstream}")


_EV, _EX = "everest_landsat7", "exploradores_aster_dem"
_EV_UP, _EX_UP = "Everest_Landsat", "Exploradores_ASTER"

#: Every registered file, keyed by its path relative to the real-scenes directory.
REGISTRY: dict[str, RegistryEntry] = {
    entry.path: entry
    for entry in (
        _entry(f"{_EV}/LE71400412000304SGS00_RGB.tif",
               "7d0505a8610fd7784cb71c03e5b242715cd1574e978c2c86553d60fd82372c30",
               f"{_EV_UP}/LE71400412000304SGS00_RGB.tif"),
        _entry(f"{_EV}/LE71400412000304SGS00_B4.tif",
               "271fa34e248f016f87109c8e81960caaa737558fbae110ec9e0d9e2d30d80c26",
               f"{_EV_UP}/LE71400412000304SGS00_B4.tif"),
        _entry(f"{_EV}/15_rgi60_glacier_outlines.gpkg",
               "d1a5bcd4bd4731a24c2398c016a6f5a8064160fedd5bab10609adacda9ba41ef",
               f"{_EV_UP}/15_rgi60_glacier_outlines.gpkg"),
        _entry(f"{_EV}/LE71400412000304SGS00_RGB_test.tif",
               "b77109f8027418cdd36ccab34cc3996bbbf2756b116ecf0fed8e4163cd7aa2f9",
               f"{_EV_UP}/LE71400412000304SGS00_RGB_test.tif"),
        _entry(f"{_EV}/LE71400412000304SGS00_B4_test.tif",
               "5aa1a0a1c17efd211e42218ab5e2f3e0e404b96ba5055ac5eebef756ad5c65bc",
               f"{_EV_UP}/LE71400412000304SGS00_B4_test.tif"),
        _entry(f"{_EV}/15_rgi60_glacier_outlines_test.gpkg",
               "3642e2fa5da1d9cad2378e0941985ae47077dba7839e30fdd413f8e868ab2ade",
               f"{_EV_UP}/15_rgi60_glacier_outlines_test.gpkg"),
        _entry(f"{_EV}/glacier_mask_rgi60.tif",
               "a9d7a58d63bb338bf3963bd13c6625cf4cfb478e49b104402152eef7a55ebaef", None),
        _entry(f"{_EV}/glacier_mask_rgi60_test.tif",
               "e0ebd528d8d8e652e446dc8b074c2f69721a2f8920e859269dcd984fe172dc53", None),
        _entry(f"{_EX}/AST_L1A_00303182012144228_Z.tif",
               "dcb0d708d042553cdd2bb4fd82c55b5674a5e0bd6ea46f1a021b396b7d300033",
               f"{_EX_UP}/AST_L1A_00303182012144228_Z.tif"),
        _entry(f"{_EX}/17_rgi60_glacier_outlines.gpkg",
               "19c2dac089ce57373355213fdf2fd72f601bf97f21b04c4920edb1e4384ae2b2",
               f"{_EX_UP}/17_rgi60_glacier_outlines.gpkg"),
        _entry(f"{_EX}/glacier_mask_rgi60.tif",
               "81dca613ccf22be222a30a04eff7b670a6824258c825f0c61dc4650add97459a", None),
    )
}


class RealSceneNotAvailable(FileNotFoundError):
    """A real example file is neither present locally nor allowed to be downloaded."""


class ChecksumMismatch(ValueError):
    """A local or downloaded file does not have the registered sha256."""


@dataclass(frozen=True)
class EverestScene:
    """Paths of the Everest Landsat 7 ETM+ scene (2000-10-30, EPSG:32645, 30 m).

    Attributes:
        rgb: 3-band uint8 red, green, blue (ETM+ bands 3, 2, 1).
        nir: 1-band uint8 NIR (ETM+ band 4).
        outlines: RGI 6.0 outlines GeoPackage (layer ``glacier_outlines``).
        mask: 0/1 uint8 glacier mask rasterised on the image grid.
        date: acquisition date.
        bands: band map of ``(rgb, nir)`` in file order, for
            :class:`glacier_mapping.data.scenes.SceneSource` (8-bit DN, not reflectance; no
            SWIR band, so a six-band model cannot run on it without SWIR files).
    """

    rgb: Path
    nir: Path
    outlines: Path
    mask: Path
    date: str = "2000-10-30"
    bands: tuple[str, ...] = ("red", "green", "blue", "nir")


def cache_dir() -> Path:
    """Download cache outside the repository (``$GLACIER_MAPPING_CACHE`` or ``~/.cache``)."""
    override = os.environ.get(CACHE_ENV_VAR)
    base = Path(override) if override else Path.home() / ".cache" / "glacier_mapping"
    return base / "real_scenes"


def _entry_for(name: str) -> RegistryEntry:
    if name not in REGISTRY:
        raise KeyError(f"Unknown real-scene file {name!r}; registered names: {sorted(REGISTRY)}.")
    return REGISTRY[name]


def _candidates(local_dir: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    """Directories to search, each with a description for error messages."""
    found: list[tuple[str, Path]] = []
    if local_dir is not None:
        found.append(("local_dir argument", Path(local_dir)))
    if os.environ.get(ENV_VAR):
        found.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    found.append(("default shared copy", _DEFAULT_SHARED))
    found.append(("download cache", cache_dir()))
    return found


def verify(path: str | os.PathLike[str], name: str) -> Path:
    """Check that ``path`` has the registered checksum of ``name``; returns the path.

    Raises:
        ChecksumMismatch: naming the file, both checksums and how to fix it.
    """
    path = Path(path)
    expected = _entry_for(name).sha256
    actual = file_digest(path)
    if actual != expected:
        raise ChecksumMismatch(
            f"{path}: sha256 {actual} differs from the registered {expected} for {name!r}; the "
            "copy is corrupt or a different version. Replace it with a fresh copy of "
            f"{UPSTREAM_REPO}@{UPSTREAM_COMMIT[:12]} (or fetch(..., download=True))."
        )
    return path


def fetch(
    name: str, local_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> Path:
    """Path of a verified copy of a registered file.

    Args:
        name: relative path, a key of :data:`REGISTRY`
            (e.g. ``everest_landsat7/LE71400412000304SGS00_B4.tif``).
        local_dir: directory laid out like ``shared/real_scenes`` to search first.
        download: allow downloading the pinned upstream file into :func:`cache_dir` when no
            local copy exists (never done implicitly).

    Raises:
        KeyError: if the name is not registered.
        ChecksumMismatch: if the first local copy found has the wrong checksum.
        RealSceneNotAvailable: if no copy exists and downloading is not allowed or possible.
    """
    entry = _entry_for(name)
    searched = []
    for label, directory in _candidates(local_dir):
        candidate = directory / entry.path
        searched.append(f"{label}: {candidate}")
        if candidate.is_file():
            return verify(candidate, name)
    if download and entry.url is not None:
        return _download(entry, name, cache_dir() / entry.path)
    how = (
        f"set ${ENV_VAR} (or pass local_dir=) to a directory laid out like shared/real_scenes"
    )
    if entry.url is None:
        how += f"; {name!r} is derived in the shared kit and cannot be downloaded"
    else:
        how += f", or call fetch({name!r}, download=True) to get {entry.url}"
    raise RealSceneNotAvailable(
        f"Real scene file {name!r} not found (searched {'; '.join(searched)}). To get it, {how}."
    )


def _download(entry: RegistryEntry, name: str, target: Path) -> Path:
    """Download ``entry`` to ``target`` atomically, verifying the checksum first."""
    digest = hashlib.sha256()
    try:
        with (
            atomic_path(target) as temporary,
            urllib.request.urlopen(entry.url, timeout=60) as response,
            open(temporary, "wb") as handle,
        ):
            while block := response.read(1 << 20):
                digest.update(block)
                handle.write(block)
            if digest.hexdigest() != entry.sha256:
                raise ChecksumMismatch(
                    f"Downloaded {entry.url} has sha256 {digest.hexdigest()}, expected "
                    f"{entry.sha256} for {name!r}; the upstream file changed or the transfer "
                    "failed."
                )
    except (urllib.error.URLError, OSError) as error:
        raise RealSceneNotAvailable(
            f"Could not download {entry.url} ({error}); check the network or set ${ENV_VAR} to "
            "a local copy."
        ) from None
    return target


def everest_scene(
    local_dir: str | os.PathLike[str] | None = None, download: bool = False
) -> EverestScene:
    """Verified paths of the full Everest Landsat 7 scene, its RGI outlines and mask.

    Both rasters open with the same transform (origin 478000, 3108140) under GDAL's default
    PixelIsPoint handling even though B4 carries ``AREA_OR_POINT=Point``; do not set
    ``GTIFF_POINT_GEO_IGNORE=TRUE`` when reading them, or B4 shifts by half a pixel.

    Raises:
        RealSceneNotAvailable: if a file is missing (see :func:`fetch`).
    """
    return EverestScene(
        rgb=fetch(f"{_EV}/LE71400412000304SGS00_RGB.tif", local_dir, download),
        nir=fetch(f"{_EV}/LE71400412000304SGS00_B4.tif", local_dir, download),
        outlines=fetch(f"{_EV}/15_rgi60_glacier_outlines.gpkg", local_dir, download),
        mask=fetch(f"{_EV}/glacier_mask_rgi60.tif", local_dir, download),
    )
