"""Choices of the verify stage's options; no numpy import.

Why a separate module: `fvtool verify --help` lists these choices, and a `--help` must not pay for
importing numpy, h5py and the metric modules (tests/test_startup.py checks it).
"""

from __future__ import annotations

METRICS = ("cosine", "euclidean", "sqeuclidean")
FTA_RULES = ("include", "exclude")
THRESHOLD_RULES = ("min_hter", "eer")
IDENTITY_RULES = ("refuse", "warn")
