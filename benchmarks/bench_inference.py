"""Figure 1: GlaViTU inference throughput per preset through ``predict_array``.

The scene is synthetic (optical + DEM, normalised with the paper's ranges). Windows overlap by
half a patch (the default stride), so "scene" megapixels/s depends on the scene size; the
"window" megapixels/s (pixels the model actually processes) does not and compares presets.
"""

from __future__ import annotations

import common
import keras
from common import Row

from glacier_mapping.inference import predict_array, window_origins
from glacier_mapping.models import build_model


def cases(quick: bool) -> list[tuple[str, int, int, int, int]]:
    """(preset, patch size, scene height, scene width, batch size)."""
    if quick:
        return [("paper", 384, 384, 384, 1), ("small", 64, 128, 128, 8), ("tiny", 64, 128, 128, 8)]
    return [("paper", 384, 384, 576, 2), ("small", 64, 512, 512, 8), ("tiny", 64, 512, 512, 8)]


def run(quick: bool) -> list[Row]:
    scene = common.synthetic_features(max(max(c[2], c[3]) for c in cases(quick)))
    rows = []
    for preset, patch, height, width, batch in cases(quick):
        keras.utils.set_random_seed(0)
        model = build_model("glavitu", common.SENSORS, patch, preset)
        features = common.crop(scene, height, width)
        stride = patch // 2
        windows = len(window_origins(height, width, patch, stride))
        warmup, reps = (1, 1) if quick else (1, 2 if preset == "paper" else 3)
        seconds = common.median(common.timed(
            lambda m=model, f=features, p=patch, b=batch: predict_array(m, f, p, batch_size=b),
            warmup, reps,
        ))
        method = (f"predict_array (float32) on a {height}x{width} synthetic scene, stride "
                  f"{stride}, batch {batch}, windows: {windows}; "
                  f"{common.timing_method(warmup, reps)}")
        case = f"{preset} {patch}px"
        rows += [
            Row("inference", case, "scene_megapixels_per_s", height * width / 1e6 / seconds,
                "MP/s", method),
            Row("inference", case, "window_megapixels_per_s",
                windows * patch * patch / 1e6 / seconds, "MP/s", method),
            Row("inference", case, "windows_per_s", windows / seconds, "windows/s", method),
            Row("inference", case, "seconds_per_scene", seconds, "s", method),
        ]
    return rows


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0])
    common.finish("inference", run(args.quick), args.out)
