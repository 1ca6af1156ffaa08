"""Closed-set identification accuracy of classifiers on embeddings (arrays in, numbers out).

Why: verification numbers (EER, FRR@FAR) say how well a model tells same-person pairs from
different-person pairs. Some studies (example study 4) also report *closed-set recognition*: given
a few labelled images of each person, does a classifier on the embeddings name that person's other
images? The protocol here:

1. Keep the identities with at least `min_images` images (>= 2: every kept identity needs one
   training and one test image; the others are dropped and counted).
2. Split each kept identity's images into train and test: `round(train_fraction * n)` training
   images (half up), clipped to [1, n - 1]. Which images: a permutation of the identity's images
   (sorted by key when keys are given) drawn from a generator seeded by (seed, CRC-32 of the
   identity name). So the split does not depend on the order of the embeddings file, nor on which
   other identities are present (`--split ... --part test` splits each identity as the whole file
   does), and the same seed always gives the same split.
3. L2-normalise the embeddings (face embeddings are compared by angle), fit the classifier on the
   training images, rank the classes for each test image, and report top-1 / top-5 accuracy.

Classifiers (`CLASSIFIERS`):
  logreg  multinomial logistic regression (scikit-learn, lbfgs, L2 penalty `C`): "a linear
          classifier" as the study states it; deterministic. Default C = 100, not scikit-learn's 1:
          on unit-length embeddings C = 1 shrinks the weights so much that the model mostly predicts
          the largest classes (LFW fold 10: top-1 52-62 %, balanced top-1 3-8 %, against 65-80 % and
          22-47 % at C = 100, near the best C of a 1..1000 sweep; measured in docs/identify.md).
  ncm     nearest class mean by cosine: no training beyond averaging. A baseline that tells whether
          the learned linear layer adds anything over the embedding geometry itself.
  1nn     nearest training image by cosine (classes ranked by their best image): the other
          no-training baseline, what a gallery search does.

Ranks break ties towards the lower class index (the same rule as numpy's argmax), so top-1 equals
the classifier's own `predict`.
"""

from __future__ import annotations

import time
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fvtool.errors import InputError
from fvtool.verification.scoring import check_embeddings, l2_normalise

CLASSIFIERS = ("logreg", "ncm", "1nn")
DEFAULT_C = 100.0
DEFAULT_MAX_ITER = 1000
TOP_K = 5
NN_BLOCK_ROWS = 1024  # test rows per block of the 1-NN similarity matrix (memory: rows x train)


@dataclass(frozen=True)
class ClosedSetSplit:
    """Which rows train and which test; `labels[i]` is row i's class index (-1: dropped identity)."""

    classes: list[str]  # kept identities, sorted
    labels: np.ndarray  # int64 [N]
    train: np.ndarray  # int64 row indices, ascending
    test: np.ndarray
    dropped_identities: int
    dropped_images: int
    train_fraction: float | None  # None: a given assignment (`heldout_split`), not a drawn fraction
    min_images: int
    seed: int

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass
class ClosedSetResult:
    """Accuracies of one classifier on one split (rates are fractions in [0, 1])."""

    classifier: str
    split: ClosedSetSplit
    top1: float
    top5: float | None  # None when there are <= TOP_K classes (every test image would count as correct)
    balanced_top1: float  # mean over the classes with test images of each class's top-1 accuracy
    correct_top1: int
    predictions: np.ndarray  # int64 [n_test]: predicted class index per test row (split.test order)
    ranks: np.ndarray  # int64 [n_test]: 0-based rank of the true class
    chance: dict[str, float | None]
    fit: dict[str, Any] = field(default_factory=dict)  # converged, n_iter, options, seconds

    def accuracy(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "balanced_top1": self.balanced_top1,
                "correct_top1": self.correct_top1}


def identity_rng(seed: int, identity: str) -> np.random.Generator:
    """The generator of one identity's draws: (seed, CRC-32 of its name), so a split does not depend on
    file order or on which other identities are present (shared by the closed- and open-set splits)."""
    return np.random.default_rng([seed, zlib.crc32(identity.encode("utf-8"))])


def identity_array(identities: Sequence[str], keys: Sequence[str] | None, seed: int) -> np.ndarray:
    """Identities as a string array, after the checks every split makes (seed >= 0, one key per row)."""
    if seed < 0:
        raise InputError(f"seed {seed} must be >= 0")
    ids = np.asarray([str(s) for s in identities], dtype=str)
    if keys is not None and len(keys) != len(ids):
        raise InputError(f"{len(keys)} keys for {len(ids)} identities: one key per embedding is needed")
    return ids


def n_train_images(n: int, train_fraction: float) -> int:
    """Training images of an identity with n >= 2 images: round half up, at least 1 each side."""
    return int(min(max(np.floor(train_fraction * n + 0.5), 1), n - 1))


