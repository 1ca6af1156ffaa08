"""Periodic validation during training: embed a protocol's images, score, compute verify's metrics.

Why the same metric code as `verify`: a model selected on "FRR at FAR = 1e-4" during training
must be selected on exactly the number `verify` later reports. The metric functions come from
`fvtool.verification.metrics` (EER by bob's rule, FRR at a fixed FAR by bob's `far_threshold`
rule, see docs/metrics-spec).

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
from fvtool.inference import embed_rows
from fvtool.protocols.model import Protocol, resolve_keys
from fvtool.verification.metrics import ScoreTable


def verification_metrics(impostor: np.ndarray, genuine: np.ndarray, far_points: list[float]) -> dict[str, Any]:
    """balanced_accuracy, accuracy, eer (bob rule), auc and frr@far=<f> (None when f is below
    1 / #impostors, i.e. not measurable) for one set of scores, by the verify stage's rules.

    balanced_accuracy = 1 - HTER = 1 - (FAR + FRR) / 2 at the threshold with the lowest FAR + FRR (bob's
    `min_hter_threshold`): what the summary, history readers and the report show. `accuracy` (the share
    of correct decisions at its own best threshold) is kept for `--select-metric accuracy` but misleads on
    all-pairs protocols: with 30x more impostor than genuine pairs, rejecting everything already scores
    97 % (a run showed 94 % beside an EER of 35 %)."""
    if len(impostor) == 0 or len(genuine) == 0:
        raise InputError(f"validation needs genuine and impostor pairs (got {len(genuine)} and {len(impostor)})")
    table = ScoreTable.from_scores(impostor, genuine)
    errors = table.imp_ge + table.gen_lt  # false accepts + false rejects at every threshold
    out: dict[str, Any] = {
        "balanced_accuracy": 1.0 - table.min_hter(),
        "accuracy": 1.0 - float(errors.min()) / (table.n_imp + table.n_gen),
        "eer": float(table.eer().value),
        "auc": float(table.auc()),
        "n_genuine": table.n_gen,
        "n_impostor": table.n_imp,
    }
    for f in far_points:
        op = table.frr_at_far(f)
        out[f"frr@far={f:g}"] = float(op.frr) if op.measurable else None
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
    rows = resolve_keys(protocol.images, keys, what=f"validation protocol {protocol.name!r}")
    return ValidationSet(protocol, rows)


@torch.inference_mode()
def validation_scores(embedder: nn.Module, vs: ValidationSet, array: np.ndarray, normalisation: Normalisation,
                      device: torch.device, batch_size: int = 256,
                      channels_last: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(impostor, genuine) cosine scores of `embedder` on `vs` (the module is put in eval mode and restored)."""
    was_training = embedder.training
    embedder.eval()
    try:
        emb = embed_rows(embedder, array, vs.rows, normalisation=normalisation, device=device,
                         batch_size=batch_size, channels_last=channels_last, l2_normalise=True)
    finally:
        embedder.train(was_training)
    return vs.scores(emb)


def evaluate(embedder: nn.Module, vs: ValidationSet, array: np.ndarray, normalisation: Normalisation,
             device: torch.device, far_points: list[float], batch_size: int = 256,
             channels_last: bool = True) -> dict[str, Any]:
    """Validation metrics of `embedder` on `vs`."""
    imp, gen = validation_scores(embedder, vs, array, normalisation, device, batch_size, channels_last)
    return verification_metrics(imp, gen, far_points)
