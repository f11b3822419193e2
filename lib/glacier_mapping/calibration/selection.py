"""Calibrators fitted on a model's validation predictions, compared, chosen and kept.

:func:`fit_calibrators` fits the three calibrators on a split's cached predictions (cached as
JSON artifacts); :func:`reliability_tables` and :func:`ece_table` measure every candidate per
region in one pass over a split; :func:`choose_calibrator` picks the one with the lowest
held-out ECE, and :func:`save_chosen_calibrator` writes it to
``outputs/<profile>/calibration/<model>.json``, where deployment (:func:`find_calibrator`,
``glacier-mapping deploy --calibrator``) and IoU estimation (:func:`load_chosen_calibrator`)
find it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from glacier_mapping.area_uncertainty import (
    AREA_ERRORS_KEY,
    AcquisitionShift,
    BlockSize,
    choose_block_size,
    fit_logit_shift,
    glacier_probability,
)
from glacier_mapping.calibration.calibrators import (
    CALIBRATORS,
    Calibrator,
    calibrator_from_json,
    load_calibrator,
)
from glacier_mapping.calibration.reliability import (
    ECE_BINS,
    CalibrationData,
    ReliabilityTable,
    confidence,
    expected_calibration_error,
)
from glacier_mapping.evaluation import OVERALL
from glacier_mapping.predictions import iter_predictions, labelled_mask
from glacier_mapping.store import Artifact, atomic_write_json
from glacier_mapping.workflow import Context

#: Label of raw (entropy) confidence in tables: no calibrator.
UNCALIBRATED = "uncalibrated"


#: Calibrators in the book's order: the original first.
CALIBRATOR_KINDS: tuple[str, ...] = ("kernel_ridge", "isotonic", "temperature")


def calibration_data(
    context: Context, predictions: Artifact, max_pixels: int = 200_000, seed: int = 0
) -> CalibrationData:
    """Reliability table and pixel sample of a split's predictions (labelled pixels only)."""
    data = CalibrationData(max_pixels=max_pixels, seed=seed)
    for _, tile, probs in iter_predictions(context, predictions):
        data.update(probs, np.argmax(tile.labels, axis=-1), labelled_mask(tile))
    return data


def fit_calibrators(
    context: Context, predictions: Artifact, max_pixels: int = 200_000, seed: int = 0
) -> dict[str, Calibrator]:
    """The three calibrators fitted on a (validation) predictions artifact, cached as JSON.

    The artifact ``calibrators/<key>`` holds ``kernel_ridge.json``, ``isotonic.json``,
    ``temperature.json`` and ``reliability_table.json`` (the 100-bin table they were fitted
    on); it is keyed by the predictions, so a retrained model refits them.

    Returns:
        ``{kind: calibrator}`` in the order of :data:`CALIBRATOR_KINDS`.
    """
    def build(directory: Path) -> dict[str, Any]:
        data = calibration_data(context, predictions, max_pixels, seed)
        atomic_write_json(directory / "reliability_table.json", data.table.to_json())
        for kind in CALIBRATOR_KINDS:
            CALIBRATORS[kind]().fit(data).save(directory / f"{kind}.json")
        return {"pixels": data.table.total}

    artifact = context.store.get_or_create(
        "calibrators", {"max_pixels": max_pixels, "seed": seed, "kinds": list(CALIBRATOR_KINDS)},
        build, inputs=[predictions],
    )
    return {kind: load_calibrator(artifact.file(f"{kind}.json")) for kind in CALIBRATOR_KINDS}


def describe_calibrator(calibrator: Calibrator) -> str:
    """One line on a fitted calibrator's parameters, for tables."""
    data = calibrator.to_json()
    if calibrator.kind == "kernel_ridge":
        return (f"{len(data['support'])} support points (incl. 2 anchors), "
                f"Laplacian gamma {data['gamma']:g}")
    if calibrator.kind == "isotonic":
        return f"step function with {len(data['x_thresholds'])} thresholds"
    if calibrator.kind == "temperature":
        return f"temperature T = {data['temperature']:.3f}"
    return calibrator.kind


def calibrated(calibrator: Calibrator | None, probs: np.ndarray) -> np.ndarray:
    """Calibrated confidence of ``(..., 2)`` probabilities; raw confidence for ``None``."""
    return confidence(probs) if calibrator is None else calibrator.calibrated_confidence(probs)


