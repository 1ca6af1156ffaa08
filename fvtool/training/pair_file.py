"""Training on a pairs file (`fvtool train --train-pairs FILE`): its train part trains, its val part validates.

Why: study 1 (../shared/sources/000_*.txt) labelled LFW *pairs* and split the pairs 72/18/10 into
train/val/test; its verifiers learn from the listed pairs, not from an identity split. A pairs file
is what `fvtool pairs train-pairs` writes (fvtool/protocols/training.py): an `fvtool-protocol` of
kind "pairs" with `extra.purpose = "training-pairs"` and its folds named in `extra.fold_names`
("train", "val"[, "test"]). This module is the one place that reads such a file for training:

- the training images are the images of the train part's pairs (class ids = their identities, so
  P x K methods can train on the same images); `ListedPairs` gives the pairs themselves as
  positions of those images, for the siamese method's pair and triplet batches
  (fvtool/data/samplers.py `ListedPairSampler`);
- the val part becomes the validation protocol (unless `--val-protocol` says otherwise), and for
  the siamese method also the validation loss (`val_loss`: its loss on the listed val pairs or
  triplets, in eval mode; `val_pair_accuracy` for siamese-bce: the share of pairs its head gets
  right at p = 0.5, the source's "validation accuracy");
- a file drawn with `--random-split` shares identities between its parts: its leakage warning is
  repeated before training and the counts are kept in the run's notes;
- the test part is for `fvtool verify` (`pairs train-pairs --random-split` writes it as its own
  protocol file), never for training or selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.errors import InputError
from fvtool.protocols.model import Protocol, read_protocol, resolve_keys

PURPOSE = "training-pairs"


@dataclass
class ListedPairs:
    """The train part's pairs as positions into the run's training rows (TrainingData.rows)."""

    left: np.ndarray
    right: np.ndarray
    same: np.ndarray

    def __len__(self) -> int:
        return len(self.left)


@dataclass
class ListedValidation:
    """The val part's pairs for a validation loss: `rows` (cache rows of its images), `labels` (an
    identity index per image) and the pairs as positions into `rows`."""

    rows: np.ndarray
    labels: np.ndarray
    pairs: ListedPairs


def read_pairs_file(path: str | Path) -> Protocol:
    """The training-pairs protocol at `path`; anything else is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--train-pairs {path}: no such file (write one with `fvtool pairs train-pairs`)")
    proto = read_protocol(path)
    names = proto.extra.get("fold_names")
    if proto.kind != "pairs" or proto.extra.get("purpose") != PURPOSE or not isinstance(names, list) \
            or "train" not in names:
        raise InputError(f"--train-pairs {path}: not a training-pairs file (a protocol of kind pairs with "
                         "extra.purpose = 'training-pairs' and a 'train' fold, as `fvtool pairs train-pairs` "
                         "writes); an evaluation protocol goes to --val-protocol or `fvtool verify`")
    if len(names) <= int(proto.fold.max()):
        raise InputError(f"--train-pairs {path}: extra.fold_names names {len(names)} parts but the pairs use "
                         f"{int(proto.fold.max()) + 1} folds")
    return proto


def part(proto: Protocol, name: str, path: str | Path) -> Protocol | None:
    """Part `name` ("train", "val", "test") of a training-pairs protocol as a one-fold protocol, or None
    when the file has no such part (or it holds no pair)."""
    names = proto.extra["fold_names"]
    if name not in names:
        return None
    f = names.index(name)
    if not (proto.fold == f).any():
        if name == "train":
            raise InputError(f"--train-pairs {path}: its train part holds no pair")
        return None
    sub = proto.select_folds([f], name=f"{proto.name}-{name}")
    sub.extra["part"] = name
    return sub


def leakage_note(proto: Protocol, path: str | Path) -> str | None:
    """The warning a random pair split carries (identities shared between its parts), with its counts."""
    if proto.extra.get("identity_disjoint", True):
        return None
    leak = proto.extra.get("leakage") or {}
    counts = ""
    if leak:
        counts = (f" ({leak.get('test_identities_also_in_train')} of {leak.get('test_identities')} test "
                  f"identities and {leak.get('test_images_also_in_train')} of {leak.get('test_images')} test "
                  "images also occur in train pairs)")
    warning = proto.extra.get("warning") or "its parts share identities"
    return f"IDENTITY LEAKAGE in --train-pairs {Path(path).name}: {warning}{counts}"


def listed_pairs(train: Protocol, keys: list[str], position: dict[int, int], path: str | Path) -> ListedPairs:
    """Map the train part's pairs onto training positions: `position[dataset row] = training position`."""
    rows = resolve_keys(train.images, keys, what=f"--train-pairs {path}")
    pos = np.asarray([position[int(r)] for r in rows], dtype=np.int64)
    return ListedPairs(pos[train.a], pos[train.b], train.same.copy())


def listed_validation(val: Protocol, keys: list[str], path: str | Path) -> ListedValidation:
    """The val part mapped onto the run's cached images (`keys`: the cache's image keys)."""
    rows = resolve_keys(val.images, keys, what=f"--train-pairs {path} (val part)")
    _, labels = np.unique(np.asarray(val.identities, dtype=object).astype(str), return_inverse=True)
    return ListedValidation(rows, labels.astype(np.int64), ListedPairs(val.a.copy(), val.b.copy(), val.same.copy()))
