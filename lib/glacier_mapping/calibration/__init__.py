"""Calibrated confidence: reliability and ECE, the calibrators, and choosing one for a model.

:mod:`~glacier_mapping.calibration.reliability` measures (confidence, reliability tables, ECE),
:mod:`~glacier_mapping.calibration.calibrators` maps confidence to calibrated confidence (three
methods, stored as JSON), :mod:`~glacier_mapping.calibration.selection` fits them on a model's
validation predictions, picks one by held-out ECE and keeps it for deployment.
"""

from glacier_mapping.calibration.calibrators import (
    CALIBRATORS,
    KERNEL_RIDGE_JITTER,
    Calibrator,
    ConfidenceMapCalibrator,
    IsotonicCalibrator,
    KernelRidgeCalibrator,
    TemperatureCalibrator,
    calibrator_from_json,
    load_calibrator,
)
from glacier_mapping.calibration.reliability import (
    DIAGRAM_BINS,
    ECE_BINS,
    PROB_EPS,
    CalibrationData,
    ReliabilityTable,
    confidence,
    correct_predictions,
    expected_calibration_error,
    nonempty_bins,
    reliability_diagram_data,
)
from glacier_mapping.calibration.selection import (
    CALIBRATOR_KINDS,
    UNCALIBRATED,
    area_block_size,
    calibrated,
    calibration_data,
    choose_calibrator,
    chosen_calibrator_path,
    describe_calibrator,
    ece_table,
    find_calibrator,
    fit_calibrators,
    load_chosen_calibrator,
    reliability_tables,
    save_chosen_calibrator,
)

__all__ = [
    "CALIBRATORS",
    "CALIBRATOR_KINDS",
    "CalibrationData",
    "Calibrator",
    "ConfidenceMapCalibrator",
    "DIAGRAM_BINS",
    "ECE_BINS",
    "IsotonicCalibrator",
    "KERNEL_RIDGE_JITTER",
    "KernelRidgeCalibrator",
    "PROB_EPS",
    "ReliabilityTable",
    "TemperatureCalibrator",
    "UNCALIBRATED",
    "calibrated",
    "calibration_data",
    "calibrator_from_json",
    "choose_calibrator",
    "chosen_calibrator_path",
    "confidence",
    "correct_predictions",
    "describe_calibrator",
    "ece_table",
    "expected_calibration_error",
    "find_calibrator",
    "fit_calibrators",
    "load_calibrator",
    "load_chosen_calibrator",
    "nonempty_bins",
    "reliability_diagram_data",
    "reliability_tables",
    "area_block_size",
    "save_chosen_calibrator",
]
