"""Extra validation targets during training (`--val-target`, repeatable), beside the main validation.

insightface validates on lfw / cfp_fp / agedb_30 `.bin` sets every N steps; a fvtool run may do the
same. A target is `[NAME=]SPEC` where SPEC is
  FILE.bin          an insightface verification set (images inside; decoded into the run's geometry)
  FILE              a protocol file (fvtool-protocol JSON or LFW pairs.txt) over the training data's images
  lfw               the packaged LFW View 2 pairs, over the training data's images
NAME (default: the file stem, or the preset name) prefixes the target's metrics: `cfp_fp/eer`,
`cfp_fp/frr@far=1e-3`, ... in history.jsonl's `val` records, the report's training curves and
`--select-metric cfp_fp/eer`. Each target is scored by the same rules as the main validation
(cosine of L2-normalised embeddings, `evaluation.verification_metrics`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.data.cache import CacheSpec
from fvtool.errors import InputError
from fvtool.protocols.model import Protocol
from fvtool.training.evaluation import ValidationSet

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class ValidationTarget:
    """One extra target: its protocol over `array` rows (`array` None: rows of the training cache)."""

    name: str
    spec: str
    vs: ValidationSet
    array: np.ndarray | None


def parse_target(text: str) -> tuple[str, str]:
    """'[NAME=]SPEC' -> (name, spec)."""
    name, eq, spec = text.partition("=")
    if not eq:
        spec = text
        name = "lfw" if text.lower() == "lfw" else Path(text).stem
    name, spec = name.strip(), spec.strip()
    if not spec:
        raise InputError(f"--val-target {text!r}: give [NAME=]FILE.bin, [NAME=]PROTOCOL_FILE or lfw")
    if not NAME_RE.match(name) or "/" in name:
        raise InputError(f"--val-target {text!r}: the name {name!r} may hold letters, digits, '_', '-', '.' only "
                         "(it prefixes metric names such as NAME/eer)")
    return name, spec


def check_names(texts: list[str]) -> list[tuple[str, str]]:
    out = [parse_target(t) for t in texts]
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"--val-target: two targets are named {dup[0]!r}; name them with NAME=SPEC")
    return out


def bin_target(name: str, path: Path, geometry: CacheSpec) -> ValidationTarget:
    """An insightface .bin set: its images decoded into the run's geometry, pairs (2i, 2i + 1)."""
    from fvtool.interop.bin_eval import bin_to_rows
    from fvtool.interop.insightface_bin import read_bin

    vb = read_bin(path)
    rows = bin_to_rows(vb, geometry, str(path))
    keys = [f"{name}:{i}" for i in range(len(rows))]
    n = vb.n_pairs
    proto = Protocol(kind="pairs", name=name, images=keys, identities=keys, a=np.arange(0, 2 * n, 2),
                     b=np.arange(1, 2 * n, 2), same=np.asarray(vb.issame, bool), fold=np.zeros(n, np.int64),
                     source=f"bin:{Path(path).resolve()}")
    return ValidationTarget(name, str(path), ValidationSet(proto, np.arange(len(rows))), rows)


def protocol_target(name: str, spec: str, keys: list[str], identities: list[str]) -> tuple[str, Protocol]:
    """A protocol over the training data's images (mapped to cache rows later, like the main validation)."""
    from fvtool.protocols.presets import resolve_protocol

    if spec.lower() not in ("lfw",) and not Path(spec).is_file():
        raise InputError(f"--val-target {name}={spec}: no such file (give FILE.bin, a protocol file or lfw)")
    proto, _preset = resolve_protocol(spec, keys=keys, identities=identities)
    return name, proto
