"""Inference copies of a model with every BatchNormalization folded into its convolution.

In inference a BatchNormalization after a convolution is an affine map per channel,
``gamma * (y - mean) / sqrt(variance + epsilon) + beta``, so it can be merged into the
convolution's kernel and bias (``kernel * s``, ``(bias - mean) * s + beta`` with
``s = gamma / sqrt(variance + epsilon)``). The copy replaces each folded BatchNormalization by
a pass-through layer of the same name, so the convolution's bias and a following LeakyReLU
fuse into one oneDNN convolution (Grappler does not fuse a convolution with a bias *and* a
BatchNormalization). Outputs equal the original model's up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf
from keras import layers

#: Layer kinds whose output a following BatchNormalization can be folded into.
_FOLDABLE = (layers.Conv2D,)


class FoldedBatchNormalization(layers.Layer):
    """Stands where a folded BatchNormalization was: passes its input through."""

    def call(self, inputs: tf.Tensor, training: bool | None = None,
             mask: tf.Tensor | None = None) -> tf.Tensor:
        """Return ``inputs`` unchanged (the normalisation is in the convolution)."""
        return inputs


def folding_pairs(model: keras.Model) -> dict[str, str]:
    """Convolution name -> name of the BatchNormalization that is its only consumer.

    A pair qualifies when the convolution is used once, by a BatchNormalization over the
    channel axis (of 4-D outputs) that nothing else feeds.
    """
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, _FOLDABLE) or len(layer._outbound_nodes) != 1:
            continue
        consumer = layer._outbound_nodes[0].operation
        if (isinstance(consumer, layers.BatchNormalization)
                and len(consumer._inbound_nodes) == 1
                and consumer.axis in (-1, 3) and len(layer.output.shape) == 4
                and not consumer.renorm):
            pairs[layer.name] = consumer.name
    return pairs


def folded_clone(model: keras.Model, dtype: Callable[[keras.Layer], str | None]) -> keras.Model:
    """Clone a functional model with its folding pairs merged (weights are not copied).

    Args:
        model: A functional Keras model.
        dtype: Layer -> dtype policy name for its clone, or None to keep the layer's own.
    """
    pairs = folding_pairs(model)
    folded = set(pairs.values())

    def clone(layer: keras.Layer) -> keras.Layer:
        policy = dtype(layer)
        if layer.name in folded:  # the normalisation's policy: another would cast its input
            return FoldedBatchNormalization(name=layer.name, dtype=policy or layer.dtype_policy)
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        if policy is not None:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def folding_copier(model: keras.Model, copy: keras.Model) -> Callable[[], None]:
    """A function writing ``model``'s weights, folded, into ``copy`` (its folded clone).

    The first call runs eagerly; later calls run one compiled graph that refreshes every
    weight in about 10 ms for the paper model's 10 M parameters, so the copy can be refreshed
    before every prediction.

    Raises:
        ValueError: if ``copy`` is not a folded clone of ``model``.
    """
    pairs = folding_pairs(model)
    folded = set(pairs.values())
    assignments = []
    for layer in model.layers:
        if layer.name in folded or not layer.weights:
            continue
        target = copy.get_layer(layer.name)
        if layer.name in pairs:
            norm = model.get_layer(pairs[layer.name])
            assignments.append((target, layer, norm))
        elif [w.path.split("/", 1)[-1] for w in target.weights] != \
                [w.path.split("/", 1)[-1] for w in layer.weights]:
            raise ValueError(f"Layer {layer.name!r} of the copy does not match the model's.")
        else:
            assignments.append((target, layer, None))

    def assign_all() -> None:
        for target, layer, norm in assignments:
            if norm is None:
                for destination, source in zip(target.weights, layer.weights, strict=True):
                    destination.assign(tf.cast(source.value, destination.dtype))
                continue
            kernel, bias = _folded_kernel_and_bias(layer, norm)
            target.kernel.assign(tf.cast(kernel, target.kernel.dtype))
            target.bias.assign(tf.cast(bias, target.bias.dtype))

    compiled = tf.function(assign_all)
    calls = 0

    def copy_weights() -> None:
        nonlocal calls
        calls += 1
        (assign_all if calls == 1 else compiled)()  # a one-off copy does not pay for a trace

    return copy_weights


def _folded_kernel_and_bias(conv: keras.Layer, norm: keras.Layer) -> tuple[tf.Tensor, tf.Tensor]:
    """The kernel and bias of ``conv`` followed by ``norm`` in inference."""
    channels = conv.kernel.shape[-1]
    gamma = norm.gamma.value if norm.scale else tf.ones((channels,))
    beta = norm.beta.value if norm.center else tf.zeros((channels,))
    scale = gamma * tf.math.rsqrt(norm.moving_variance.value + norm.epsilon)
    bias = conv.bias.value if conv.use_bias else tf.zeros((channels,))
    return conv.kernel.value * scale, (bias - norm.moving_mean.value) * scale + beta
