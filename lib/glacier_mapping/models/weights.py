"""Import weights of the original GlaViTU (legacy Keras 2 HDF5) into our Keras 3 model.

The original ``save_weights`` file has one top-level group per weight-owning layer of the
training model (``fusion_block``, ``SETR``, ``ResUNet``, ``deepsupervision``, ``output`` and,
for location-encoding models, a location block). Each group's ``weight_names`` attribute lists
its tensors in the original creation order: all trainable tensors in layer order, then all
non-trainable ones (BatchNorm moving statistics). Inner names are auto-numbered, so tensors are
matched by position within a group, never by name, and every shape is checked before anything
is assigned.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np

from glacier_mapping.data.schema import LOCATION_INPUT, REGION_CODES, SENSOR_CHANNELS, SENSORS
from glacier_mapping.models.blocks import count_parameters
from glacier_mapping.models.glavitu import build_glavitu
from glacier_mapping.models.presets import get_preset
from glacier_mapping.store import atomic_path, atomic_write_text

PRESET = "paper"
GLAVITU_GROUPS = ("fusion_block", "SETR", "ResUNet", "deepsupervision", "output")
WEIGHTS_SUFFIX = "_weights.h5"
NAME_TEMPLATE = "<MODEL>_<STRATEGY>[_<REGIONS>][_<DATA TRACK>]_weights.h5"


class WeightImportError(ValueError):
    """An original weights file does not fit the model it should be loaded into."""


@dataclass(frozen=True)
class OriginalLayout:
    """What an original GlaViTU weights file says about the model that wrote it.

    Attributes:
        sensors: Input sensor groups in the file's fusion-branch order.
        patch_size: Patch size P implied by the positional embedding ((P/16)^2 tokens).
        location_group: Name of the location-encoding group, or None.
        location_size: Length of the location vector, or None.
    """

    sensors: tuple[str, ...]
    patch_size: int
    location_group: str | None
    location_size: int | None


def _names(group: h5py.Group) -> list[str]:
    """The ``weight_names`` attribute of a group as strings."""
    names = group.attrs.get("weight_names", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _root_layer_names(handle: h5py.File) -> list[str]:
    """The root ``layer_names`` attribute as strings."""
    names = handle.attrs.get("layer_names", [])
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _first_conv_channels(fusion: h5py.Group) -> list[int]:
    """Input channel counts of the fusion branches' first convolutions, in branch order."""
    channels = []
    for name in _names(fusion):
        shape = fusion[name].shape
        if name.endswith("kernel:0") and len(shape) == 4 and shape[2] != shape[3]:
            channels.append(int(shape[2]))
    return channels


def _infer_sensors(handle: h5py.File, path: Path) -> tuple[str, ...]:
    """Sensor groups from the root input layer names, checked against the channel counts."""
    channels = _first_conv_channels(handle["fusion_block"])
    named = [n for n in _root_layer_names(handle) if n in SENSOR_CHANNELS]
    if named:
        found = [SENSOR_CHANNELS[n] for n in named]
        if found != channels:
            raise WeightImportError(
                f"{path}: input layers {named} have {found} channels but the fusion block's "
                f"first convolutions expect {channels}; the file is inconsistent."
            )
        return tuple(named)
    by_count = {}
    for name in SENSORS:
        by_count.setdefault(SENSOR_CHANNELS[name], []).append(name)
    sensors = []
    for count in channels:
        options = by_count.get(count, [])
        if len(options) != 1:
            raise WeightImportError(
                f"{path}: cannot tell which sensor a {count}-channel fusion branch is "
                f"(candidates {options}) because the file's root 'layer_names' names no input "
                f"layer among {list(SENSORS)}."
            )
        sensors.append(options[0])
    return tuple(sensors)


