"""Figure 3: achieved GFLOP/s of paper-size GlaViTU inference next to a TensorFlow matmul.

FLOPs of one 384 px window are counted twice: by the TF graph profiler on a frozen concrete
function (Conv2D, MatMul and element-wise ops; it has no counter for the Einsum of attention
scores) and analytically from the conv, dense and attention layer shapes (2 FLOPs per
multiply-add; biases, normalisation and activations left out). The analytic total is used for
GFLOP/s; the two totals agree to within a percent.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import common
import numpy as np
from common import Row

PATCH = 384
MATMUL_N = 2048


def profiler_flops(model_builder: Callable[[str], object]) -> dict[str, float]:
    """FLOPs of one window by op type from ``tf.compat.v1.profiler`` on a frozen graph.

    Dropout is set to 0 in this copy: the MC-dropout branch updates a seed variable, which a
    frozen graph cannot hold; dropout does no conv or matmul work.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    from glacier_mapping.models import PRESETS

    PRESETS["_paper_no_dropout"] = dataclasses.replace(PRESETS["paper"], dropout=0.0)
    try:
        model = model_builder("_paper_no_dropout")
    finally:
        del PRESETS["_paper_no_dropout"]
    spec = {name: tf.TensorSpec((1, *tensor.shape[1:]), tf.float32)
            for name, tensor in model.input.items()}
    function = tf.function(lambda inputs: model(inputs, training=False)["output"])
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(spec))
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(frozen.graph.as_graph_def(add_shapes=True), name="")
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    root = tf.compat.v1.profiler.profile(graph, cmd="graph", options=options)
    totals: dict[str, float] = {}
    stack = list(root.children)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.float_ops:
            kind = graph.get_operation_by_name(node.name).type
            kind = kind if kind in ("Conv2D", "MatMul") else "other"
            totals[kind] = totals.get(kind, 0.0) + float(node.float_ops)
    return totals


def analytic_flops(model: object) -> dict[str, float]:
    """FLOPs of one window by layer type, from the layers' shapes (batch dimension 1)."""
    from keras import layers

    from glacier_mapping.models.blocks import iter_layers

    totals = {"conv": 0.0, "dense": 0.0, "attention": 0.0}
    for layer in iter_layers(model):
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            height, width = layer.output.shape[1:3]
            totals["conv"] += 2.0 * height * width * kh * kw * cin * cout
        elif isinstance(layer, layers.Dense):
            cin, cout = layer.kernel.shape
            positions = math.prod(layer.input.shape[1:-1])
            totals["dense"] += 2.0 * positions * cin * cout
        elif isinstance(layer, layers.MultiHeadAttention):
            query = layer.input[0] if isinstance(layer.input, list | tuple) else layer.input
            tokens, dim = query.shape[1:]
            inner = layer.num_heads * layer.key_dim
            projections = 2.0 * tokens * dim * inner * 3 + 2.0 * tokens * inner * dim
            scores_and_mix = 2.0 * 2.0 * tokens * tokens * inner
            totals["attention"] += projections + scores_and_mix
    return totals


def matmul_gflops(warmup: int, reps: int) -> tuple[float, str]:
    """Median GFLOP/s of a float32 ``N x N`` TensorFlow matmul."""
    import tensorflow as tf

    a = tf.random.normal((MATMUL_N, MATMUL_N), dtype=tf.float32)
    b = tf.random.normal((MATMUL_N, MATMUL_N), dtype=tf.float32)
    seconds = common.median(common.timed(lambda: tf.linalg.matmul(a, b).numpy(), warmup, reps))
    method = (f"tf.linalg.matmul float32 {MATMUL_N}x{MATMUL_N} (2 N^3 FLOPs), eager, result "
              f"copied to numpy; {common.timing_method(warmup, reps)}")
    return 2.0 * MATMUL_N**3 / seconds / 1e9, method


def run(quick: bool) -> list[Row]:
    import keras

    from glacier_mapping.inference import _compiled
    from glacier_mapping.models import build_model

    def builder(preset: str) -> keras.Model:
        keras.utils.set_random_seed(0)
        return build_model("glavitu", common.SENSORS, PATCH, preset)

    counted = profiler_flops(builder)
    model = builder("paper")
    parts = analytic_flops(model)
    total = sum(parts.values())
    profiled = ("tf.compat.v1.profiler float_operation (graph view) on a frozen concrete "
                "function, batch 1; no counter for Einsum (attention scores)")
    analytic = "analytic from layer shapes, 2 FLOPs per multiply-add"
    rows = [Row("flops", "paper 384px", f"profiler_{kind.lower()}_gflop_per_window",
                value / 1e9, "GFLOP", profiled) for kind, value in sorted(counted.items())]
    rows.append(Row("flops", "paper 384px", "profiler_gflop_per_window",
                    sum(counted.values()) / 1e9, "GFLOP", profiled))
    rows += [Row("flops", "paper 384px", f"analytic_{part}_gflop_per_window", value / 1e9,
                 "GFLOP", analytic) for part, value in parts.items()]
    rows.append(Row("flops", "paper 384px", "analytic_gflop_per_window", total / 1e9, "GFLOP",
                    f"{analytic}; conv part / profiler Conv2D = "
                    f"{parts['conv'] / counted.get('Conv2D', float('nan')):.4f}"))

    batch = 1
    warmup, reps = (1, 1) if quick else (1, 3)
    rng = np.random.default_rng(0)
    inputs = {name: rng.random((batch, *tensor.shape[1:]), dtype=np.float32)
              for name, tensor in model.input.items()}
    function = _compiled(model)
    seconds = common.median(common.timed(lambda: np.asarray(function(inputs)), warmup, reps))
    achieved = total * batch / seconds / 1e9
    forward = (f"compiled inference function of predict_array (tf.function, training=False), "
               f"batch {batch} window of {PATCH} px; {common.timing_method(warmup, reps)}")
    peak, peak_method = matmul_gflops(2, 3 if quick else 10)
    rows += [
        Row("flops", "paper 384px", "forward_seconds_per_window", seconds / batch, "s", forward),
        Row("flops", "paper 384px", "achieved_gflop_per_s", achieved, "GFLOP/s",
            f"analytic FLOPs / forward time; {forward}"),
        Row("flops", "matmul 2048", "matmul_gflop_per_s", peak, "GFLOP/s", peak_method),
        Row("flops", "paper 384px", "achieved_to_matmul_ratio", achieved / peak, "ratio",
            "achieved_gflop_per_s / matmul_gflop_per_s"),
    ]
    return rows


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0])
    common.finish("flops", run(args.quick), args.out)
