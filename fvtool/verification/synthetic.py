"""Synthetic clustered embeddings with realistic identity sizes, for benchmarks and tests.

Why: all-pairs scaling and the bootstrap need data whose genuine/impostor structure looks like a
face model's (tight identity clusters, near-orthogonal identities, a few large identities) at
sizes the real data cannot provide (N = 100,000), with a seed so every run sees the same numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def lfw_like_sizes(n_images: int, seed: int = 0, root: Path | None = None) -> np.ndarray:
    """Identity sizes: LFW's own (from `root`, an identity-folder tree) when given and big enough,
    else a heavy-tailed draw with LFW's shape (about 70% singletons, a few identities with
    hundreds of images), trimmed to exactly `n_images`."""
    if root is not None and root.is_dir():
        sizes = np.array(sorted((sum(1 for _ in d.iterdir()) for d in root.iterdir() if d.is_dir()),
                                reverse=True), dtype=np.int64)
        if sizes.sum() >= n_images:
            return _trim(sizes, n_images)
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.zipf(2.2, size=n_images), max(2, n_images // 25)).astype(np.int64)
    return _trim(sizes, n_images)


def _trim(sizes: np.ndarray, n: int) -> np.ndarray:
    c = np.cumsum(sizes)
    k = int(np.searchsorted(c, n))
    out = sizes[: k + 1].copy()
    out[-1] -= int(c[k] - n)
    return out[out > 0]


def clustered_embeddings(sizes: np.ndarray, dim: int = 512, seed: int = 0, spread: float = 1.0,
                         center_dim: int = 48, shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings float32 [N, dim], identity label per row).

    Identities are random unit directions in a `center_dim`-dimensional subspace (so impostor
    cosines spread like a real model's, sd about 1/sqrt(center_dim)); an image is its identity's
    direction plus isotropic noise whose size varies per image (log-normal around `spread`:
    a few poor-quality images make the genuine tail that overlaps the impostors). The defaults
    give an EER of a few percent, roughly a mid-quality face model.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, center_dim)))[0].astype(np.float32)  # [dim, c]
    z = rng.standard_normal((len(sizes), center_dim)).astype(np.float32)
    centers = z @ basis.T
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    scale = spread * np.exp(0.45 * rng.standard_normal(len(labels))).astype(np.float32)
    noise = rng.standard_normal((len(labels), dim)).astype(np.float32)
    noise *= (scale / np.sqrt(dim)).astype(np.float32)[:, None]
    x = centers[labels] + noise
    if shuffle:
        p = rng.permutation(len(labels))
        x, labels = x[p], labels[p]
    return np.ascontiguousarray(x, dtype=np.float32), labels
