"""LFW-style k-fold evaluation, reproducing insightface `eval/verification.py` and facenet `lfw.py`.

Why reproduce them exactly: published LFW accuracies come from these scripts, so a number from
fvtool is only comparable if the threshold grid, the tie rule and the std are the same:
- distance d = squared L2 between L2-normalised embeddings (range [0, 4]); "same" iff d < t;
- folds are the protocol's folds (for the official pairs.txt = `KFold(10, shuffle=False)` blocks);
- for each test fold, t = the grid value (`arange(0, 4, 0.01)`) with the best accuracy on the
  other folds, the lowest such t on ties (`np.argmax`); report mean and population std (ddof=0);
- facenet AUC/EER: mean over folds of the test-fold (FPR, TPR) on the grid; AUC by trapezoid,
  EER where FPR = 1 - TPR on the linear interpolation;
- facenet VAL@FAR: grid `arange(0, 4, 0.001)`; the threshold for the target FAR on the training
  folds by linear interpolation between the two grid points that bracket it (written out here:
  modern scipy's `interp1d` raises on the repeated FAR values of a grid); 0 when the target is
  never reached.
The exact variant uses every midpoint between consecutive distinct training distances (plus
"accept none" and "accept all") as candidates, so no grid resolution limits the accuracy.

Counting is vectorised: distances are sorted once per fold and accuracies at all candidate
thresholds come from `searchsorted`, so a 400- or 4000-point grid costs O((n + T) log n).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GRID_STEP = 0.01
VAL_GRID_STEP = 0.001


def contiguous_folds(n: int, k: int) -> np.ndarray:
    """Fold id per item as sklearn `KFold(k, shuffle=False)` assigns them (first n % k folds
    one larger)."""
    sizes = np.full(k, n // k, dtype=np.int64)
    sizes[: n % k] += 1
    return np.repeat(np.arange(k), sizes)


def _accept_counts(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(true accepts, false accepts, #same, #diff) at each threshold; accept iff d < t."""
    ds = np.sort(dist[same])
    dd = np.sort(dist[~same])
    ta = np.searchsorted(ds, thresholds, side="left")
    fa = np.searchsorted(dd, thresholds, side="left")
    return ta, fa, len(ds), len(dd)


