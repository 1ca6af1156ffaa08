"""Sharded embedding: `fvtool embed --shard i/n` on many machines or GPUs, then `fvtool embed merge`.

Why shards are contiguous row ranges on the batch grid: the unsharded embed runs the network on
batches that start at fixed rows (chunks of `chunk` rows from row 0, batches of `batch_size`
from each chunk's start). A shard starts and ends on that grid, so every batch it runs is a batch
the unsharded run also runs (same rows, same size). Per-row results then do not depend on how
the data was split, even on devices whose kernels depend on the batch size, and the merged file
equals the unsharded one bit for bit (tested on the CPU). A shard decodes only its own images
into its cache; the dataset fingerprint it records is that of the whole dataset (a hash of every
file, computed once per machine and remembered), so merge can check that all shards embedded
the same data.

A shard file is an ordinary `fvtool-embeddings` file holding its rows, with these attributes:
    shard              "i/n"
    shard_start, shard_stop   its rows [start, stop) of the whole dataset (manifest order)
    shard_total        rows of the whole dataset
    shard_batch_size, shard_chunk   the batch grid it was cut on
Merge refuses shards of different checkpoints, data, TTA, geometry or dataset size, names the
rows no shard covers and the rows two shards both cover, and writes one file whose embeddings,
keys, identities, status and attributes are those of an unsharded embed (`created` aside).
Merge holds the merged embeddings in memory (rows x dim x 4 bytes: 2 GB for 1M x 512).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.data.embeddings import EmbeddingSet, read_embeddings, write_embeddings
from fvtool.errors import InputError

SHARD_ATTRS = ("shard", "shard_start", "shard_stop", "shard_total", "shard_batch_size", "shard_chunk")
#: attributes every shard of one embedding job must share
SAME_JOB = ("checkpoint_sha256", "data_fingerprint", "tta", "embedding_size", "input_size", "normalisation",
            "backbone", "shard_total")
#: attributes write_embeddings sets itself
_WRITER_ATTRS = ("format", "version", "fvtool_version", "created")


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (2, 8): shard index i (0-based) of n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise InputError(f"--shard {text!r}: write I/N, e.g. 0/4 for the first of 4 shards (I counts from 0)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise InputError(f"--shard {text}: need N >= 1 and 0 <= I < N (I counts from 0)")
    return i, n


def batch_grid(n_rows: int, batch_size: int, chunk: int) -> np.ndarray:
    """Start rows of the batches an unsharded embed runs, plus `n_rows` at the end."""
    if batch_size < 1 or chunk < 1:
        raise InputError(f"batch size and chunk must be >= 1 (got {batch_size}, {chunk})")
    starts = [s for c in range(0, n_rows, chunk) for s in range(c, min(n_rows, c + chunk), batch_size)]
    return np.asarray([*starts, n_rows], dtype=np.int64)


def shard_range(n_rows: int, index: int, count: int, *, batch_size: int, chunk: int) -> tuple[int, int]:
    """Rows [start, stop) of shard `index` of `count`: the grid points nearest above index*N/count and
    (index+1)*N/count, so shards are contiguous, disjoint, cover every row, and differ in size by at
    most about one batch. A shard may be empty when there are fewer batches than shards."""
    grid = batch_grid(n_rows, batch_size, chunk)

    def cut(k: int) -> int:
        target = k * n_rows / count
        return int(grid[np.searchsorted(grid, target - 1e-9)])

    return cut(index), cut(index + 1)


@dataclass
class MergeResult:
    path: Path
    n: int
    dim: int
    shards: list[Path]


def _shard_facts(path: Path, es: EmbeddingSet) -> tuple[int, int]:
    missing = [k for k in SHARD_ATTRS if k not in es.attrs]
    if missing:
        raise InputError(f"{path}: not a shard (no {', '.join(missing)} attribute); shards are written by "
                         "`fvtool embed --shard I/N`")
    start, stop = int(es.attrs["shard_start"]), int(es.attrs["shard_stop"])
    if stop - start != len(es.keys):
        raise InputError(f"{path}: says rows {start}-{stop - 1} but holds {len(es.keys)} embeddings")
    return start, stop


def _rows(a: int, b: int) -> str:
    return f"row {a}" if b - a == 1 else f"rows {a}-{b - 1}"


def coverage_problems(ranges: list[tuple[int, int, str]], total: int) -> list[str]:
    """Gaps and overlaps of [start, stop) ranges (with a name each) over rows 0..total-1."""
    problems: list[str] = []
    covered_to, last_name = 0, ""
    for start, stop, name in sorted(ranges):
        if start > covered_to:
            problems.append(f"{_rows(covered_to, start)} of {total} are in no shard")
        elif start < covered_to and stop > start:
            problems.append(f"{_rows(start, min(stop, covered_to))} are in both {last_name} and {name}")
        if stop > covered_to:
            covered_to, last_name = stop, name
    if covered_to < total:
        problems.append(f"{_rows(covered_to, total)} of {total} are in no shard")
    return problems


def merge_shards(paths: list[str | Path], out: str | Path) -> MergeResult:
    """Check that `paths` are the shards of one embedding job covering every row exactly once, and
    write the merged embeddings file to `out` (atomically)."""
    if not paths:
        raise InputError("embed merge: give the shard files to merge")
    shards = [Path(p) for p in paths]
    sets = [read_embeddings(p) for p in shards]
    facts = [_shard_facts(p, es) for p, es in zip(shards, sets, strict=True)]
    ref = sets[0].attrs
    for p, es in zip(shards[1:], sets[1:], strict=True):
        for key in SAME_JOB:
            if es.attrs.get(key) != ref.get(key):
                raise InputError(f"{p} and {shards[0]} are not shards of the same job: {key} "
                                 f"{es.attrs.get(key)!r} != {ref.get(key)!r} (embed every shard with the same "
                                 "checkpoint, data and options)")
        if es.dim != sets[0].dim:
            raise InputError(f"{p}: {es.dim}-d embeddings, {shards[0]} has {sets[0].dim}-d")
    total = int(ref["shard_total"])
    problems = coverage_problems([(a, b, str(p)) for (a, b), p in zip(facts, shards, strict=True)], total)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; ... ({len(problems)} problems)" if len(problems) > 6 else "")
        raise InputError(f"the shards do not cover the dataset exactly once: {shown}")
    order = sorted(range(len(sets)), key=lambda k: facts[k][0])
    parts = [sets[k] for k in order if facts[k][1] > facts[k][0]]
    attrs = {k: v for k, v in ref.items() if k not in SHARD_ATTRS and k not in _WRITER_ATTRS}
    merged = EmbeddingSet(
        embeddings=np.concatenate([es.embeddings for es in parts]) if parts else np.empty((0, sets[0].dim), np.float32),
        keys=[k for es in parts for k in es.keys],
        identities=[k for es in parts for k in es.identities],
        status=[k for es in parts for k in es.status],
        attrs=attrs,
    )
    write_embeddings(out, merged)
    return MergeResult(Path(out), len(merged.keys), merged.dim, [shards[k] for k in order])
