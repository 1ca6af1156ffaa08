"""Forward a network over rows of the uint8 image cache: the one inference loop of fvtool.

Used by the embed stage (fvtool/embedding.py), periodic validation during training
(fvtool/training/evaluation.py) and the insightface .bin evaluation, so training-time validation
and `embed` run the same pixels through the same code. It sits below all of them (it imports only
the data transforms), which keeps the training and embedding layers free of import cycles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool.data.transforms import BatchTransform, Normalisation

TTA_MODES = ("none", "flip-sum", "flip-concat")


def embed_rows(model: nn.Module, array: np.ndarray, rows: np.ndarray, *, normalisation: Normalisation,
               device: torch.device, batch_size: int = 256, channels_last: bool = True,
               l2_normalise: bool = False, tta: str = "none", autocast_dtype: torch.dtype | None = None,
               on_batch: Any = None) -> np.ndarray:
    """Embeddings of cache rows `rows` (float32 [n, D], or [n, 2D] for flip-concat).

    `model` must already be in eval mode on `device`. TTA: "flip-sum" adds the embeddings of x and
    flip(x) and L2-normalises the sum (insightface); "flip-concat" concatenates the two
    L2-normalised embeddings (so each view weighs the same). `on_batch(start, emb)` is called after
    each batch (the embed stage writes chunks from it); the full array is returned as well unless
    `on_batch` is given (then an empty array, to keep memory flat for big datasets).
    """
    tf = BatchTransform(normalisation=normalisation, augment=None, channels_last=channels_last)
    keep: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            r = rows[start:start + batch_size]
            sel = np.sort(r)
            u8 = torch.from_numpy(np.ascontiguousarray(array[sel]))
            if not np.array_equal(sel, r):  # memmaps read fastest in row order; restore the asked order
                u8 = u8[torch.from_numpy(np.argsort(np.argsort(r, kind="stable"), kind="stable"))]
            if device.type == "cuda":  # pinned host memory: the copy overlaps with the previous batch's work
                u8 = u8.pin_memory()
            x = tf(u8.to(device, non_blocking=True))
            e = _forward(model, x, tta, autocast_dtype)
            if l2_normalise and tta == "none":
                e = F.normalize(e, dim=1)
            out = e.float().cpu().numpy()
            if on_batch is not None:
                on_batch(start, out)
            else:
                keep.append(out)
    if on_batch is not None:
        return np.empty((0, 0), np.float32)
    return np.concatenate(keep) if keep else np.empty((0, 0), np.float32)


def _forward(model: nn.Module, x: torch.Tensor, tta: str, dtype: torch.dtype | None) -> torch.Tensor:
    def run(inp: torch.Tensor) -> torch.Tensor:
        if dtype is None:
            return model(inp).float()
        with torch.autocast(device_type=inp.device.type, dtype=dtype):
            return model(inp).float()

    if tta == "none":
        return run(x)
    both = run(torch.cat([x, x.flip(-1)]))
    a, b = both[: len(x)], both[len(x):]
    if tta == "flip-sum":
        return F.normalize(a + b, dim=1)
    if tta == "flip-concat":
        return torch.cat([F.normalize(a, dim=1), F.normalize(b, dim=1)], dim=1)
    raise ValueError(f"unknown TTA mode {tta!r}")
