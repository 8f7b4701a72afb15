"""Datasets: what an uploaded data file is, read a batch at a time (pyarrow), profiled
(column types, missing values, label, classes, entities), previewed, split and loaded for the
recipes. Pure functions of a local file: no database, no HTTP, no torch.

Every problem with the file is a `ValidationFailed` (422) or `UnsupportedFormat` (415) that
names the column (and the row, where it is known) and says what to do.
"""

from __future__ import annotations

from modelworks.datasets.common import FORMATS, Limits, detect_format
from modelworks.datasets.images import image_items
from modelworks.datasets.split import split
from modelworks.datasets.tabular import load_frame, preview, profile

__all__ = [
    "FORMATS",
    "Limits",
    "detect_format",
    "image_items",
    "load_frame",
    "preview",
    "profile",
    "split",
]
