"""Figure 8: window stride and blending, and bfloat16, against glacier IoU on the test split.

The model is the quick profile's global GlaViTU (small preset, 64 px patches), taken from the
book's artifact store under ``outputs/quick`` or trained there first (the same cached artifact
the book's chapters use; about 1.5 minutes on 2 cores). Every tile of the synthetic test split
is predicted with ``predict_array`` for strides of a whole, three quarters and half a patch,
each with every blending window (``narrow``, ``original``, ``uniform``), in float32; the default
configuration is also run in bfloat16. Glacier IoU pools the confusion counts of all tiles
(unpadded pixels, probability >= 0.5), as the book's evaluation does; the float32 configurations
are also scored on the independent split (later dates and unseen regions). Time is the whole
test split's prediction time.

Seams: a blend without seam artefacts gives a map that does not depend on where the window grid
lies. Each tile is predicted a second time with the grid moved by half a stride in both
directions (the tile cropped by that much at the top and left), and ``grid_shift_difference`` is
the mean absolute glacier-probability difference between the two maps over the shared pixels,
``grid_shift_class_changes`` the share of those pixels whose class changes.
"""

from __future__ import annotations

import time

import common
import numpy as np
from common import Row

from glacier_mapping.data.tiles import iter_tiles
from glacier_mapping.evaluation import confusion_counts
from glacier_mapping.experiments.runner import train_experiment
from glacier_mapping.experiments.strategies import global_experiment
from glacier_mapping.inference import BLENDS, DEFAULT_BLEND, bfloat16_supported, predict_array
from glacier_mapping.workflow import open_context

#: Window steps as fractions of the patch size.
STRIDE_FRACTIONS = (1.0, 0.75, 0.5)


def trained_model(profile: str) -> tuple[object, object]:
    """The profile's global model (trained into the book's store if missing) and benchmark."""
    context = open_context(profile, output_dir=common.ROOT / "outputs" / profile)
    trained = train_experiment(context, global_experiment(context), verbose=False)
    return trained, context.benchmark


def load_tiles(path: object, sensors: tuple[str, ...]) -> list:
    """Every tile of the split with the model's sensors."""
    return list(iter_tiles(path, sensors=sensors))


def evaluate(model: object, tiles: list, patch: int, stride: int, blend: str,
             precision: str) -> tuple[float, float]:
    """Pooled glacier IoU and the split's prediction seconds of one configuration."""
    totals = {"tp": 0, "fp": 0, "fn": 0}
    seconds = 0.0
    for tile in tiles:
        start = time.perf_counter()
        probs = predict_array(model, tile.features, patch, stride=stride, precision=precision,
                              blend=blend)
        seconds += time.perf_counter() - start
        counts = confusion_counts((probs[..., 1] >= 0.5).astype(np.int64), tile.labels,
                                  tile.valid)
        for key in totals:
            totals[key] += counts[key]
    return totals["tp"] / (totals["tp"] + totals["fp"] + totals["fn"]), seconds


def grid_dependence(model: object, tiles: list, patch: int, stride: int,
                    blend: str) -> tuple[float, float]:
    """Mean |probability change| and class-change share when the window grid moves.

    The grid moves by half a stride down and right (the tile is cropped by that much); only the
    pixels both predictions cover and the tile marks valid are compared.
    """
    shift = max(stride // 2, 1)
    total = changed = count = 0.0
    for tile in tiles:
        base = predict_array(model, tile.features, patch, stride=stride, blend=blend)[..., 1]
        cropped = {name: array[shift:, shift:] for name, array in tile.features.items()}
        moved = predict_array(model, cropped, patch, stride=stride, blend=blend)[..., 1]
        valid = np.asarray(tile.valid)[shift:, shift:]
        difference = np.abs(base[shift:, shift:] - moved)[valid]
        classes = (base[shift:, shift:] >= 0.5) != (moved >= 0.5)
        total += float(difference.sum())
        changed += float(classes[valid].sum())
        count += float(valid.sum())
    return total / count, changed / count


def run(quick: bool) -> list[Row]:
    profile = "smoke" if quick else "quick"
    trained, benchmark = trained_model(profile)
    model, patch = trained.load(), trained.spec.patch_size
    tiles = load_tiles(benchmark.test, trained.spec.sensors)
    independent = load_tiles(benchmark.independent, trained.spec.sensors)
    for precision in ("float32", "bfloat16"):  # warm-up: trace both compiled functions
        predict_array(model, tiles[0].features, patch, precision=precision)
    source = (f"{profile} profile global GlaViTU ({trained.spec.preset}, {patch} px, model "
              f"artifact {trained.artifact.key}), batch 8")
    method = (f"predict_array over the {len(tiles)} synthetic test tiles; {source}; "
              "compiled functions traced on one tile first, then one timed pass")
    rows = []
    # Windows that do not overlap make the blend irrelevant: one configuration suffices.
    configs = [(int(patch * f), blend, "float32") for f in STRIDE_FRACTIONS
               for blend in (BLENDS if f < 1.0 else BLENDS[:1])]
    configs.append((patch // 2, DEFAULT_BLEND, "bfloat16"))
    results = {}
    for stride, blend, precision in configs:
        iou, seconds = evaluate(model, tiles, patch, stride, blend, precision)
        results[(stride, blend, precision)] = (iou, seconds)
        case = f"stride {stride} ({stride / patch:g} patch), {blend}, {precision}"
        rows += [
            Row("stride", case, "glacier_iou", iou, "IoU", f"pooled counts; {method}"),
            Row("stride", case, "split_seconds", seconds, "s", method),
        ]
        if precision == "float32" and stride < patch:
            shift_difference, class_changes = grid_dependence(model, tiles, patch, stride, blend)
            seam_method = (f"test split predicted twice, window grid moved by {stride // 2} px "
                           f"(half a stride); {source}")
            rows += [
                Row("stride", case, "grid_shift_difference", shift_difference, "probability",
                    f"mean |glacier probability change|; {seam_method}"),
                Row("stride", case, "grid_shift_class_changes", class_changes, "fraction",
                    f"share of valid pixels whose class changes; {seam_method}"),
            ]
        if precision == "float32":
            rows.append(Row("stride", case, "independent_glacier_iou",
                            evaluate(model, independent, patch, stride, blend, precision)[0],
                            "IoU", f"pooled counts over the {len(independent)} tiles of the "
                            f"independent split (later dates, unseen regions); {source}"))
    default = results[(patch // 2, DEFAULT_BLEND, "float32")]
    half = results[(patch // 2, DEFAULT_BLEND, "bfloat16")]
    supported = "supported" if bfloat16_supported() else "NOT supported"
    rows += [
        Row("stride", f"stride {patch // 2}, {DEFAULT_BLEND}", "bfloat16_iou_difference",
            half[0] - default[0], "IoU", f"bfloat16 - float32 glacier IoU; {method}"),
        Row("stride", f"stride {patch // 2}, {DEFAULT_BLEND}", "bfloat16_speedup",
            default[1] / half[1], "x",
            f"split_seconds float32 / bfloat16 (bfloat16 {supported} here); {method}"),
    ]
    return rows


if __name__ == "__main__":
    args = common.parse_args(__doc__.splitlines()[0])
    common.finish("stride", run(args.quick), args.out)
