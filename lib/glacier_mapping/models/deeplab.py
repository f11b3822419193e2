"""DeepLabv3+ baseline with the GlaViTU fusion block and a ResNet-style bottleneck backbone.

Difference from the original baseline: the original uses a ResNeSt-101 backbone (split
attention with radix 2); ours uses plain ResNet bottleneck blocks (no split attention, no
radix) with the same stage depths in the "paper" preset (3-4-23-3). As in the original, the
stem is a 3x3 average pool with stride 2 after the fusion block. Output stride is 16 (the last
stage is dilated instead of strided); ASPP has 1x1, three separable dilated 3x3 branches and
image pooling; the DeepLabv3+ decoder fuses stride-4 features and upsamples x4 twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import layers

from glacier_mapping.data.schema import LOCATION_INPUT, check_sensors
from glacier_mapping.models.blocks import (
    BN_EPSILON,
    LEAKY_SLOPE,
    FusedBatchNormalization,
    MCDropout,
    add_location,
    conv_bn_act,
    fusion_block,
    sensor_inputs,
    softmax_head,
)
from glacier_mapping.models.glavitu import check_location_size, check_patch_size
from glacier_mapping.models.presets import Preset, get_preset

OUTPUT_STRIDE = 16


def _bn_act(x: keras.KerasTensor, name: str, activation: bool = True) -> keras.KerasTensor:
    """BatchNormalization and optional LeakyReLU."""
    x = FusedBatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if activation:
        x = layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_act")(x)
    return x


def bottleneck(
    x: keras.KerasTensor, width: int, stride: int, dilation: int, name: str
) -> keras.KerasTensor:
    """ResNet bottleneck: 1x1 (width), 3x3 (width, stride/dilation), 1x1 (4 x width) + shortcut."""
    out_filters = 4 * width
    y = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_reduce")(x)
    y = _bn_act(y, f"{name}_reduce")
    y = layers.Conv2D(
        width, 3, strides=stride, dilation_rate=dilation, padding="same", use_bias=False,
        name=f"{name}_conv",
    )(y)
    y = _bn_act(y, f"{name}_conv")
    y = layers.Conv2D(out_filters, 1, use_bias=False, name=f"{name}_expand")(y)
    y = _bn_act(y, f"{name}_expand", activation=False)
    shortcut = x
    if stride != 1 or x.shape[-1] != out_filters:
        if stride != 1:
            shortcut = layers.AveragePooling2D(stride, padding="same", name=f"{name}_down")(x)
        shortcut = layers.Conv2D(out_filters, 1, use_bias=False, name=f"{name}_shortcut")(
            shortcut
        )
        shortcut = _bn_act(shortcut, f"{name}_shortcut", activation=False)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_out")(y)


def backbone(
    x: keras.KerasTensor, preset: Preset
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Average-pool stem and four bottleneck stages; returns (stride-4, stride-16) features."""
    x = layers.AveragePooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    low_level = x
    strides, dilations = (2, 2, 2, 1), (1, 1, 1, 2)
    for stage, blocks in enumerate(preset.resnet_blocks):
        width = preset.resnet_filters * 2**stage
        for block in range(blocks):
            stride = strides[stage] if block == 0 else 1
            x = bottleneck(x, width, stride, dilations[stage], f"stage{stage}_block{block}")
        if stage == 0:
            low_level = x
    return low_level, x


def aspp(x: keras.KerasTensor, preset: Preset) -> keras.KerasTensor:
    """Atrous spatial pyramid pooling: 1x1, separable dilated 3x3 branches, image pooling."""
    filters = preset.aspp_filters
    branches = [_bn_act(layers.Conv2D(filters, 1, use_bias=False, name="aspp_1x1")(x), "aspp_1x1")]
    for rate in preset.aspp_rates:
        y = layers.SeparableConv2D(
            filters, 3, dilation_rate=rate, padding="same", use_bias=False, name=f"aspp_rate{rate}"
        )(x)
        branches.append(_bn_act(y, f"aspp_rate{rate}"))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = layers.Conv2D(filters, 1, use_bias=False, name="aspp_pool_conv")(pooled)
    pooled = _bn_act(pooled, "aspp_pool_conv")
    pooled = layers.UpSampling2D(size=tuple(x.shape[1:3]), name="aspp_pool_up")(pooled)
    y = layers.Concatenate(name="aspp_concat")([*branches, pooled])
    y = _bn_act(layers.Conv2D(filters, 1, use_bias=False, name="aspp_project")(y), "aspp_project")
    return MCDropout(preset.dropout, spatial=True, name="aspp_drop")(y)


def decoder(
    x: keras.KerasTensor, low_level: keras.KerasTensor, preset: Preset
) -> keras.KerasTensor:
    """DeepLabv3+ decoder: x4 up, concat reduced stride-4 features, two 3x3 convs, x4 up."""
    filters = preset.aspp_filters
    reduced = layers.Conv2D(max(8, filters * 48 // 256), 1, use_bias=False, name="decoder_low")(
        low_level
    )
    reduced = _bn_act(reduced, "decoder_low")
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up1")(x)
    x = layers.Concatenate(name="decoder_concat")([x, reduced])
    x = conv_bn_act(x, filters, name="decoder_conv1")
    x = conv_bn_act(x, filters, name="decoder_conv2")
    x = MCDropout(preset.dropout, spatial=True, name="decoder_drop")(x)
    return layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up2")(x)


def build_deeplab(
    sensors: Sequence[str],
    patch_size: int,
    preset: str = "paper",
    location_size: int | None = None,
) -> keras.Model:
    """Build the DeepLabv3+ baseline.

    Args:
        sensors: Input sensor groups (inputs follow ``schema.SENSORS`` order).
        patch_size: Input height and width (a multiple of 16, the output stride).
        preset: Size preset name; scales the backbone, ASPP and decoder widths and depths.
        location_size: Size of the optional location vector input; None for none.

    Returns:
        A model taking a dict {sensor: (P, P, C), ["location": (L,)]} and returning
        {"output": (B, P, P, 2) softmax}.
    """
    config = get_preset(preset)
    sensors = check_sensors(list(sensors))
    check_patch_size(patch_size, OUTPUT_STRIDE, preset)
    check_location_size(location_size)
    inputs = sensor_inputs(sensors, patch_size)
    location = None
    if location_size is not None:
        location = keras.Input((location_size,), name=LOCATION_INPUT)
        inputs[LOCATION_INPUT] = location
    fused = fusion_block({s: inputs[s] for s in sensors}, config.fusion_filters, config.dropout)
    fused = add_location(fused, location, config.fusion_filters, config.dropout)
    low_level, features = backbone(fused, config)
    x = decoder(aspp(features, config), low_level, config)
    return keras.Model(inputs, {"output": softmax_head(x, "output")}, name=f"deeplab_{preset}")