def split_closed_set(identities: Sequence[str], *, keys: Sequence[str] | None = None, train_fraction: float = 0.5,
                     min_images: int = 2, seed: int = 0) -> ClosedSetSplit:
    """Seeded, stratified train/test split of the images of every identity with >= `min_images` images."""
    if not 0.0 < train_fraction < 1.0:
        raise InputError(f"train fraction {train_fraction} must be in (0, 1): each identity needs training "
                         "and test images")
    if min_images < 2:
        raise InputError(f"min images {min_images} must be >= 2: each identity needs a training and a test image")
    ids = identity_array(identities, keys, seed)
    n = len(ids)
    names, codes, counts = np.unique(ids, return_inverse=True, return_counts=True)
    keep = counts >= min_images
    classes = [str(s) for s in names[keep]]
    if len(classes) < 2:
        raise InputError(f"closed-set identification needs at least 2 identities with >= {min_images} images; "
                         f"found {len(classes)} of {len(names)} identities ({n} images)"
                         + ("; every identity has a single image" if len(names) and counts.max() < 2 else ""))
    new_index = np.cumsum(keep) - 1
    labels = np.where(keep[codes], new_index[codes], -1).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    train_parts, test_parts = [], []
    for c in np.flatnonzero(keep):
        rows = order[starts[c]:starts[c + 1]]
        if keys is not None:
            rows = rows[np.argsort(np.asarray([keys[r] for r in rows], dtype=str), kind="stable")]
        perm = identity_rng(seed, str(names[c])).permutation(len(rows))
        k = n_train_images(len(rows), train_fraction)
        train_parts.append(rows[perm[:k]])
        test_parts.append(rows[perm[k:]])
    return ClosedSetSplit(
        classes=classes, labels=labels, train=np.sort(np.concatenate(train_parts)).astype(np.int64),
        test=np.sort(np.concatenate(test_parts)).astype(np.int64),
        dropped_identities=int((~keep).sum()), dropped_images=int(counts[~keep].sum()),
        train_fraction=float(train_fraction), min_images=int(min_images), seed=int(seed))


def heldout_split(identities: Sequence[str], is_test: np.ndarray, *, seed: int = 0) -> ClosedSetSplit:
    """A given train/test assignment instead of a drawn one: the classes are the identities with at
    least one training row; the test rows (`is_test`) of identities without one are dropped and counted.

    Why: recognition of the *training identities* (example study 4) tests on images of the people
    the network was trained on that were withheld from its training (`fvtool pairs split
    --heldout-images`), and fits the classifier on the training images themselves; which image is
    which is fixed by the identity split, not drawn here. `seed` records the seed of that hold-out.
    """
    ids = identity_array(identities, None, seed)
    test = np.asarray(is_test, dtype=bool)
    if test.shape != ids.shape:
        raise InputError(f"{len(test)} test flags for {len(ids)} identities: one flag per embedding is needed")
    classes = sorted({str(i) for i in ids[~test]})
    if len(classes) < 2:
        raise InputError(f"recognition of the training identities needs training images of at least 2 identities; "
                         f"found {len(classes)}")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index.get(str(i), -1) for i in ids], dtype=np.int64)
    kept = labels >= 0
    if not (test & kept).any():
        raise InputError("no held-out image belongs to an identity with training images")
    lost = test & ~kept
    return ClosedSetSplit(
        classes=classes, labels=labels, train=np.flatnonzero(~test).astype(np.int64),
        test=np.flatnonzero(test & kept).astype(np.int64), dropped_identities=len(set(ids[lost].tolist())),
        dropped_images=int(lost.sum()), train_fraction=None, min_images=1, seed=int(seed))


# ---- classifiers: (normalised train, labels, normalised test, K) -> class scores [n_test, K] ---------

def _logreg_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int, C: float,
                   max_iter: int) -> tuple[np.ndarray, dict[str, Any]]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(xtr, ytr)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    s = clf.decision_function(xte)
    if k == 2:  # binary: one logit for class 1; class 0 scores 0 (predict: class 1 iff logit > 0)
        s = np.column_stack([np.zeros_like(s), s])
    return np.asarray(s, np.float64), {"converged": converged, "n_iter": int(np.max(clf.n_iter_)),
                                       "options": {"C": float(C), "max_iter": int(max_iter), "solver": "lbfgs"}}


def class_means(xtr: np.ndarray, ytr: np.ndarray, k: int) -> np.ndarray:
    """L2-normalised mean of each class's (normalised) training embeddings [K, D]."""
    sums = np.zeros((k, xtr.shape[1]), np.float64)
    np.add.at(sums, ytr, xtr.astype(np.float64))
    return l2_normalise(sums).astype(np.float64)


def _ncm_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, Any]]:
    return xte.astype(np.float64) @ class_means(xtr, ytr, k).T, {}


