"""Batch samplers: random batches, P identities x K images, labelled pairs; all seeded and resumable.

Why "the epoch plan is a pure function of (seed, epoch)": each sampler draws an epoch's batches
from a generator seeded with (seed, epoch, stream), so its whole state is (epoch, position in
the epoch). Saving those two numbers in a checkpoint is enough for `--resume` to continue with
exactly the batches the uninterrupted run would have seen, and nothing depends on how many
random numbers were drawn before.

`cap` limits images per identity *per epoch* (LFW has one identity with 530 images): each epoch
draws a fresh random subset of at most `cap` images of each identity, so over many epochs all
images are seen but no identity dominates a single epoch.

Samplers yield `SampledBatch`: dataset row indices, and for pair batches the labels `same`
(the first half of `indices` are the left images, the second half the right ones).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fvtool.errors import InputError

_STREAMS = {"random": 1, "pk": 2, "pairs": 3, "triplets": 4, "listed": 5}


@dataclass
class SampledBatch:
    indices: np.ndarray  # int64 dataset rows
    same: np.ndarray | None = None  # bool [len(indices) // 2] for pair batches


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, stream])))


def _groups(labels: np.ndarray) -> list[np.ndarray]:
    """Row indices per class, in class order (class ids are 0..C-1)."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [g for g in np.split(order, bounds) if len(g)]


