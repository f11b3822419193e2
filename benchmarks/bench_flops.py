"""Figure 3: achieved GFLOP/s of paper-size GlaViTU inference next to a TensorFlow matmul.

FLOPs of one 384 px window are counted twice: by the TF graph profiler on a frozen concrete
function (Conv2D, MatMul and element-wise ops; it has no counter for the Einsum of attention
scores) and analytically from the conv, dense and attention layer shapes (2 FLOPs per
multiply-add; biases, normalisation and activations left out). The analytic total is used for
GFLOP/s; the two totals agree to within a percent.

Timings run in two fresh child processes, one with TensorFlow's oneDNN optimisations on and one
with them off (``TF_ENABLE_ONEDNN_OPTS`` is read once, at import): a float32 and a bfloat16
2048 x 2048 matmul, and one paper-size window through the compiled inference function of
``inference_model``'s copy (BatchNormalization folded into the convolutions) in float32 and,
with oneDNN on, also that copy with XLA, its Keras ``mixed_bfloat16`` version, and the model
itself as trained (``float32_unfolded``: convolution, BatchNormalization and LeakyReLU as
separate operations, as the original implementation runs them). The headline rows repeat the
setting this run uses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable

import common
import keras
import numpy as np
import tensorflow as tf
from common import Row
from keras import layers
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from glacier_mapping.inference import _compiled, inference_model, onednn_enabled
from glacier_mapping.models import PRESETS, build_model
from glacier_mapping.models.blocks import iter_layers

PATCH = 384
MATMUL_N = 2048
#: Forward-pass variants timed per oneDNN setting.
FORWARD_VARIANTS = ("float32", "float32_xla", "bfloat16", "float32_unfolded")


def profiler_flops(model_builder: Callable[[str], object]) -> dict[str, float]:
    """FLOPs of one window by op type from ``tf.compat.v1.profiler`` on a frozen graph.

    Dropout is set to 0 in this copy: the MC-dropout branch updates a seed variable, which a
    frozen graph cannot hold; dropout does no conv or matmul work.
    """
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


def matmul_gflops(dtype: str, warmup: int, reps: int) -> float:
    """Median GFLOP/s of an ``N x N`` TensorFlow matmul in ``dtype`` (eager, to numpy)."""
    a = tf.cast(tf.random.normal((MATMUL_N, MATMUL_N)), dtype)
    b = tf.cast(tf.random.normal((MATMUL_N, MATMUL_N)), dtype)
    seconds = common.median(common.timed(lambda: tf.linalg.matmul(a, b).numpy(), warmup, reps))
    return 2.0 * MATMUL_N**3 / seconds / 1e9


def forward_seconds(model: object, variant: str, warmup: int, reps: int) -> float:
    """Median seconds of one 384 px window through the compiled inference function.

    ``float32`` and ``bfloat16`` use predict_windows' own function of ``inference_model``'s
    copy; ``float32_xla`` the float32 copy compiled with XLA (``jit_compile=True``);
    ``float32_unfolded`` the compiled function of the model itself (nothing folded).
    """
    rng = np.random.default_rng(0)
    inputs = {name: rng.random((1, *tensor.shape[1:]), dtype=np.float32)
              for name, tensor in model.input.items()}
    if variant == "float32_xla":
        copy = inference_model(model, "float32", fold=True)
        function = tf.function(lambda x: copy(x, training=False)["output"], jit_compile=True)
    elif variant == "float32_unfolded":
        function = _compiled(model)
    else:
        function = _compiled(inference_model(model, variant, fold=True))
    return common.median(common.timed(lambda: np.asarray(function(inputs)), warmup, reps))


def timing_child(quick: bool) -> None:
    """Print the matmul and forward timings of this process's oneDNN setting as JSON."""
    keras.utils.set_random_seed(0)
    model = build_model("glavitu", common.SENSORS, PATCH, "paper")
    warmup, reps = forward_timing(quick)
    onednn = onednn_enabled()
    result = {"onednn": onednn,
              "matmul_float32": matmul_gflops("float32", 2, 3 if quick else 10),
              "matmul_bfloat16": matmul_gflops("bfloat16", 2, 3 if quick else 10)}
    # Without oneDNN only the float32 rate is timed: enough to compare the two settings.
    for variant in FORWARD_VARIANTS if onednn else FORWARD_VARIANTS[:1]:
        result[variant] = forward_seconds(model, variant, warmup, reps)
    print(json.dumps(result))