def _nn_scores(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Per class, the highest cosine to one of its training images (blockwise: no n_test x n_train matrix)."""
    order = np.argsort(ytr, kind="stable")
    xs = xtr[order].astype(np.float64)
    starts = np.searchsorted(ytr[order], np.arange(k))
    out = np.empty((len(xte), k), np.float64)
    for i in range(0, len(xte), NN_BLOCK_ROWS):
        sims = xte[i:i + NN_BLOCK_ROWS].astype(np.float64) @ xs.T
        out[i:i + NN_BLOCK_ROWS] = np.maximum.reduceat(sims, starts, axis=1)
    return out, {}


def class_scores(classifier: str, xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int, *,
                 C: float = DEFAULT_C, max_iter: int = DEFAULT_MAX_ITER) -> tuple[np.ndarray, dict[str, Any]]:
    """Scores [n_test, K] (higher = more likely that class) and fit facts, on normalised embeddings."""
    if classifier == "logreg":
        return _logreg_scores(xtr, ytr, xte, k, C, max_iter)
    if classifier == "ncm":
        return _ncm_scores(xtr, ytr, xte, k)
    if classifier == "1nn":
        return _nn_scores(xtr, ytr, xte, k)
    raise InputError(f"unknown classifier {classifier!r} (choose from {', '.join(CLASSIFIERS)})")


def true_class_ranks(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0-based rank of the true class: classes scoring higher, plus tied classes with a lower index."""
    true = scores[np.arange(len(y)), y][:, None]
    before = np.arange(scores.shape[1])[None, :] < y[:, None]
    return ((scores > true) | ((scores == true) & before)).sum(axis=1).astype(np.int64)


# ---- the measurement ---------------------------------------------------------------------------

def check_inputs(embeddings: np.ndarray, identities: Sequence[str], keys: Sequence[str] | None = None) -> None:
    """Shapes must agree; NaN/inf and all-zero rows are refused by `check_embeddings` (naming them)."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[1] < 1:
        raise InputError(f"embeddings have shape {x.shape}, expected [N, D] with D >= 1")
    if len(identities) != x.shape[0]:
        raise InputError(f"{x.shape[0]} embeddings but {len(identities)} identities: one identity per row is needed")
    if keys is not None and len(keys) != x.shape[0]:
        raise InputError(f"{x.shape[0]} embeddings but {len(keys)} keys: one key per row is needed")


def closed_set_accuracy(embeddings: np.ndarray, identities: Sequence[str], *, keys: Sequence[str] | None = None,
                        classifier: str = "logreg", train_fraction: float = 0.5, min_images: int = 2, seed: int = 0,
                        C: float = DEFAULT_C, max_iter: int = DEFAULT_MAX_ITER, split: ClosedSetSplit | None = None,
                        what: str = "") -> ClosedSetResult:
    """Top-1/top-5 closed-set accuracy of `classifier` on a seeded per-identity train/test split.

    `split`: reuse a split (e.g. to run several classifiers on the same images); otherwise one is
    drawn with `split_closed_set`. `what` names the input in error messages (e.g. the file).
    """
    if classifier not in CLASSIFIERS:
        raise InputError(f"unknown classifier {classifier!r} (choose from {', '.join(CLASSIFIERS)})")
    if classifier == "logreg" and not (C > 0 and np.isfinite(C)):
        raise InputError(f"logistic regression C = {C}: must be a positive finite number")
    if classifier == "logreg" and max_iter < 1:
        raise InputError(f"max iterations {max_iter} must be >= 1")
    check_inputs(embeddings, identities, keys)
    x = np.asarray(embeddings)
    sp = split or split_closed_set(identities, keys=keys, train_fraction=train_fraction, min_images=min_images,
                                   seed=seed)
    if len(sp.labels) != x.shape[0]:
        raise InputError(f"the split has {len(sp.labels)} rows, the embeddings {x.shape[0]}")
    used = np.concatenate([sp.train, sp.test])
    names = list(keys) if keys is not None else [f"row {i}" for i in range(x.shape[0])]
    check_embeddings(x, names, used, what=what)
    xn = l2_normalise(x)
    ytr, yte = sp.labels[sp.train], sp.labels[sp.test]
    k = sp.n_classes
    t0 = time.perf_counter()
    scores, fit = class_scores(classifier, xn[sp.train], ytr, xn[sp.test], k, C=C, max_iter=max_iter)
    fit["seconds"] = round(time.perf_counter() - t0, 3)
    ranks = true_class_ranks(scores, yte)
    hit = ranks == 0
    test_counts = np.bincount(yte, minlength=k)
    tested = test_counts > 0  # every class with a drawn split; a held-out split may have untested classes
    per_class = np.bincount(yte, weights=hit, minlength=k)[tested] / test_counts[tested]
    return ClosedSetResult(
        classifier=classifier, split=sp, top1=float(hit.mean()),
        top5=float((ranks < TOP_K).mean()) if k > TOP_K else None, balanced_top1=float(per_class.mean()),
        correct_top1=int(hit.sum()), predictions=np.argmax(scores, axis=1).astype(np.int64), ranks=ranks,
        chance={"uniform_top1": 1.0 / k, "uniform_top5": TOP_K / k if k > TOP_K else None,
                "majority_top1": float(test_counts.max() / len(yte))},
        fit=fit)