def _capped(groups: list[np.ndarray], cap: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    if cap is None:
        return groups
    return [g if len(g) <= cap else np.sort(rng.choice(g, cap, replace=False)) for g in groups]


class Sampler:
    """Base: tracks (epoch, position) and yields the rest of an epoch's plan."""

    kind = "base"

    def __init__(self, labels: np.ndarray, seed: int, cap: int | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) == 0:
            raise InputError("sampler: no training images")
        if cap is not None and cap < 1:
            raise InputError(f"the cap on images per identity must be >= 1 (got {cap})")
        self.seed = int(seed)
        self.cap = cap
        self.groups = _groups(self.labels)
        self.epoch = 0
        self.position = 0  # batches of `epoch` already consumed

    def plan(self, epoch: int) -> list[SampledBatch]:
        raise NotImplementedError

    def __len__(self) -> int:
        """Batches per epoch (epoch 0's plan; every epoch has the same length up to capping)."""
        return len(self.plan(0))

    def iter_epoch(self, epoch: int) -> Iterator[SampledBatch]:
        """The batches of `epoch` from the saved position on (0 unless resuming that epoch)."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0
        plan = self.plan(epoch)
        while self.position < len(plan):
            b = plan[self.position]
            self.position += 1
            yield b

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seed": self.seed, "cap": self.cap, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind or state.get("seed") != self.seed or state.get("cap") != self.cap:
            raise InputError(
                f"sampler state is for {state.get('kind')} (seed {state.get('seed')}, cap {state.get('cap')}) "
                f"but this run uses {self.kind} (seed {self.seed}, cap {self.cap}); resume with the same config"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


class RandomBatchSampler(Sampler):
    """Shuffled images in batches of `batch_size` (for classification losses)."""

    kind = "random"

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int, cap: int | None = None,
                 drop_last: bool = True) -> None:
        super().__init__(labels, seed, cap)
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1 (got {batch_size})")
        self.batch_size, self.drop_last = batch_size, drop_last
        n = sum(len(g) for g in _capped(self.groups, cap, epoch_rng(seed, 0, 0)))
        if drop_last and n < batch_size:
            raise InputError(f"only {n} training images for batches of {batch_size}; lower --batch-size")

    def plan(self, epoch: int) -> list[SampledBatch]:
        rng = epoch_rng(self.seed, epoch, _STREAMS["random"])
        rows = np.concatenate(_capped(self.groups, self.cap, rng))
        rows = rows[rng.permutation(len(rows))]
        stop = len(rows) - (len(rows) % self.batch_size if self.drop_last else 0)
        return [SampledBatch(rows[i:i + self.batch_size]) for i in range(0, stop, self.batch_size)]


class PKSampler(Sampler):
    """Batches of P distinct identities x K images each (for metric losses and miners).

    Identities with fewer than 2 images are left out (no positive pair). An identity's images
    are shuffled and cut into chunks of K; a short last chunk is filled by drawing again from
    the same identity (with replacement), as pytorch-metric-learning's MPerClassSampler does.
    Chunks are shuffled and packed greedily into batches of P distinct identities.
    """

    kind = "pk"

    def __init__(self, labels: np.ndarray, p: int, k: int, seed: int, cap: int | None = None) -> None:
        super().__init__(labels, seed, cap)
        if p < 2 or k < 2:
            raise InputError(f"P x K sampling needs P >= 2 identities and K >= 2 images (got {p} x {k})")
        self.p, self.k = p, k
        self.eligible = [g for g in self.groups if len(g) >= 2]
        self.n_excluded = len(self.groups) - len(self.eligible)
        if len(self.eligible) < p:
            raise InputError(f"P x K sampling with P={p} needs >= {p} identities with 2+ images; "
                             f"the training data has {len(self.eligible)}")
        if not self.plan(0):
            raise InputError(f"too few images to form one batch of {p} x {k}; lower --pk")

    def plan(self, epoch: int) -> list[SampledBatch]:
        rng = epoch_rng(self.seed, epoch, _STREAMS["pk"])
        chunks: list[np.ndarray] = []
        for g in _capped(self.eligible, self.cap, rng):
            g = g[rng.permutation(len(g))]
            for i in range(0, len(g), self.k):
                c = g[i:i + self.k]
                if len(c) < self.k:
                    c = np.concatenate([c, rng.choice(g, self.k - len(c), replace=True)])
                chunks.append(c)
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
        batches: list[SampledBatch] = []
        pending: list[np.ndarray] = []
        for c in chunks:
            pending.append(c)
            taken: list[int] = []
            seen: set[int] = set()
            for j, pc in enumerate(pending):
                lab = int(self.labels[pc[0]])
                if lab not in seen:
                    seen.add(lab)
                    taken.append(j)
                    if len(taken) == self.p:
                        break
            if len(taken) == self.p:
                batches.append(SampledBatch(np.concatenate([pending[j] for j in taken])))
                pending = [pc for j, pc in enumerate(pending) if j not in set(taken)]
        return batches


class PairBatchSampler(Sampler):
    """Batches of labelled pairs (for the siamese BCE verifier): `positive_fraction` genuine.

    Per epoch, every (capped) image is the left image of about one pair: genuine pairs take a
    left image of an identity with 2+ images and a different image of that identity; impostor
    pairs take a left image and a right image of another identity, both uniformly.
    """

    kind = "pairs"

    def __init__(self, labels: np.ndarray, pairs_per_batch: int, seed: int, cap: int | None = None,
                 positive_fraction: float = 0.5) -> None:
        super().__init__(labels, seed, cap)
        if pairs_per_batch < 2:
            raise InputError(f"pair batches need >= 2 pairs (got {pairs_per_batch})")
        if not 0 < positive_fraction < 1:
            raise InputError(f"positive fraction must be in (0, 1) (got {positive_fraction})")
        if len(self.groups) < 2 or not any(len(g) >= 2 for g in self.groups):
            raise InputError("pair sampling needs >= 2 identities and one identity with 2+ images")
        self.b, self.fraction = pairs_per_batch, positive_fraction

    def plan(self, epoch: int) -> list[SampledBatch]:
        rng = epoch_rng(self.seed, epoch, _STREAMS["pairs"])
        groups = _capped(self.groups, self.cap, rng)
        rows = np.concatenate(groups)
        members = {int(self.labels[g[0]]): g for g in groups}
        eligible = np.concatenate([g for g in groups if len(g) >= 2])
        n_batches = len(rows) // self.b
        n_pos = max(1, round(self.b * self.fraction))
        n_neg = self.b - n_pos
        pos_left = eligible[rng.integers(0, len(eligible), n_batches * n_pos)]
        neg_left = rows[rng.permutation(len(rows))][: n_batches * n_neg]
        if len(neg_left) < n_batches * n_neg:
            neg_left = rows[rng.integers(0, len(rows), n_batches * n_neg)]
        pos_right = np.empty_like(pos_left)
        for i, a in enumerate(pos_left):
            g = members[int(self.labels[a])]
            j = rng.integers(0, len(g) - 1)
            others = g[g != a]
            pos_right[i] = others[j % len(others)]
        neg_right = np.empty_like(neg_left)
        for i, a in enumerate(neg_left):
            while True:
                r = rows[rng.integers(0, len(rows))]
                if self.labels[r] != self.labels[a]:
                    neg_right[i] = r
                    break
        batches = []
        for bi in range(n_batches):
            left = np.concatenate([pos_left[bi * n_pos:(bi + 1) * n_pos], neg_left[bi * n_neg:(bi + 1) * n_neg]])
            right = np.concatenate([pos_right[bi * n_pos:(bi + 1) * n_pos], neg_right[bi * n_neg:(bi + 1) * n_neg]])
            same = np.concatenate([np.ones(n_pos, bool), np.zeros(n_neg, bool)])
            order = rng.permutation(self.b)
            batches.append(SampledBatch(np.concatenate([left[order], right[order]]), same[order]))
        return batches


def _other_identity(rows: np.ndarray, labels: np.ndarray, anchors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each anchor, a row of `rows` (uniformly drawn) whose identity differs from the anchor's."""
    out = np.empty_like(anchors)
    for i, a in enumerate(anchors):
        while True:
            r = rows[rng.integers(0, len(rows))]
            if labels[r] != labels[a]:
                out[i] = r
                break
    return out


class TripletBatchSampler(Sampler):
    """Batches of B triplets laid out [anchors, positives, negatives] (the siamese method's triplet loss).

    Per epoch every (capped) image of an identity with 2+ images is the anchor of one triplet; the
    positive is another image of its identity, the negative an image of another identity, both uniform.
    """

    kind = "triplets"

    def __init__(self, labels: np.ndarray, triplets_per_batch: int, seed: int, cap: int | None = None) -> None:
        super().__init__(labels, seed, cap)
        if triplets_per_batch < 1:
            raise InputError(f"triplet batches need >= 1 triplet (got {triplets_per_batch})")
        if len(self.groups) < 2 or not any(len(g) >= 2 for g in self.groups):
            raise InputError("triplet sampling needs >= 2 identities and one identity with 2+ images")
        self.b = triplets_per_batch
        if not self.plan(0):
            raise InputError(f"fewer anchors than one batch of {triplets_per_batch} triplets; lower --batch-size")

    def plan(self, epoch: int) -> list[SampledBatch]:
        rng = epoch_rng(self.seed, epoch, _STREAMS["triplets"])
        groups = _capped(self.groups, self.cap, rng)
        rows = np.concatenate(groups)
        members = {int(self.labels[g[0]]): g for g in groups}
        anchors = np.concatenate([g for g in groups if len(g) >= 2])
        anchors = anchors[rng.permutation(len(anchors))]
        n = len(anchors) // self.b * self.b
        anchors = anchors[:n]
        positives = np.empty_like(anchors)
        for i, a in enumerate(anchors):
            others = members[int(self.labels[a])]
            others = others[others != a]
            positives[i] = others[rng.integers(0, len(others))]
        negatives = _other_identity(rows, self.labels, anchors, rng)
        return [SampledBatch(np.concatenate([anchors[s:s + self.b], positives[s:s + self.b], negatives[s:s + self.b]]))
                for s in range(0, n, self.b)]


class ListedPairSampler(Sampler):
    """Batches of the pairs a pairs file lists (`fvtool train --train-pairs`), as pairs or as triplets.

    `left`, `right`, `same`: the file's training pairs as positions of the training rows. Each epoch
    shuffles them (seeded by (seed, epoch)) and cuts batches of B, dropping the last incomplete one:
      kind "pairs"     every listed pair once per epoch, laid out [lefts, rights] with `same`;
      kind "triplets"  every listed genuine pair (a, p) once per epoch as the anchor and positive of
                       a triplet whose negative is drawn uniformly from the images of the listed
                       pairs with another identity (the file lists no triplets; docs/recipes.md).
    """

    kind = "listed"

    def __init__(self, labels: np.ndarray, left: np.ndarray, right: np.ndarray, same: np.ndarray, *,
                 layout: str, per_batch: int, seed: int) -> None:
        super().__init__(labels, seed, None)
        if layout not in ("pairs", "triplets"):
            raise InputError(f"listed pairs are batched as pairs or triplets, not {layout!r}")
        self.left, self.right = np.asarray(left, np.int64), np.asarray(right, np.int64)
        self.same = np.asarray(same, bool)
        self.layout, self.b = layout, int(per_batch)
        self.rows = np.unique(np.concatenate([self.left, self.right]))
        n = len(self.left) if layout == "pairs" else int(self.same.sum())
        if n < self.b or self.b < 1:
            what = "listed training pairs" if layout == "pairs" else "listed genuine training pairs (triplet anchors)"
            raise InputError(f"{n} {what} for batches of {self.b}; lower --batch-size")
        if layout == "triplets" and len(np.unique(self.labels[self.rows])) < 2:
            raise InputError("triplets from listed pairs need images of >= 2 identities")

    def plan(self, epoch: int) -> list[SampledBatch]:
        rng = epoch_rng(self.seed, epoch, _STREAMS["listed"])
        if self.layout == "pairs":
            order = rng.permutation(len(self.left))
            n = len(order) // self.b * self.b
            return [SampledBatch(np.concatenate([self.left[o], self.right[o]]), self.same[o])
                    for o in (order[s:s + self.b] for s in range(0, n, self.b))]
        genuine = np.flatnonzero(self.same)
        order = genuine[rng.permutation(len(genuine))]
        n = len(order) // self.b * self.b
        anchors, positives = self.left[order[:n]], self.right[order[:n]]
        negatives = _other_identity(self.rows, self.labels, anchors, rng)
        return [SampledBatch(np.concatenate([anchors[s:s + self.b], positives[s:s + self.b], negatives[s:s + self.b]]))
                for s in range(0, n, self.b)]

    def fixed_batches(self, size: int) -> list[SampledBatch]:
        """Every listed pair (pairs), or every listed genuine pair with one negative (triplets), once, in
        file order, in batches of `size` (the last one shorter): fixed batches for a validation loss,
        the same at every evaluation (negatives drawn once, from (seed, epoch 0))."""
        size = max(1, int(size))
        if self.layout == "pairs":
            chunks = [np.arange(s, min(len(self.left), s + size)) for s in range(0, len(self.left), size)]
            return [SampledBatch(np.concatenate([self.left[c], self.right[c]]), self.same[c]) for c in chunks]
        genuine = np.flatnonzero(self.same)
        anchors, positives = self.left[genuine], self.right[genuine]
        negatives = _other_identity(self.rows, self.labels, anchors, epoch_rng(self.seed, 0, _STREAMS["listed"]))
        return [SampledBatch(np.concatenate([anchors[s:s + size], positives[s:s + size], negatives[s:s + size]]))
                for s in range(0, len(anchors), size)]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "layout": self.layout, "pairs": len(self.left)}


