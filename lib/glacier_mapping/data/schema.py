"""Names shared by every part of the library: sensors, channels, regions, location slots.

The sensor names are the dataset names of the paper's HDF5 tile schema; the region codes are
those of the original code (the paper's own codes are in :mod:`glacier_mapping.data.regions`).
"""

from __future__ import annotations

#: Channels per sensor group, in the paper's HDF5 schema (channels last).
SENSOR_CHANNELS: dict[str, int] = {
    "optical": 6,  # blue, green, red, NIR, SWIR1, SWIR2 (TOA reflectance)
    "dem": 2,  # elevation (m), slope (deg)
    "co_pol_sar": 2,  # log10(sigma0 + 1e-6), ascending, descending
    "cross_pol_sar": 2,  # same, cross-polarised
    "in_sar": 2,  # interferometric coherence, ascending, descending
    "thermal": 1,  # brightness temperature (K)
}

#: Canonical order of sensors: model inputs and fusion branches follow it.
SENSORS: tuple[str, ...] = tuple(SENSOR_CHANNELS)

#: The label dataset: one-hot, channel 1 (the last) is glacier.
LABEL_DATASET = "outlines"
NUM_CLASSES = 2
GLACIER_CLASS = 1

#: Region codes as used by the original code, in the order of the region one-hot vector.
#: The 12th slot ("UNKNOWN") is used for regions never seen in training.
REGION_CODES: tuple[str, ...] = (
    "ALP", "AN", "AWA", "CA", "GR", "HMA", "LL", "NZ", "SA", "SC", "SVAL",
)
UNKNOWN_REGION = "UNKNOWN"
LOCATION_SLOTS: tuple[str, ...] = (*REGION_CODES, UNKNOWN_REGION)
REGION_VECTOR_SIZE = len(LOCATION_SLOTS)  # 12
COORDINATE_VECTOR_SIZE = 4  # sin(lat), cos(lat), sin(lon), cos(lon), radians

#: Name of the optional location input of the models.
LOCATION_INPUT = "location"


def check_sensors(sensors: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Validate sensor names and return them in canonical order.

    Raises:
        ValueError: if a name is unknown or the list is empty.
    """
    unknown = [name for name in sensors if name not in SENSOR_CHANNELS]
    if unknown:
        raise ValueError(
            f"Unknown sensor(s) {unknown}; expected a subset of {list(SENSORS)}."
        )
    if not sensors:
        raise ValueError(f"At least one sensor is needed; choose from {list(SENSORS)}.")
    return tuple(name for name in SENSORS if name in sensors)
