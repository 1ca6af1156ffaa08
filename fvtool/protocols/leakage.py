"""The leakage guard: training data must share no identity and no image with the evaluation protocol.

Why a library function: `fvtool pairs check` calls it, and `train` calls the same `check()` before
it spends hours, so a split drawn on the wrong dataset fails in seconds with the names at fault.

Training side: an identity split (`Split`, parts train+val by default: model selection on test
people is leakage too), a training-pair Protocol (its folds named train/val in
`extra["fold_names"]`; all pairs when unnamed) or a plain collection of identity names.
Evaluation side: a Protocol (optionally one fold or trial) or a Split (its test part).
Images are compared by key without extension (`align` may write .png for .jpg inputs).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fvtool.errors import CheckFailed, InputError
from fvtool.protocols.model import Protocol
from fvtool.protocols.splits import Split


@dataclass
class Side:
    label: str
    identities: set[str]
    images: set[str] | None  # keys; None when the side does not list images


@dataclass
class LeakageReport:
    training: Side
    evaluation: Side
    shared_identities: list[str]
    shared_images: list[str]

    @property
    def ok(self) -> bool:
        return not self.shared_identities and not self.shared_images

    def summary(self) -> dict:
        return {
            "training": self.training.label,
            "evaluation": self.evaluation.label,
            "training_identities": len(self.training.identities),
            "evaluation_identities": len(self.evaluation.identities),
            "training_images": None if self.training.images is None else len(self.training.images),
            "evaluation_images": None if self.evaluation.images is None else len(self.evaluation.images),
            "shared_identities": len(self.shared_identities),
            "shared_images": len(self.shared_images),
        }


def _protocol_used(protocol: Protocol, *, folds: Iterable[int] | None = None, trial: int | None = None) -> np.ndarray:
    """Indices of the images a protocol compares (restricted to some folds or one trial)."""
    if protocol.kind == "pairs":
        sel = np.ones(len(protocol.a), dtype=bool) if folds is None else np.isin(protocol.fold, list(folds))
        return np.unique(np.concatenate([protocol.a[sel], protocol.b[sel]]))
    if trial is None:
        return np.unique(np.concatenate(protocol.trials))
    if not 0 <= trial < len(protocol.trials):
        raise InputError(f"protocol {protocol.name!r} has trials 0..{len(protocol.trials) - 1}, not {trial}")
    return np.unique(protocol.trials[trial])


def _side_from_protocol(protocol: Protocol, idx: np.ndarray, label: str) -> Side:
    return Side(label, {protocol.identities[i] for i in idx.tolist()}, {protocol.images[i] for i in idx.tolist()})


def training_side(training: Split | Protocol | Iterable[str], parts: tuple[str, ...] = ("train", "val")) -> Side:
    if isinstance(training, Split):
        ids = set().union(*(training.part(p) for p in parts))
        imgs = None if training.images is None else set().union(*(training.images[p] for p in parts))
        return Side(f"split {training.name!r} ({'+'.join(parts)})", ids, imgs)
    if isinstance(training, Protocol):
        names = training.extra.get("fold_names")
        if names and training.kind == "pairs":
            folds = [f for f, n in enumerate(names) if n in parts]
            label = f"training pairs {training.name!r} ({'+'.join(names[f] for f in folds)})"
        else:
            folds, label = None, f"protocol {training.name!r}"
        return _side_from_protocol(training, _protocol_used(training, folds=folds), label)
    ids = {str(x) for x in training}
    return Side("training identities", ids, None)


def evaluation_side(evaluation: Protocol | Split, *, fold: int | None = None, trial: int | None = None) -> Side:
    if isinstance(evaluation, Split):
        imgs = None if evaluation.images is None else set(evaluation.images["test"])
        return Side(f"split {evaluation.name!r} (test)", set(evaluation.test), imgs)
    if fold is not None:
        if evaluation.kind != "pairs" or not 0 <= fold < evaluation.n_folds:
            raise InputError(f"protocol {evaluation.name!r} has no fold {fold}")
        return _side_from_protocol(evaluation, _protocol_used(evaluation, folds=[fold]),
                                   f"protocol {evaluation.name!r} fold {fold}")
    label = f"protocol {evaluation.name!r}" + (f" trial {trial}" if trial is not None else "")
    return _side_from_protocol(evaluation, _protocol_used(evaluation, trial=trial), label)


def _stem(key: str) -> str:
    return posixpath.splitext(key)[0]


def find_overlap(train: Side, evaluation: Side) -> LeakageReport:
    shared_ids = sorted(train.identities & evaluation.identities)
    shared_imgs: list[str] = []
    if train.images is not None and evaluation.images is not None:
        stems = {_stem(k) for k in train.images}
        shared_imgs = sorted(k for k in evaluation.images if _stem(k) in stems)
    return LeakageReport(train, evaluation, shared_ids, shared_imgs)


def check(
    training: Split | Protocol | Iterable[str],
    protocol: Protocol | Split,
    *,
    parts: tuple[str, ...] = ("train", "val"),
    fold: int | None = None,
    trial: int | None = None,
    show: int = 5,
) -> LeakageReport:
    """Raise CheckFailed naming the shared identities/images; return the (clean) report otherwise."""
    report = find_overlap(training_side(training, parts), evaluation_side(protocol, fold=fold, trial=trial))
    if not report.ok:
        msgs = []
        for what, items in (("identities", report.shared_identities), ("images", report.shared_images)):
            if items:
                more = f" and {len(items) - show} more" if len(items) > show else ""
                msgs.append(f"{len(items)} shared {what} ({', '.join(items[:show])}{more})")
        raise CheckFailed(
            f"leakage: {report.training.label} overlaps {report.evaluation.label}: {'; '.join(msgs)}. "
            "Training on evaluation people inflates every metric; use an identity-disjoint split "
            "(`fvtool pairs split`) or, for LFW, `fvtool pairs split --lfw-fold K`."
        )
    return report


# ---------------------------------------------------------------------------------------------
# verify's check: did the network that made these embeddings train on the protocol's people?


def training_overlap(run: str | Path | None, protocol: Protocol, *, show: int = 5) -> dict[str, Any]:
    """How many of the protocol's identities the run that made the embeddings trained on (by name).

    Why in verify: `embed` embeds every image by default, so `verify --protocol meds` on those
    embeddings scores the training people too (EER 33.7% instead of 35.9% on the demo's held-out
    ones) and nothing else would say so. The run folder (the embeddings' `run` attribute)
    names its split (or pairs file, `train --train-pairs`) in config.json: the train part trained the
    network and the val part chose the checkpoint, so both count. A run without either trained on every
    identity of its data.

    Returns the record verify writes as `training_overlap` in metrics.json: `checked` False with a
    `reason` when the run, its config or its data cannot be read (foreign models, moved folders).
    """
    out: dict[str, Any] = {"checked": False, "run": None if run is None else str(run), "reason": None,
                           "training": None, "training_identities": None,
                           "protocol_identities": len(set(protocol.identities)), "shared_identities": None,
                           "shared_train": None, "shared_val": None, "shared_images": None, "examples": []}
    if run is None:
        out["reason"] = "the embeddings do not name a training run (not made by `fvtool embed` from a run)"
        return out
    cfg_path = Path(run) / "config.json"
    try:
        doc = json.loads(cfg_path.read_text())
        cfg = doc.get("config", doc)
        split_path, data, pairs_path = cfg.get("split"), cfg.get("data"), cfg.get("train_pairs")
    except (OSError, ValueError, AttributeError) as e:
        out["reason"] = f"cannot read {cfg_path} ({e.__class__.__name__})"
        return out
    evaluation = evaluation_side(protocol)
    if split_path or pairs_path:
        from fvtool.protocols.model import read_protocol
        from fvtool.protocols.splits import read_split

        try:  # a pairs file (`train --train-pairs`) reads like a split: its train and val parts count
            split = read_split(split_path) if split_path else read_protocol(pairs_path)
        except InputError as e:
            out["reason"] = f"cannot read the run's {'split' if split_path else 'pairs file'}: {e}"
            return out
        parts = {p: find_overlap(training_side(split, (p,)), evaluation) for p in ("train", "val")}
        both = training_side(split, ("train", "val"))
        out.update(training=both.label, training_identities=len(both.identities),
                   shared_train=len(parts["train"].shared_identities), shared_val=len(parts["val"].shared_identities))
        report = find_overlap(both, evaluation)
    else:
        from fvtool.data.dataset import load_image_set

        try:
            ids = set(load_image_set(data).identities) if data else None
        except InputError as e:
            ids, out["reason"] = None, f"cannot read the run's training data {data}: {e}"
        if ids is None:
            out["reason"] = out["reason"] or "the run's config names no training data"
            return out
        train = Side(f"all identities of {data} (the run had no split)", ids, None)
        out.update(training=train.label, training_identities=len(ids))
        report = find_overlap(train, evaluation)
        out["shared_train"] = len(report.shared_identities)
    out.update(checked=True, shared_identities=len(report.shared_identities),
               shared_images=len(report.shared_images), examples=report.shared_identities[:show])
    return out


def overlap_message(rec: dict[str, Any], what: str) -> str | None:
    """The warning for a `training_overlap` record with shared identities (None when there are none)."""
    if not rec.get("shared_identities"):
        return None
    names = ", ".join(rec["examples"]) + (" ..." if rec["shared_identities"] > len(rec["examples"]) else "")
    where = rec["training"]
    if rec.get("shared_val") is not None:
        where += f": {rec['shared_train']} in train, {rec['shared_val']} in val"
    if rec.get("shared_images"):
        where += f"; {rec['shared_images']} of its images too"
    return (f"{what}: {rec['shared_identities']} of the protocol's {rec['protocol_identities']} identities were seen "
            f"in training ({where}; {names}). Metrics on them are optimistic. Embed and verify the held-out "
            "people: `fvtool embed --split SPLIT --part test`, then verify a protocol of that part")