def forward_timing(quick: bool) -> tuple[int, int]:
    """Warm-up calls and timed repetitions of a forward pass.

    The first call runs Grappler and creates the oneDNN primitives. With one warm-up call and
    two repetitions, one run timed the folded float32 copy at 1.67 s per window where twelve
    alternating calls in another process gave 1.32 s (a noisy 2-core machine), hence more.
    """
    return (1, 1) if quick else (2, 3)


def run_timing_child(onednn: bool, quick: bool) -> dict:
    """Run :func:`timing_child` in a fresh process with oneDNN on or off."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0"}
    command = [sys.executable, __file__, "--timing-child", *(["--quick"] if quick else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"timing child (oneDNN {onednn}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timing_rows(result: dict, gflop: float, quick: bool) -> list[Row]:
    """Rows of one timing child, its case named after its oneDNN setting."""
    warmup, reps = forward_timing(quick)
    state = "on" if result["onednn"] else "off"
    case = f"paper 384px, oneDNN {state}"
    forward = (f"compiled inference function of predict_windows, one {PATCH} px window, fresh "
               f"process with TF_ENABLE_ONEDNN_OPTS={int(result['onednn'])}; "
               f"{common.timing_method(warmup, reps)}")
    matmul = (f"tf.linalg.matmul {MATMUL_N}x{MATMUL_N} (2 N^3 FLOPs), eager, result copied to "
              f"numpy, TF_ENABLE_ONEDNN_OPTS={int(result['onednn'])}; "
              f"{common.timing_method(2, 3 if quick else 10)}")
    rows = [
        Row("flops", f"matmul 2048, oneDNN {state}", f"matmul_{dtype}_gflop_per_s",
            result[f"matmul_{dtype}"], "GFLOP/s", matmul) for dtype in ("float32", "bfloat16")
    ]
    for variant in (v for v in FORWARD_VARIANTS if v in result):
        rows += [
            Row("flops", case, f"{variant}_seconds_per_window", result[variant], "s", forward),
            Row("flops", case, f"{variant}_gflop_per_s", gflop / result[variant], "GFLOP/s",
                f"analytic GFLOP per window / {variant}_seconds_per_window"),
        ]
    rows.append(Row("flops", case, "float32_to_matmul_ratio",
                    gflop / result["float32"] / result["matmul_float32"], "ratio",
                    "float32_gflop_per_s / matmul_float32_gflop_per_s (same process)"))
    if "bfloat16" in result:
        rows += [
            Row("flops", case, "bfloat16_speedup", result["float32"] / result["bfloat16"], "x",
                "float32_seconds_per_window / bfloat16_seconds_per_window"),
            Row("flops", case, "xla_speedup", result["float32"] / result["float32_xla"], "x",
                "float32_seconds_per_window / float32_xla_seconds_per_window (> 1: XLA helps; "
                "its compile time is not included)"),
            Row("flops", case, "folding_speedup",
                result["float32_unfolded"] / result["float32"], "x",
                "float32_unfolded_seconds_per_window / float32_seconds_per_window (> 1: "
                "folding BatchNormalization into the convolutions helps)"),
        ]
    return rows


def run(quick: bool) -> list[Row]:
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
    rows.append(Row("flops", "paper 384px", "analytic_tflop_per_megapixel",
                    total / PATCH**2 / 1e6, "TFLOP/MP", f"{analytic}; per window pixel"))
    del model
    this = onednn_enabled()
    results = {state: run_timing_child(state, quick) for state in (this, not this)}
    for state in (True, False):
        rows += timing_rows(results[state], total / 1e9, quick)
    # Headline figures: the setting this benchmark run uses (TF_ENABLE_ONEDNN_OPTS).
    own = results[this]
    note = f"the run's setting (oneDNN {'on' if this else 'off'}); see the per-setting rows"
    rows += [
        Row("flops", "paper 384px", "forward_seconds_per_window", own["float32"], "s", note),
        Row("flops", "paper 384px", "achieved_gflop_per_s", total / 1e9 / own["float32"],
            "GFLOP/s", f"analytic FLOPs / float32 forward time; {note}"),
        Row("flops", "matmul 2048", "matmul_gflop_per_s", own["matmul_float32"], "GFLOP/s",
            f"float32 matmul; {note}"),
        Row("flops", "paper 384px", "achieved_to_matmul_ratio",
            total / 1e9 / own["float32"] / own["matmul_float32"], "ratio",
            f"achieved_gflop_per_s / matmul_gflop_per_s; {note}"),
    ]
    return rows


if __name__ == "__main__":
    if "--timing-child" in sys.argv:
        timing_child("--quick" in sys.argv)
    else:
        args = common.parse_args(__doc__.splitlines()[0])
        common.finish("flops", run(args.quick), args.out)