def reliability_tables(
    context: Context,
    predictions: Artifact,
    calibrators: Mapping[str, Calibrator | None],
    n_bins: int = ECE_BINS,
) -> dict[tuple[str, str], ReliabilityTable]:
    """Reliability tables of every calibrator, per region and pooled, in one pass over a split.

    Args:
        context: The chapter context.
        predictions: Predictions of the split.
        calibrators: Name -> calibrator (``None`` for raw entropy confidence).
        n_bins: Bins of each table.

    Returns:
        ``{(calibrator name, region): table}``; region ``ALL`` pools every tile.
    """
    tables: dict[tuple[str, str], ReliabilityTable] = {}
    for row, tile, probs in iter_predictions(context, predictions):
        mask = labelled_mask(tile)
        correct = np.argmax(probs, axis=-1) == np.argmax(tile.labels, axis=-1)
        for name, calibrator in calibrators.items():
            conf = calibrated(calibrator, probs)
            for region in (str(row["region"]), OVERALL):
                table = tables.setdefault((name, region), ReliabilityTable(n_bins))
                table.update(conf, correct, mask)
    return tables


def ece_table(tables: Mapping[tuple[str, str], ReliabilityTable], split: str) -> pd.DataFrame:
    """ECE (100 bins) and pixel count per calibrator and region: one row each."""
    rows = [
        {"calibrator": name, "split": split, "region": region,
         "ece": expected_calibration_error(table), "pixels": table.total}
        for (name, region), table in tables.items() if table.total
    ]
    return pd.DataFrame(rows, columns=["calibrator", "split", "region", "ece", "pixels"])


def choose_calibrator(
    ece: pd.DataFrame, split: str = "test", region: str = OVERALL,
    candidates: Sequence[str] = CALIBRATOR_KINDS,
) -> str:
    """The candidate with the lowest ECE on ``split`` pooled over ``region`` (first on ties).

    The default criterion is held-out data: every calibrator is fitted on the validation
    split, where isotonic regression's ECE is small by construction.

    Raises:
        ValueError: if no candidate has an ECE for that split and region.
    """
    rows = ece[(ece["split"] == split) & (ece["region"] == region)
               & ece["calibrator"].isin(candidates)]
    if rows.empty:
        raise ValueError(
            f"No ECE of {list(candidates)} on split {split!r}, region {region!r}; compute it "
            "with ece_table(reliability_tables(...), split) first."
        )
    order = {name: index for index, name in enumerate(candidates)}
    best = rows.assign(order=rows["calibrator"].map(order)).sort_values(["ece", "order"])
    return str(best["calibrator"].iloc[0])


def chosen_calibrator_path(context: Context, model_name: str) -> Path:
    """``outputs/<profile>/calibration/<model_name>.json``: the calibrator the book uses."""
    return context.output_dir / "calibration" / f"{model_name}.json"


def area_block_size(context: Context, predictions: Artifact, calibrator: Calibrator,
                    seed: int = 0) -> BlockSize:
    """Block size of the area intervals from a split's residuals ``label - p``.

    ``p`` is the calibrated glacier probability of each labelled pixel (the predicted class
    and its calibrated confidence, as deployment writes them); the residual correlogram over
    all tiles of the split gives the block side
    (:func:`glacier_mapping.area_uncertainty.choose_block_size`).
    """
    residuals, probabilities = [], []
    for _, tile, probs in iter_predictions(context, predictions):
        p = glacier_probability(np.argmax(probs, axis=-1), calibrated(calibrator, probs))
        labelled = labelled_mask(tile)
        label = np.argmax(tile.labels, axis=-1)
        residuals.append(np.where(labelled, label - p, np.nan))
        probabilities.append(np.where(labelled, p, np.nan))
    if not residuals:
        raise ValueError("The predictions hold no tiles; the block size needs labelled tiles.")
    return choose_block_size(np.stack(residuals), np.stack(probabilities), seed=seed)


