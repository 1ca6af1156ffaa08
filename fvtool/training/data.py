"""The training data of a run: images, the identity split, class ids, the cache, validation pairs.

Why here and not in the engine: the same resolution (which identities train, which images
validate, is there leakage) is what `fvtool train` prints before it starts and what a resumed
run re-checks, so it is one function with explicit inputs. Batches are built by `BatchLoader`:
rows are gathered from the uint8 cache, augmented with a generator seeded from
(seed, epoch, batch index), and moved to the device; a background thread prepares the next
batches while the current step runs.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fvtool.data.cache import CacheSpec, ImageCache, build_cache
from fvtool.data.dataset import ImageSet, load_image_set, report_problems
from fvtool.data.samplers import SampledBatch
from fvtool.data.transforms import BatchTransform
from fvtool.errors import InputError
from fvtool.protocols.allpairs import allpairs_protocol
from fvtool.protocols.leakage import check
from fvtool.protocols.model import Protocol, resolve_keys
from fvtool.protocols.presets import resolve_protocol
from fvtool.protocols.splits import read_split
from fvtool.training.config import TrainConfig
from fvtool.training.evaluation import ValidationSet, make_validation_set
from fvtool.training.methods import Batch
from fvtool.training.pair_file import (
    ListedPairs,
    ListedValidation,
    leakage_note,
    listed_pairs,
    listed_validation,
    part,
    read_pairs_file,
)
from fvtool.training.val_targets import ValidationTarget


@dataclass
class TrainingData:
    images: ImageSet  # the images the run reads (training + validation), rows of `cache`
    cache: ImageCache
    rows: np.ndarray  # dataset rows used for training
    labels: np.ndarray  # class id of each training row
    classes: list[str]  # identity of each class id
    split_path: str | None
    validation: ValidationSet | None
    notes: list[str] = field(default_factory=list)  # warnings the CLI shows before training
    targets: list[ValidationTarget] = field(default_factory=list)  # --val-target sets (fvtool/training/val_targets.py)
    # --val-holdout: held-out images of the training identities (rows of `cache`) and their class ids
    holdout_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    holdout_labels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    pairs: ListedPairs | None = None  # --train-pairs: the listed training pairs (fvtool/training/pair_file.py)
    val_pairs: ListedValidation | None = None  # --train-pairs: its val part, for the siamese method's val_loss

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    def identities_sha256(self) -> str:
        return hashlib.sha256("\n".join(self.classes).encode()).hexdigest()


def _training_identities(images: ImageSet, split_path: str | None, notes: list[str]):  # -> (set, Split|None, keys)
    if split_path is None:
        notes.append("no identity split given: training on ALL identities of the data; validate and test on "
                     "other data (make one with `fvtool pairs split`)")
        return set(images.identities), None, None
    split = read_split(split_path)
    train_ids = set(split.train)
    present = train_ids & set(images.identities)
    if not present:
        raise InputError(f"split {split_path}: none of its {len(train_ids)} training identities is in the data "
                         f"{images.root}; was the split made for another dataset?")
    if len(present) < len(train_ids):
        notes.append(f"split {Path(split_path).name}: {len(train_ids) - len(present)} of {len(train_ids)} training "
                     "identities are not in the data")
    keys = set(split.images["train"]) if split.images is not None else None
    return present, split, keys


def hold_out(identities: list[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over images (given by their identities): the images held out for the validation loss.

    An image-level random draw, as `torch.utils.data.random_split` makes on an image folder: round(fraction x
    images) images, uniformly among all images except one per identity (drawn too), so every identity keeps
    at least one training image and the classifier's classes stay those of the training set. Identities
    with a single image never lose it. A pure function of (identities, fraction, seed): the same images
    whatever order the files were listed in (the draw runs over the sorted image order the caller passes).
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 0x40_1D])))
    ids = np.asarray(identities, dtype=object)
    order = rng.permutation(len(ids))
    keep_one: dict[str, int] = {}
    for i in order:  # the first image of each identity in the random order stays in training
        keep_one.setdefault(ids[i], int(i))
    candidates = np.asarray([i for i in order if keep_one[ids[i]] != i], dtype=np.int64)
    n = min(len(candidates), round(fraction * len(ids)))
    mask = np.zeros(len(ids), bool)
    mask[candidates[:n]] = True
    return mask


def _validation_protocol(config: TrainConfig, images: ImageSet, split, train_ids: set[str], notes: list[str]):
    spec = config.val_protocol
    if spec is not None and spec.lower() == "none":
        return None
    if spec is None or spec.lower() == "auto":
        if split is None or not split.val:
            return None
        spec = "split-val"
    if spec == "split-val":
        val_ids = set(split.val)
        sel = [i for i, ident in enumerate(images.identities) if ident in val_ids]
        if len({images.identities[i] for i in sel}) < 2:
            notes.append("the split's val part has fewer than 2 identities in the data: no validation")
            return None
        proto = allpairs_protocol([images.keys[i] for i in sel], [images.identities[i] for i in sel],
                                  name="split-val", source=f"split:{split.name}:val")
    else:
        val_keys = images.keys
        val_idents = images.identities
        if split is not None and split.val:
            vs = set(split.val)
            pick = [i for i, ident in enumerate(images.identities) if ident in vs]
            val_keys, val_idents = [images.keys[i] for i in pick], [images.identities[i] for i in pick]
        proto, _preset = resolve_protocol(spec, keys=val_keys, identities=val_idents)
    check(split if split is not None else train_ids, proto, parts=("train",))
    return proto


def prepare_training_data(config: TrainConfig, *, cache_dir: Path | None = None, show_progress: bool = True
                          ) -> TrainingData:
    """Resolve identities, classes and validation, then cache only the images the run reads
    (training + validation images; all of them when there is no split)."""
    if config.data is None:
        raise InputError("no training data given (pass --data)")
    images = load_image_set(config.data)
    notes: list[str] = [report_problems(images)] if images.problems else []
    train_part = None
    if config.train_pairs is not None:
        sel, train_part, proto = _pairs_file_training(config, images, notes)
        split, train_ids = None, set(train_part.identities)
    else:
        train_ids, split, split_keys = _training_identities(images, config.split, notes)
        sel = [i for i, ident in enumerate(images.identities)
               if ident in train_ids and (split_keys is None or images.keys[i] in split_keys)]
        proto = _validation_protocol(config, images, split, train_ids, notes)
    if not sel:
        raise InputError(f"no training images selected from {images.root}")
    held: list[int] = []
    if config.val_holdout and config.train_pairs is not None:
        raise InputError(f"--val-holdout holds out images of an identity split's training identities; --train-pairs "
                         f"{config.train_pairs} validates on its own val part: give one of them")
    if config.val_holdout:
        mask = hold_out([images.identities[i] for i in sel], float(config.val_holdout), config.seed)
        held = [i for i, m in zip(sel, mask, strict=True) if m]
        sel = [i for i, m in zip(sel, mask, strict=True) if not m]
        if not held:
            raise InputError(f"--val-holdout {config.val_holdout}: no image could be held out (every training "
                             "identity has a single image, or the fraction rounds to 0); raise the fraction")
        notes.append(f"--val-holdout {config.val_holdout}: {len(held)} images of the training identities held out "
                     f"for the validation loss, {len(sel)} train")
    val_rows = make_validation_set(proto, images.keys).rows if proto is not None else np.empty(0, np.int64)
    val_rows = np.union1d(val_rows, np.asarray(held, dtype=np.int64))
    spec = CacheSpec(config.input_size, config.crop, config.resample)
    bins, on_data = _extra_targets(config, images, split, train_ids, spec)
    for _name, p in on_data:
        val_rows = np.union1d(val_rows, make_validation_set(p, images.keys).rows)
    needed = np.union1d(np.asarray(sel, dtype=np.int64), val_rows)
    used = images if len(needed) == len(images) else images.take(needed)
    pos = {int(r): k for k, r in enumerate(needed)}  # dataset row -> row of `used`
    classes = sorted({images.identities[i] for i in sel})
    cid = {c: k for k, c in enumerate(classes)}
    rows = np.asarray([pos[i] for i in sel], dtype=np.int64)
    labels = np.asarray([cid[images.identities[i]] for i in sel], dtype=np.int64)
    cache = build_cache(used, spec, cache_dir=cache_dir, show_progress=show_progress)
    vs = make_validation_set(proto, used.keys) if proto is not None else None
    targets = [ValidationTarget(n, p.source, make_validation_set(p, used.keys), None) for n, p in on_data] + bins
    holdout_rows = np.asarray([pos[i] for i in held], dtype=np.int64)
    holdout_labels = np.asarray([cid[images.identities[i]] for i in held], dtype=np.int64)
    pairs = val_pairs = None
    if train_part is not None:
        pairs = listed_pairs(train_part, used.keys, {int(rows[k]): k for k in range(len(rows))}, config.train_pairs)
        if proto is not None and proto.extra.get("part") == "val":
            val_pairs = listed_validation(proto, used.keys, config.train_pairs)
    return TrainingData(used, cache, rows, labels, classes, config.split, vs, notes, targets, holdout_rows,
                        holdout_labels, pairs, val_pairs)


def _pairs_file_training(config: TrainConfig, images: ImageSet, notes: list[str]
                         ) -> tuple[list[int], Protocol, Protocol | None]:
    """(dataset rows of the train part's images, the train part, the validation protocol) of
    `--train-pairs` (fvtool/training/pair_file.py); the file's val part validates unless
    --val-protocol names another protocol (leakage-checked against the train part's identities)."""
    path = config.train_pairs
    pf = read_pairs_file(path)
    train = part(pf, "train", path)
    sel = sorted(set(resolve_keys(train.images, images.keys, what=f"--train-pairs {path}").tolist()))
    note = leakage_note(pf, path)
    if note:
        notes.append(note)
    spec = config.val_protocol
    if spec is None or spec.lower() == "auto":
        proto = part(pf, "val", path)
        if proto is not None:
            resolve_keys(proto.images, images.keys, what=f"--train-pairs {path} (val part)")
    else:
        proto = _validation_protocol(config, images, None, set(train.identities), notes)
    return sel, train, proto


def _extra_targets(config: TrainConfig, images: ImageSet, split, train_ids: set[str], spec: CacheSpec):
    """(.bin targets with their own images, (name, protocol) targets over the data), leakage-checked."""
    from fvtool.protocols.leakage import check
    from fvtool.training.val_targets import bin_target, check_names, protocol_target

    bins, on_data = [], []
    for name, target in check_names(list(config.val_targets)):
        if target.lower().endswith(".bin"):
            bins.append(bin_target(name, Path(target), spec))
        else:
            n, p = protocol_target(name, target, images.keys, images.identities)
            check(split if split is not None else train_ids, p, parts=("train",))
            on_data.append((n, p))
    return bins, on_data


def default_loader_workers(device: torch.device) -> int:
    """DataLoader worker processes for the gather step: on CUDA up to 4 per process (cores shared among
    DDP ranks, one left for the training process); on CPU none, because workers would take cores from
    the training step itself (bench/bench_datasets.py: the data path is 75-1,500 x faster than a CPU step)."""
    if device.type != "cuda":
        return 0
    import os

    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return max(0, min(4, (os.cpu_count() or 1) // world - 1))


class _GatherPlan(torch.utils.data.Dataset):
    """plan[start + k] -> its uint8 rows; runs in forked DataLoader workers (the cache memmap is shared
    by fork, never pickled)."""

    def __init__(self, loader: BatchLoader, plan: list[SampledBatch], start: int) -> None:
        self.loader, self.plan, self.start = loader, plan, start

    def __len__(self) -> int:
        return len(self.plan) - self.start

    def __getitem__(self, k: int) -> torch.Tensor:
        return torch.from_numpy(self.loader.gather(self.plan[self.start + k]))


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of batch `index` of `epoch`: a pure function of its position."""
    a, b = np.random.SeedSequence([seed, epoch, index, 0xA06]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


class BatchLoader:
    """Sampled row positions -> `Batch` on the device (gather from cache, augment, normalise)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, labels: np.ndarray, transform: BatchTransform,
                 device: torch.device, seed: int, prefetch: int = 2, workers: int | None = None) -> None:
        self.array, self.rows, self.labels = array, rows, labels
        self.transform, self.device, self.seed, self.prefetch = transform, device, seed, prefetch
        self.workers = default_loader_workers(device) if workers is None else workers

    def gather(self, sb: SampledBatch) -> np.ndarray:
        """The batch's uint8 rows from the cache, in batch order (the part DataLoader workers run)."""
        dataset_rows = self.rows[sb.indices]
        order = np.argsort(dataset_rows, kind="stable")
        u8 = np.empty((len(dataset_rows), *self.array.shape[1:]), np.uint8)
        u8[order] = self.array[dataset_rows[order]]  # memmaps read fastest in row order
        return u8

    def make(self, sb: SampledBatch, epoch: int, index: int) -> Batch:
        return self.finish(torch.from_numpy(self.gather(sb)), sb, epoch, index)

    def finish(self, t: torch.Tensor, sb: SampledBatch, epoch: int, index: int) -> Batch:
        """Gathered uint8 rows -> a Batch on the device (pinned transfer on CUDA, seeded augmentation)."""
        pos = sb.indices
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, index))
        images = self.transform(t, g if self.transform.augment is not None else None)
        labels = torch.from_numpy(self.labels[pos]).to(self.device)
        same = torch.from_numpy(sb.same).to(self.device) if sb.same is not None else None
        return Batch(images=images, labels=labels, same=same, epoch=epoch)

    def iterate(self, plan: list[SampledBatch], epoch: int, start: int) -> Iterator[tuple[int, Batch]]:
        """(index, batch) for plan[start:], prepared `prefetch` batches ahead: gathered by DataLoader worker
        processes (`workers` > 0) or in a thread. Either way a batch is a pure function of its position."""
        if self.workers > 0 and type(self).make is BatchLoader.make:
            yield from self._iterate_workers(plan, epoch, start)
            return
        if self.prefetch <= 0:
            for i in range(start, len(plan)):
                yield i, self.make(plan[i], epoch, i)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for i in range(start, len(plan)):
                    if stop.is_set() or not put((i, self.make(plan[i], epoch, i))):
                        return
                put(None)
            except BaseException as e:  # surfaced in the main thread
                put(e)

        th = threading.Thread(target=work, name="fvtool-batches", daemon=True)
        th.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            th.join(timeout=5)

    def _iterate_workers(self, plan: list[SampledBatch], epoch: int, start: int) -> Iterator[tuple[int, Batch]]:
        from torch.utils.data import DataLoader

        dl = DataLoader(_GatherPlan(self, plan, start), batch_size=None, shuffle=False, num_workers=self.workers,
                        pin_memory=self.device.type == "cuda", prefetch_factor=max(2, self.prefetch),
                        multiprocessing_context="fork")
        for k, u8 in enumerate(dl):
            i = start + k
            yield i, self.finish(u8, plan[i], epoch, i)
