"""Periodic validation during training: embed a protocol's images, score, compute verify's metrics.

Why the same metric code as `verify`: a model selected on "FRR at FAR = 1e-4" during training
must be selected on exactly the number `verify` later reports. The metric functions come from
`fvtool.verification.metrics` (EER by bob's rule, FRR at a fixed FAR by bob's `far_threshold`
rule); the fallbacks below implement the same rules (docs/metrics-spec) for checkouts without it.

Scores are cosine similarities of the L2-normalised embeddings. A FAR point below
1 / (number of impostor pairs) is not measurable and is reported as None (JSON null).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.protocols.model import Protocol

# ---- metric rules (fallbacks; see metrics-spec) --------------------------------------------

def _eer_local(impostor: np.ndarray, genuine: np.ndarray) -> float:
    """bob `eer_threshold`: candidates = min score and midpoints of consecutive distinct scores."""
    imp, gen = np.sort(impostor), np.sort(genuine)
    u = np.unique(np.concatenate([imp, gen]))
    cand = np.concatenate([u[:1], (u[1:] + u[:-1]) / 2]) if len(u) > 1 else u
    far = 1.0 - np.searchsorted(imp, cand, side="left") / len(imp)
    frr = np.searchsorted(gen, cand, side="left") / len(gen)
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2)


def _frr_at_far_local(impostor: np.ndarray, genuine: np.ndarray, far: float) -> tuple[float, float]:
    """bob `far_threshold`: the largest attained FAR <= target, tie groups together. (FRR, FAR)."""
    imp = np.sort(impostor)[::-1]
    n = len(imp)
    allowed = int(np.floor(far * n + 1e-9))
    # number of impostors >= imp[j] (ties included) for each j
    counts = n - np.searchsorted(np.sort(impostor), imp, side="left")
    ok = np.flatnonzero(counts <= allowed)
    t = float(imp[ok[-1]]) if len(ok) else float(np.nextafter(imp[0], np.inf))
    return float(np.mean(genuine < t)), float(np.mean(impostor >= t))


def _best_accuracy(impostor: np.ndarray, genuine: np.ndarray) -> float:
    """Accuracy at the best single threshold (accept iff score >= t) over all pairs."""
    s = np.concatenate([impostor, genuine])
    u = np.unique(s)
    cand = np.concatenate([u, [np.nextafter(u[-1], np.inf)]])
    tn = np.searchsorted(np.sort(impostor), cand, side="left")
    tp = len(genuine) - np.searchsorted(np.sort(genuine), cand, side="left")
    return float((tn + tp).max() / len(s))


def verification_metrics(impostor: np.ndarray, genuine: np.ndarray, far_points: list[float]) -> dict[str, Any]:
    """accuracy, eer and frr@far=<f> (None when f < 1 / n_impostor) for one set of scores."""
    if len(impostor) == 0 or len(genuine) == 0:
        raise InputError(f"validation needs genuine and impostor pairs (got {len(genuine)} and {len(impostor)})")
    try:
        from fvtool.verification import metrics as vm  # the verify stage's implementation
    except ImportError:
        vm = None
    eer_fn = getattr(vm, "eer", None) if vm is not None else None
    out: dict[str, Any] = {
        "accuracy": _best_accuracy(impostor, genuine),
        "eer": float(eer_fn(impostor, genuine)) if callable(eer_fn) else _eer_local(impostor, genuine),
        "n_genuine": len(genuine),
        "n_impostor": len(impostor),
    }
    for f in far_points:
        key = f"frr@far={f:g}"
        out[key] = None if f < 1.0 / len(impostor) else _frr_at_far_local(impostor, genuine, f)[0]
    return out


# ---- embedding and scoring -----------------------------------------------------------------

@dataclass
class ValidationSet:
    """A protocol mapped onto dataset rows: `rows[i]` is the dataset row of protocol image i."""

    protocol: Protocol
    rows: np.ndarray

    @property
    def name(self) -> str:
        return self.protocol.name

    def scores(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(impostor, genuine) cosine scores; `emb` are L2-normalised, one row per protocol image."""
        p = self.protocol
        if p.kind == "pairs":
            s = np.einsum("ij,ij->i", emb[p.a], emb[p.b])
            return s[~p.same], s[p.same]
        ids = np.asarray(p.identities)
        imp, gen = [], []
        for t in p.trials:
            e = emb[t]
            s = e @ e.T
            iu = np.triu_indices(len(t), k=1)
            same = ids[t][iu[0]] == ids[t][iu[1]]
            v = s[iu]
            imp.append(v[~same])
            gen.append(v[same])
        return np.concatenate(imp), np.concatenate(gen)


def make_validation_set(protocol: Protocol, keys: list[str]) -> ValidationSet:
    """Map protocol images to dataset rows; missing images are an error naming them."""
    from fvtool.protocols.model import resolve_keys

    rows = resolve_keys(protocol.images, keys, what=f"validation protocol {protocol.name!r}")
    return ValidationSet(protocol, rows)


@torch.inference_mode()
def evaluate(embedder: nn.Module, vs: ValidationSet, array: np.ndarray, normalisation: Normalisation,
             device: torch.device, far_points: list[float], batch_size: int = 256,
             channels_last: bool = True) -> dict[str, Any]:
    """Validation metrics of `embedder` on `vs` (the module is put in eval mode and restored)."""
    from fvtool.embedding import embed_rows

    was_training = embedder.training
    embedder.eval()
    try:
        emb = embed_rows(embedder, array, vs.rows, normalisation=normalisation, device=device,
                         batch_size=batch_size, channels_last=channels_last, l2_normalise=True)
    finally:
        embedder.train(was_training)
    imp, gen = vs.scores(emb)
    return verification_metrics(imp, gen, far_points)
