"""Plain records the report is built from, independent of how verify/train lay out their files.

Why a separate, schema-neutral layer: the tables and figures only need numbers and arrays;
`loading` is the one place that knows the verify and run-folder formats and fills these
records, so a format change touches one reader, and tests can build records directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fvtool.verification.metrics import OperatingPoint  # the one operating-point record


@dataclass
class ScoreSet:
    """The comparisons a verify output kept (scores.npz): for histograms, example pairs and the
    paired bootstrap. Indices point into `keys`/`identities` (the embeddings file order)."""

    genuine: np.ndarray  # float [G]
    gen_a: np.ndarray  # int [G]
    gen_b: np.ndarray
    impostor: np.ndarray  # float [I]: all impostors, or only the kept top ones (all-pairs)
    imp_a: np.ndarray
    imp_b: np.ndarray
    impostor_complete: bool
    n_impostor: int  # total impostor comparisons scored
    keys: np.ndarray  # str [N]
    identities: np.ndarray  # str [N]
    hist_edges: np.ndarray | None = None  # histograms over all comparisons (exact also for all-pairs)
    hist_genuine: np.ndarray | None = None
    hist_impostor: np.ndarray | None = None


@dataclass
class IdentifyRecord:
    """A closed-set identification result (`fvtool identify` JSON) of the run's embeddings file."""

    classifier: str
    top1: float | None
    top5: float | None  # None with <= 5 classes
    balanced_top1: float | None
    classes: int | None
    test_images: int | None
    split_sha256: str | None  # the exact train/test images: results compare only on the same split
    path: Path


@dataclass
class RunData:
    """Everything the report shows about one run (a verify output, its training run, or both)."""

    label: str
    base_label: str | None = None  # the label without the protocol part (for --baseline across protocols)
    verify_dir: Path | None = None
    run_dir: Path | None = None
    # training facts (from the run config / history)
    loss: str | None = None
    miner: str | None = None
    backbone: str | None = None
    input_size: str | None = None
    data: str | None = None
    train_images: int | None = None
    train_identities: int | None = None
    epochs: int | None = None
    train_seconds: float | None = None  # wall clock: training steps + periodic validation
    train_img_per_s: float | None = None  # training images per wall second of the training steps
    # protocol
    protocol: str | None = None
    protocol_alias: str | None = None  # short name in labels and tables (the legend gives the full name)
    protocol_kind: str | None = None  # pairs / allpairs
    protocol_images: int | None = None
    protocol_sha256: str | None = None
    n_genuine: int | None = None
    n_impostor: int | None = None
    # metrics
    accuracy_mean: float | None = None
    accuracy_std: float | None = None
    accuracy_ci: tuple[float, float] | None = None
    eer: float | None = None
    eer_threshold: float | None = None
    eer_ci: tuple[float, float] | None = None
    auc: float | None = None
    auc_ci: tuple[float, float] | None = None
    points: list[OperatingPoint] = field(default_factory=list)
    # curves
    det_far: np.ndarray | None = None
    det_frr: np.ndarray | None = None
    roc_far: np.ndarray | None = None
    roc_tar: np.ndarray | None = None
    # score histograms (density plots) and the scored comparisons (example pairs, paired bootstrap)
    hist_edges: np.ndarray | None = None
    hist_genuine: np.ndarray | None = None
    hist_impostor: np.ndarray | None = None
    intersection_threshold: float | None = None
    scores: ScoreSet | None = None
    data_root: Path | None = None
    protocol_identities: int | None = None
    embeddings_sha256: str | None = None
    metric: str | None = None  # cosine / euclidean / sqeuclidean (scores are similarities)
    # training curves: one flat dict per epoch (see loading.flatten_history)
    history: list[dict[str, float]] = field(default_factory=list)
    recon_images: list[Path] = field(default_factory=list)
    # closed-set identification of the same embeddings file, by classifier (fvtool identify)
    identify: dict[str, IdentifyRecord] = field(default_factory=dict)
    metrics_raw: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def min_far(self) -> float | None:
        """Lowest FAR that one impostor above threshold can show; below it there is no information."""
        return 1.0 / self.n_impostor if self.n_impostor else None

    def point(self, target: float) -> OperatingPoint | None:
        for p in self.points:
            if np.isclose(p.far_target, target, rtol=1e-9, atol=0):
                return p
        return None