def read_layout(path: str | os.PathLike) -> OriginalLayout:
    """Inspect an original GlaViTU weights file.

    Raises:
        FileNotFoundError: if the file does not exist.
        WeightImportError: if it is not a legacy Keras HDF5 weights file of GlaViTU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Original weights file not found: {path}; pass the path of a GlaViTU "
            f"{NAME_TEMPLATE} file."
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise WeightImportError(
            f"{path} is not an HDF5 file ({error}); pass a weights file saved by the original "
            "GlaViTU code's save_weights."
        ) from None
    with handle:
        missing = [g for g in GLAVITU_GROUPS if g not in handle or not _names(handle[g])]
        if missing:
            raise WeightImportError(
                f"{path} is not an original GlaViTU weights file: it lacks the weight groups "
                f"{missing} (found top-level groups {sorted(handle)}). Only GlaViTU files "
                "saved with the original code's save_weights can be imported."
            )
        sensors = _infer_sensors(handle, path)
        setr_names = _names(handle["SETR"])
        embedding = [n for n in setr_names if "positional_embedding" in n]
        if len(embedding) != 1:
            raise WeightImportError(f"{path}: SETR group has no single positional embedding.")
        tokens = handle["SETR"][embedding[0]].shape[0]
        grid = math.isqrt(tokens)
        if grid * grid != tokens:
            raise WeightImportError(
                f"{path}: positional embedding has {tokens} tokens, not a square grid."
            )
        vit_patch = get_preset(PRESET).vit_patch
        extra = [
            g for g in _root_layer_names(handle)
            if g in handle and g not in GLAVITU_GROUPS and _names(handle[g])
        ]
        if len(extra) > 1:
            raise WeightImportError(f"{path}: unexpected weight groups {extra}.")
        location_group = extra[0] if extra else None
        location_size = None
        if location_group is not None:
            first = _names(handle[location_group])[0]
            location_size = int(handle[location_group][first].shape[0])
    return OriginalLayout(sensors, grid * vit_patch, location_group, location_size)


def _weights_of(model: keras.Model, layer_names: Sequence[str]) -> list[keras.Variable]:
    """Variables of the named layers in original order: trainable first, then the rest."""
    variables = [v for name in layer_names for v in model.get_layer(name).weights]
    return [v for v in variables if v.trainable] + [v for v in variables if not v.trainable]


def _group_layers(model: keras.Model, layout: OriginalLayout) -> dict[str, list[str]]:
    """Our layer names per original group, in the original's layer order."""
    preset = get_preset(PRESET)
    conv = [
        f"fusion_{s}_{step}_{kind}" for s in layout.sensors for step in (1, 2)
        for kind in ("conv", "bn")
    ]
    se1 = [f"fusion_{s}_se_dense1" for s in layout.sensors]
    se2 = [f"fusion_{s}_se_dense2" for s in layout.sensors]
    setr = ["setr_patch_embed", "setr_pos_embed"]
    for index in range(preset.vit_depth):
        setr += [f"setr_block{index}_{part}" for part in ("ln1", "mha", "ln2", "mlp1", "mlp2")]
    for index in range(preset.vit_patch.bit_length() - 1):
        setr += [f"setr_decoder{index}_conv", f"setr_decoder{index}_bn"]
    setr.append("setr_projection")

    def residual(name: str) -> list[str]:
        steps = [f"{name}_{step}_{kind}" for step in (1, 2) for kind in ("conv", "bn")]
        return [*steps, f"{name}_projection"]

    unet = [n for level in range(preset.unet_steps + 1) for n in residual(f"unet_down{level}")]
    for level in reversed(range(preset.unet_steps)):
        unet += [f"unet_up{level}_conv", f"unet_up{level}_bn", *residual(f"unet_up{level}")]
    unet.append("unet_out")
    groups = {
        "fusion_block": conv + se1 + se2,
        "SETR": setr,
        "ResUNet": unet,
        "deepsupervision": ["deepsupervision"],
        "output": ["output"],
    }
    if layout.location_group is not None:
        groups[layout.location_group] = [
            "location_dense1", "location_bn1", "location_dense2", "location_bn2"
        ]
    return groups


def _collect(
    handle: h5py.File, model: keras.Model, layout: OriginalLayout
) -> list[tuple[keras.Variable, np.ndarray]]:
    """Pair every model variable with its file tensor, or raise listing every mismatch."""
    pairs, problems = [], []
    for group, layer_names in _group_layers(model, layout).items():
        variables = _weights_of(model, layer_names)
        names = _names(handle[group])
        for index in range(max(len(variables), len(names))):
            ours = variables[index] if index < len(variables) else None
            theirs = handle[group][names[index]] if index < len(names) else None
            label = f"{group}/{names[index]}" if theirs is not None else f"{group}/<missing>"
            expected = tuple(ours.shape) if ours is not None else None
            found = tuple(theirs.shape) if theirs is not None else None
            if expected != found:
                problems.append((label if ours is None else f"{label} -> {ours.path}",
                                 expected, found))
            else:
                pairs.append((ours, np.asarray(theirs[()])))
    if problems:
        listing = "\n".join(f"  {n}: expected {e}, found {f}" for n, e, f in problems)
        raise WeightImportError(
            f"{len(problems)} tensor(s) do not match the GlaViTU 'paper' model "
            f"(name, expected shape, found shape); nothing was loaded:\n{listing}"
        )
    return pairs