def acquisition_shifts(context: Context, predictions: Mapping[str, Artifact],
                       calibrator: Calibrator) -> pd.DataFrame:
    """The calibration's logit shift on each labelled acquisition (region and date).

    For each acquisition of the given predictions (e.g. the test split and the independent
    acquisitions: :func:`glacier_mapping.predictions.held_out_predictions`), the shift that
    would recalibrate its pixels (:func:`glacier_mapping.area_uncertainty.fit_logit_shift`).

    Returns:
        One row per acquisition: ``split``, ``region``, ``date``, ``pixels``, ``shift``.
    """
    rows = []
    for split, artifact in predictions.items():
        pixels: dict[tuple[str, str], tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for row, tile, probs in iter_predictions(context, artifact):
            labelled = labelled_mask(tile)
            p = glacier_probability(np.argmax(probs, axis=-1), calibrated(calibrator, probs))
            found = pixels.setdefault((str(row["region"]), str(row.get("date", ""))), ([], []))
            found[0].append(p[labelled])
            found[1].append(np.argmax(tile.labels, axis=-1)[labelled])
        for (region, date), (ps, labels) in pixels.items():
            p, label = np.concatenate(ps), np.concatenate(labels)
            rows.append({"split": split, "region": region, "date": date, "pixels": p.size,
                         "shift": fit_logit_shift(p, label)})
    return pd.DataFrame(rows, columns=["split", "region", "date", "pixels", "shift"])


def save_chosen_calibrator(
    context: Context, model_name: str, calibrators: Mapping[str, Calibrator], chosen: str,
    ece: pd.DataFrame, block: BlockSize | None = None, shift: AcquisitionShift | None = None,
) -> Path:
    """Write every calibrator and the chosen one (atomically) under ``calibration/``.

    ``calibration/<model_name>/<kind>.json`` holds each calibrator and
    ``calibration/<model_name>.json`` the chosen one, with a ``selection`` record (criterion
    and ECEs) and, given ``block`` (and ``shift``), the area intervals' block size and the
    calibration's shift between acquisitions (``area_errors``, :func:`area_block_size`,
    :func:`acquisition_shifts`) beside its parameters; both load with
    :func:`~glacier_mapping.calibration.load_calibrator` and
    ``glacier-mapping deploy --calibrator``.

    Returns:
        Path of the chosen calibrator's JSON.
    """
    folder = context.output_dir / "calibration" / model_name
    for kind, calibrator in calibrators.items():
        calibrator.save(folder / f"{kind}.json")
    pooled = ece[ece["region"] == OVERALL]
    selection = {
        "model": model_name,
        "criterion": "lowest pooled ECE (100 bins) on the test split; fitted on validation",
        "ece": {f"{row.calibrator}/{row.split}": round(float(row.ece), 6)
                for row in pooled.itertuples()},
    }
    record = {**calibrators[chosen].to_json(), "selection": selection}
    if block is not None:
        record[AREA_ERRORS_KEY] = {**block.to_json(),
                                   "fitted_on": "validation split, calibrated by this calibrator"}
        if shift is not None:
            record[AREA_ERRORS_KEY]["logit_shift"] = {
                **shift.to_json(), "fitted_on": "labelled test and independent acquisitions"}
    return atomic_write_json(chosen_calibrator_path(context, model_name), record)


def load_chosen_calibrator(context: Context, model_name: str) -> tuple[Calibrator, dict[str, Any]]:
    """The calibrator chosen by chapter 05 and its selection record.

    Raises:
        FileNotFoundError: if chapter 05 has not run for this profile.
    """
    path = chosen_calibrator_path(context, model_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"No calibrator at {path}: run chapter 05 (05_confidence_calibration) for profile "
            f"{context.profile.name!r} first."
        )
    data = json.loads(path.read_text())
    return calibrator_from_json(data), data.get("selection", {})


def find_calibrator(output_dir: str | Path, model_name: str | None = None) -> Path | None:
    """A calibrator JSON in ``output_dir/calibration`` (chapter 05's), or None.

    Args:
        output_dir: ``outputs/<profile>``.
        model_name: Experiment name of the model (chapter 05 writes ``<name>.json``); only that
            file is considered. None: the first file (sorted by name) that loads.

    Files that do not load as a calibrator (reliability tables, other JSON) are skipped.
    """
    folder = Path(output_dir) / "calibration"
    candidates = ([folder / f"{model_name}.json"] if model_name
                  else sorted(folder.glob("*.json")) if folder.is_dir() else [])
    for path in candidates:
        if not path.is_file():
            continue
        try:
            load_calibrator(path)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            continue
        return path
    return None