def _accuracy(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    ta, fa, _, nd = _accept_counts(dist, same, thresholds)
    return (ta + (nd - fa)) / len(dist)


def _rates(dist: np.ndarray, same: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(TPR, FPR) with facenet's convention 0 when a class is empty."""
    ta, fa, ns, nd = _accept_counts(dist, same, thresholds)
    tpr = ta / ns if ns else np.zeros(len(thresholds))
    fpr = fa / nd if nd else np.zeros(len(thresholds))
    return tpr, fpr


def _exact_candidates(d: np.ndarray) -> np.ndarray:
    u = np.unique(d)
    mids = (u[:-1] + u[1:]) / 2
    return np.concatenate([[u[0]], mids, [np.nextafter(u[-1], np.inf)]])


@dataclass
class FoldAccuracy:
    rule: str
    fold_accuracy: list[float]
    fold_threshold: list[float]
    accuracy_mean: float = field(init=False)
    accuracy_std: float = field(init=False)

    def __post_init__(self) -> None:
        acc = np.asarray(self.fold_accuracy)
        self.accuracy_mean = float(acc.mean())
        self.accuracy_std = float(acc.std())  # population std (ddof=0), as insightface/facenet

    def to_dict(self) -> dict:
        return {"rule": self.rule, "accuracy_mean": self.accuracy_mean, "accuracy_std": self.accuracy_std,
                "fold_accuracy": self.fold_accuracy, "fold_threshold": self.fold_threshold}


def _fold_ids(folds: np.ndarray) -> np.ndarray:
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError("k-fold evaluation needs at least 2 folds")
    return ids


def kfold_accuracy(dist: np.ndarray, same: np.ndarray, folds: np.ndarray, *, exact: bool = False,
                   step: float = GRID_STEP) -> FoldAccuracy:
    """Accuracy per test fold with the threshold chosen on the other folds (see module doc)."""
    dist = np.asarray(dist, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    grid = np.arange(0, 4, step)
    accs, thrs = [], []
    for f in _fold_ids(folds):
        test = folds == f
        train = ~test
        cand = _exact_candidates(dist[train]) if exact else grid
        t = cand[int(np.argmax(_accuracy(dist[train], same[train], cand)))]  # ties -> lowest t
        accs.append(float(_accuracy(dist[test], same[test], np.array([t]))[0]))
        thrs.append(float(t))
    return FoldAccuracy(rule="exact" if exact else f"grid arange(0,4,{step})", fold_accuracy=accs,
                        fold_threshold=thrs)


def polyline_eer(fpr: np.ndarray, fnr: np.ndarray) -> float:
    """Where the polyline through (fpr, fnr) points meets fpr = fnr. Points must be ordered with
    fnr - fpr non-increasing (e.g. thresholds on a distance ascending)."""
    g = np.asarray(fnr, np.float64) - np.asarray(fpr, np.float64)
    j = int(np.argmax(g <= 0))
    if g[j] > 0:
        raise ValueError("the curve never reaches FPR = FNR")
    if j == 0:
        return float(fpr[0])
    lam = g[j - 1] / (g[j - 1] - g[j])
    return float(fpr[j - 1] + lam * (fpr[j] - fpr[j - 1]))


def facenet_roc(dist: np.ndarray, same: np.ndarray, folds: np.ndarray,
                step: float = GRID_STEP) -> dict[str, float]:
    """facenet `calculate_roc` + `validate_on_lfw`: mean test-fold ROC on the grid, its AUC
    (trapezoid) and EER."""
    dist = np.asarray(dist, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    grid = np.arange(0, 4, step)
    tprs, fprs = [], []
    for f in _fold_ids(folds):
        test = folds == f
        tpr, fpr = _rates(dist[test], same[test], grid)
        tprs.append(tpr)
        fprs.append(fpr)
    tpr = np.mean(tprs, axis=0)
    fpr = np.mean(fprs, axis=0)
    auc = float(np.trapezoid(tpr, fpr))  # fpr is non-decreasing along the grid
    return {"auc": auc, "eer": polyline_eer(fpr, 1.0 - tpr)}


def bracket_threshold(far_train: np.ndarray, grid: np.ndarray, target: float) -> float:
    """facenet VAL rule without scipy: the grid thresholds whose training FAR brackets the
    target (the last grid point with FAR < target and the next one, FAR >= target), linearly
    interpolated; 0 when no grid point reaches the target."""
    far_train = np.asarray(far_train, np.float64)
    if far_train.max() < target:
        return 0.0
    j = int(np.argmax(far_train >= target))  # FAR is non-decreasing along the grid
    if j == 0:
        return float(grid[0])
    f0, f1 = far_train[j - 1], far_train[j]
    return float(grid[j - 1] + (target - f0) * (grid[j] - grid[j - 1]) / (f1 - f0))


def facenet_val(dist: np.ndarray, same: np.ndarray, folds: np.ndarray, far_target: float = 1e-3,
                step: float = VAL_GRID_STEP) -> dict[str, float]:
    """facenet `calculate_val`: VAL (TAR) and FAR on each test fold at the threshold that gives
    `far_target` on the training folds; mean and population std over folds."""
    dist = np.asarray(dist, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    folds = np.asarray(folds)
    grid = np.arange(0, 4, step)
    vals, fars = [], []
    for f in _fold_ids(folds):
        test = folds == f
        train = ~test
        _, far_train = _rates(dist[train], same[train], grid)
        t = bracket_threshold(far_train, grid, far_target)
        val, far = _rates(dist[test], same[test], np.array([t]))
        vals.append(float(val[0]))
        fars.append(float(far[0]))
    return {"val_far_target": far_target, "val_mean": float(np.mean(vals)), "val_std": float(np.std(vals)),
            "far_mean": float(np.mean(fars))}


def kfold_report(dist: np.ndarray, same: np.ndarray, folds: np.ndarray, val_far: float = 1e-3) -> dict:
    """Everything metrics.json's `kfold` block holds."""
    folds = np.asarray(folds)
    return {
        "folds": len(np.unique(folds)),
        "distance": "squared L2 of L2-normalised embeddings; same iff d < t",
        "grid": kfold_accuracy(dist, same, folds).to_dict(),
        "exact": kfold_accuracy(dist, same, folds, exact=True).to_dict(),
        "facenet": {**facenet_roc(dist, same, folds), **facenet_val(dist, same, folds, val_far)},
    }