def build_sampler(kind: str, labels: np.ndarray, *, seed: int, batch_size: int, pk: tuple[int, int] | None,
                  cap: int | None, positive_fraction: float = 0.5, listed: Any = None) -> Sampler:
    """The sampler a method asks for ("random", "pk", "pairs" or "triplets") from the run's options.

    `listed` (the training pairs of a pairs file, fvtool/training/pair_file.py): "pairs" and
    "triplets" batches then hold the listed pairs (ListedPairSampler); "random" and "pk" batches draw
    from the images of those pairs as usual. Pair batches hold batch_size // 2 pairs, triplet
    batches batch_size // 3 triplets (batch_size counts images)."""
    if listed is not None and kind in ("pairs", "triplets"):
        per = max(1, batch_size // (2 if kind == "pairs" else 3))
        return ListedPairSampler(labels, listed.left, listed.right, listed.same, layout=kind, per_batch=per, seed=seed)
    if kind == "random":
        return RandomBatchSampler(labels, batch_size, seed, cap)
    if kind == "pk":
        if pk is None:
            p = max(2, batch_size // 4)
            pk = (p, 4)
        return PKSampler(labels, pk[0], pk[1], seed, cap)
    if kind == "pairs":
        return PairBatchSampler(labels, max(2, batch_size // 2), seed, cap, positive_fraction)
    if kind == "triplets":
        return TripletBatchSampler(labels, max(1, batch_size // 3), seed, cap)
    raise InputError(f"unknown sampler {kind!r} (random, pk, pairs, triplets)")
