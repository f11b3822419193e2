"""GlaViTU: fusion block, SETR (ViT + progressive upsampling) and residual U-Net in series.

The structure reproduces the original implementation layer for layer (checked by importing
its weights and comparing outputs, see :mod:`glacier_mapping.models.weights`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from glacier_mapping.data.schema import LOCATION_INPUT, check_sensors
from glacier_mapping.models.blocks import (
    BN_EPSILON,
    LN_EPSILON,
    FusedBatchNormalization,
    MCDropout,
    PositionalEmbedding,
    add_location,
    conv_bn_act,
    conv_bn_act_x2,
    fusion_block,
    sensor_inputs,
    softmax_head,
)
from glacier_mapping.models.presets import Preset, get_preset


def check_patch_size(patch_size: int, multiple: int, preset_name: str) -> None:
    """Raise a clear error unless ``patch_size`` is a positive multiple of ``multiple``."""
    if not isinstance(patch_size, int) or patch_size <= 0 or patch_size % multiple:
        raise ValueError(
            f"patch_size={patch_size!r} must be a positive multiple of {multiple} for preset "
            f"{preset_name!r} (ViT patch size / down-sampling factor); e.g. use "
            f"{max(multiple, (int(patch_size) // multiple) * multiple)}."
        )


def check_location_size(location_size: int | None) -> None:
    """Raise a clear error for a non-positive location vector size."""
    if location_size is not None and (not isinstance(location_size, int) or location_size < 1):
        raise ValueError(
            f"location_size={location_size!r} must be None (no location input) or a positive "
            "integer, e.g. 12 for the region one-hot or 4 for coordinates."
        )


def transformer_block(x: keras.KerasTensor, preset: Preset, name: str) -> keras.KerasTensor:
    """Pre-LayerNorm transformer block: MHA and an MLP, each in a residual branch.

    As in the original, both MLP layers use (exact) GELU.
    """
    y = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_ln1")(x)
    y = layers.MultiHeadAttention(
        num_heads=preset.vit_heads, key_dim=preset.vit_dim // preset.vit_heads, name=f"{name}_mha"
    )(y, y)
    x = layers.Add(name=f"{name}_add1")([x, y])
    y = layers.LayerNormalization(epsilon=LN_EPSILON, name=f"{name}_ln2")(x)
    y = layers.Dense(preset.vit_mlp, activation="gelu", name=f"{name}_mlp1")(y)
    y = MCDropout(preset.dropout, name=f"{name}_drop1")(y)
    y = layers.Dense(preset.vit_dim, activation="gelu", name=f"{name}_mlp2")(y)
    y = MCDropout(preset.dropout, name=f"{name}_drop2")(y)
    return layers.Add(name=f"{name}_add2")([x, y])


def setr(x: keras.KerasTensor, patch_size: int, preset: Preset) -> keras.KerasTensor:
    """ViT encoder (no class token) and progressive-upsampling decoder back to full size.

    The decoder steps are conv 3x3 + BatchNorm (no activation, as in the original) followed by
    x2 bilinear upsampling; a linear 1x1 convolution restores the input width.
    """
    grid, patch = patch_size // preset.vit_patch, preset.vit_patch
    channels = x.shape[-1]
    t = layers.Reshape((grid, patch, grid, patch, channels), name="setr_split")(x)
    t = layers.Permute((1, 3, 2, 4, 5), name="setr_patches")(t)
    t = layers.Reshape((grid * grid, patch * patch * channels), name="setr_flatten")(t)
    t = layers.Dense(preset.vit_dim, name="setr_patch_embed")(t)
    t = PositionalEmbedding(name="setr_pos_embed")(t)
    for index in range(preset.vit_depth):
        t = transformer_block(t, preset, name=f"setr_block{index}")
    y = layers.Reshape((grid, grid, preset.vit_dim), name="setr_grid")(t)
    for index in range(preset.vit_patch.bit_length() - 1):
        y = conv_bn_act(y, preset.decoder_filters, name=f"setr_decoder{index}", activation=False)
        y = layers.UpSampling2D(interpolation="bilinear", name=f"setr_decoder{index}_up")(y)
    return layers.Conv2D(channels, 1, name="setr_projection")(y)


def residual_block(
    x: keras.KerasTensor, filters: int, dropout: float, name: str
) -> keras.KerasTensor:
    """Double conv-BN-LeakyReLU plus a linear 1x1 projection shortcut."""
    y = conv_bn_act_x2(x, filters, dropout, name=name)
    shortcut = layers.Dense(filters, use_bias=False, name=f"{name}_projection")(x)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def residual_unet(x: keras.KerasTensor, preset: Preset) -> keras.KerasTensor:
    """Residual U-Net with ``unet_steps`` max-pool steps and up-conv + skip concatenation.

    Up-conv, as in the original: x2 nearest upsampling, 2x2 conv without bias, BatchNorm (no
    activation), then concatenation [upsampled, skip]. Residual blocks add without activation.
    """
    skips = []
    for level in range(preset.unet_steps + 1):
        if level:
            x = layers.MaxPooling2D(name=f"unet_down{level}_pool")(x)
        x = residual_block(x, preset.unet_filters * 2**level, preset.dropout, f"unet_down{level}")
        skips.append(x)
    for level in reversed(range(preset.unet_steps)):
        filters = preset.unet_filters * 2**level
        x = layers.UpSampling2D(name=f"unet_up{level}_up")(x)
        x = layers.Conv2D(filters, 2, padding="same", use_bias=False, name=f"unet_up{level}_conv")(
            x
        )
        x = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"unet_up{level}_bn")(x)
        x = layers.Concatenate(name=f"unet_up{level}_concat")([x, skips[level]])
        x = residual_block(x, filters, preset.dropout, f"unet_up{level}")
    return x


def build_glavitu(
    sensors: Sequence[str],
    patch_size: int,
    preset: str = "paper",
    location_size: int | None = None,
    deep_supervision: bool = True,
) -> keras.Model:
    """Build GlaViTU.

    Args:
        sensors: Input sensor groups (any order; inputs follow ``schema.SENSORS`` order).
        patch_size: Input height and width P (a multiple of the preset's ViT patch size).
        preset: Size preset name (see :data:`glacier_mapping.models.presets.PRESETS`).
        location_size: Size of the optional location vector input (12 for the region one-hot,
            4 for coordinates); None for no location input.
        deep_supervision: Also output the auxiliary head after the SETR part.

    Returns:
        A model taking a dict {sensor: (P, P, C), ["location": (L,)]} and returning
        {"output": (B, P, P, 2) softmax[, "deepsupervision": (B, P, P, 2) softmax]}.
        Dropout is active in training and, after ``set_mc_dropout(model, True)``, at inference.
    """
    config = get_preset(preset)
    sensors = check_sensors(list(sensors))
    check_patch_size(patch_size, max(config.vit_patch, 2**config.unet_steps), preset)
    check_location_size(location_size)
    inputs = sensor_inputs(sensors, patch_size)
    location = None
    if location_size is not None:
        location = keras.Input((location_size,), name=LOCATION_INPUT)
        inputs[LOCATION_INPUT] = location
    fused = fusion_block({s: inputs[s] for s in sensors}, config.fusion_filters, config.dropout)
    # Location placement (broadcast-add to the fused map) is checked by the region-encoding
    # reference of the original (both heads to 1e-5).
    fused = add_location(fused, location, config.fusion_filters, config.dropout)
    setr_out = layers.Add(name="setr_residual")([fused, setr(fused, patch_size, config)])
    unet = residual_unet(setr_out, config)
    unet = layers.Dense(config.fusion_filters, name="unet_out")(unet)
    final = layers.Add(name="unet_residual")([setr_out, unet])
    outputs = {"output": softmax_head(final, "output")}
    if deep_supervision:
        outputs["deepsupervision"] = softmax_head(setr_out, "deepsupervision")
    return keras.Model(inputs, outputs, name=f"glavitu_{preset}")
