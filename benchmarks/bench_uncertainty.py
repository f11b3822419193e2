"""Figure 5: cost of 8-fold test-time augmentation and MC dropout relative to plain inference.

All three run ``predict_array`` with the same model, scene, stride and batch size; MC dropout
averages 5 passes (switched by ``set_mc_dropout`` inside ``predict_windows``, no retracing).
"""

from __future__ import annotations

import common
import keras
from common import Row

from glacier_mapping.inference import predict_array, window_origins
from glacier_mapping.models import build_model

MC_PASSES = 5


def run(quick: bool) -> list[Row]:
    preset, patch, batch = "small", 64, 8
    size = 128 if quick else 256
    features = common.synthetic_features(size)
    keras.utils.set_random_seed(0)
    model = build_model("glavitu", common.SENSORS, patch, preset)
    windows = len(window_origins(size, size, patch, patch // 2))
    warmup, reps = (1, 1) if quick else (1, 3)
    variants = {"plain": {}, "tta8": {"tta": True}, f"mc{MC_PASSES}": {"mc_passes": MC_PASSES}}
    seconds = {}
    for name, options in variants.items():
        seconds[name] = common.median(common.timed(
            lambda o=options: predict_array(model, features, patch, batch_size=batch, **o),
            warmup, reps))
    method = (f"predict_array, {preset} GlaViTU {patch} px, {size}x{size} synthetic scene, "
              f"stride {patch // 2}, batch {batch}, {windows} windows; "
              f"{common.timing_method(warmup, reps)}")
    model_passes = {"plain": 1, "tta8": 8, f"mc{MC_PASSES}": MC_PASSES}
    rows = []
    for name, value in seconds.items():
        rows.append(Row("uncertainty", name, "seconds_per_scene", value, "s", method))
        if name != "plain":
            ratio = value / seconds["plain"]
            rows += [
                Row("uncertainty", name, "cost_vs_plain", ratio, "ratio",
                    f"seconds_per_scene / plain; {method}"),
                Row("uncertainty", name, "overhead_vs_model_passes",
                    ratio / model_passes[name], "ratio",
                    f"cost_vs_plain / {model_passes[name]} model passes (1 = no overhead "
                    "beyond the extra passes)"),
            ]
    return rows


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0])
    common.finish("uncertainty", run(args.quick), args.out)