def import_original_weights(
    path: str | os.PathLike, patch_size: int | None = None
) -> keras.Model:
    """Build our GlaViTU ('paper' preset) and load an original weights file into it.

    Args:
        path: Legacy Keras 2 HDF5 file written by the original code's ``save_weights``.
        patch_size: Expected patch size; None to take it from the file.

    Returns:
        The model with deep supervision, inputs named after the file's sensors (plus
        "location" when the file has a location block), ready for inference.

    Raises:
        WeightImportError: if the file is not a GlaViTU file, the patch size differs, or any
            tensor is missing, extra or mis-shaped (all are listed; nothing is loaded).
    """
    path = Path(path)
    layout = read_layout(path)
    if patch_size is not None and patch_size != layout.patch_size:
        raise WeightImportError(
            f"{path} was saved for patch size {layout.patch_size} (from its positional "
            f"embedding) but patch_size={patch_size} was requested; pass "
            f"patch_size={layout.patch_size} or None."
        )
    model = build_glavitu(
        layout.sensors, layout.patch_size, PRESET, location_size=layout.location_size
    )
    with h5py.File(path, "r") as handle:
        pairs = _collect(handle, model, layout)
    for variable, value in pairs:
        variable.assign(value)
    return model


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: Strategy names as they appear in the original weight files (hyphens ignored).
KNOWN_STRATEGIES = frozenset({
    "global", "regional", "finetuning", "finetuned", "regionencoding", "coordinateencoding",
    "coordinatesencoding", "coordencoding",
})


def parse_weights_name(file_name: str) -> dict[str, str | None]:
    """Parse a file name of the :data:`NAME_TEMPLATE` form.

    A middle part made only of region codes (joined by "-" or "+") is read as the regions,
    anything else as the data track. Returns an empty dict when the name does not match.
    """
    if not file_name.endswith(WEIGHTS_SUFFIX):
        return {}
    parts = file_name[: -len(WEIGHTS_SUFFIX)].split("_")
    if len(parts) < 2 or len(parts) > 4 or not all(parts):
        return {}
    if parts[1].lower().replace("-", "") not in KNOWN_STRATEGIES:
        return {}
    parsed: dict[str, str | None] = {
        "model": parts[0], "strategy": parts[1], "regions": None, "track": None
    }
    rest = parts[2:]
    if rest and all(code.upper() in REGION_CODES for code in re.split(r"[-+]", rest[0])):
        parsed["regions"] = rest.pop(0)
    if len(rest) == 1:
        parsed["track"] = rest[0]
    elif rest:
        return {}
    return parsed


def export_imported_model(h5_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Import an original weights file and save ``model.keras`` plus ``model_card.json``.

    The file name must follow :data:`NAME_TEMPLATE`: the model card records its strategy,
    regions and data track.

    Returns:
        The output directory.

    Raises:
        FileNotFoundError: if the file does not exist.
        WeightImportError: for another name, or a file that is not GlaViTU weights.
    """
    h5_path, out_dir = Path(h5_path), Path(out_dir)
    parsed = parse_weights_name(h5_path.name)
    if h5_path.is_file() and not parsed:
        raise WeightImportError(
            f"{h5_path} does not follow {NAME_TEMPLATE} (STRATEGY one of "
            f"{sorted(KNOWN_STRATEGIES)}); rename it, e.g. glavitu_global_weights.h5."
        )
    model = import_original_weights(h5_path)
    layout = read_layout(h5_path)
    with atomic_path(out_dir / "model.keras") as temporary:
        model.save(temporary)
    card = {
        "architecture": "glavitu",
        "preset": PRESET,
        "source": "original GlaViTU weights (Maslov et al.), imported",
        "source_file": h5_path.name,
        "source_sha256": sha256_of(h5_path),
        "sensors": list(layout.sensors),
        "location_input": layout.location_size is not None,
        "location_size": layout.location_size,
        "input_names": [*layout.sensors, *([LOCATION_INPUT] if layout.location_size else [])],
        "patch_size": layout.patch_size,
        "parameter_count": count_parameters(model),
        "strategy": parsed.get("strategy"),
        "regions": parsed.get("regions"),
        "data_track": parsed.get("track"),
    }
    atomic_write_text(out_dir / "model_card.json", json.dumps(card, indent=2) + "\n")
    return out_dir
