"""All-pairs scoring at scale: stream the upper triangle in blocks, never hold N^2 scores.

An all-pairs protocol (MEDS-II, BLUFR, an MS-Celeb subset) compares every unordered pair of
images in a trial: 87.5M pairs for LFW, 5e9 for N = 100,000. The numbers it reports (FRR at
FAR targets down to 1e-5, the EER) depend on a few scores each, so the stream keeps:
- every genuine score (with its pair),
- a fine histogram of all impostor scores (`Quantizer`: 2^18 equal-width bins over the score
  range), which gives the exact number of impostors above any bin edge,
- the exact impostor scores in the few bins that the operating points and the EER fall into
  ("kept bins"; with `--bootstrap`, every bin above the lowest of those, with the pair).

Why this is exact: the quantiser is monotone (float32 multiply-add then truncation), so a bin is
an interval of scores. For a threshold inside a kept bin, #impostors >= t = (kept scores >= t) +
(all impostors in higher non-kept bins, from the histogram). `ScoreTable` receives the kept scores
plus one pseudo-score per non-kept bin (its lower edge, weighted with the bin count), so the
ordinary metric code runs unchanged and is exact wherever its answer depends on kept bins only;
`AllPairsScores.verify` checks exactly that.

Which bins to keep is known only after the histogram exists, so a cheap sample (a few million
random pairs) predicts them with a wide margin; after the pass the exact histogram says which bins
were needed, and in the rare case one was missed a second pass collects it (never more than two).

Images are reordered by identity inside each trial so the genuine pairs of a block lie in a
narrow band next to the diagonal: the band is read once for the genuine scores and then masked
(with a sentinel in bin 0) before the impostor histogram is taken. The product is a float32 GEMM
per block, so its scores equal the naive full matrix's up to float32 rounding (the BLAS kernel, and
with it the summation order, depends on the block shape and the CPU); "exact" above means exact
given the scores the stream computed, which is what the tests check bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from fvtool.verification.metrics import ScoreTable
from fvtool.verification.scoring import Scoring, prepare, score_block, transform_dots

DEFAULT_BINS = 1 << 18
DEFAULT_BLOCK_ELEMS = 1 << 24  # scores per block (64 MB of float32)
HIST_CHUNK = 1 << 20  # scores per bincount call: an 8 MB bin-index buffer, reused for every block
DEFAULT_SAMPLE_PAIRS = 1 << 21
KEEP_ALL_BELOW = 1 << 22  # trials with fewer impostors keep every impostor score
PLAN_GENUINE = 1 << 18  # genuine scores the planner looks at, about (its EER band is wide)
PLAN_GEMM_ROWS = 64  # identities sampled with at least this many images: one GEMM, else row-wise pairs
PLAN_ROW_CHUNK = 1 << 16  # row-wise planning pairs per chunk


# ---------------------------------------------------------------------------------------------
# the monotone quantiser


def _f32_key(v: np.ndarray) -> np.ndarray:
    """Order-preserving map float32 -> int64 (for bisection over float32 values)."""
    b = np.asarray(v, np.float32).view(np.int32).astype(np.int64)
    return np.where(b >= 0, b, -(b & 0x7FFFFFFF))


def _key_f32(k: np.ndarray) -> np.ndarray:
    k = np.asarray(k, np.int64)
    b = np.where(k >= 0, k, (-k) | np.int64(-0x80000000))
    return b.astype(np.int32).view(np.float32)


@dataclass(frozen=True)
class Quantizer:
    """q(v) = trunc(v * scale + offset) in float32 arithmetic; bin 0 is reserved for the sentinel
    (the padded lower bound), real scores land in bins >= 1."""

    lo: float
    hi: float
    bins: int
    scale: np.float32 = field(init=False)
    offset: np.float32 = field(init=False)
    sentinel: np.float32 = field(init=False)

    def __post_init__(self) -> None:
        span = self.hi - self.lo
        pad = span * 2e-3 + 1e-6
        lo, hi = self.lo - pad, self.hi + pad
        scale = np.float32((self.bins - 1) / (hi - lo))
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "offset", np.float32(-lo * float(scale)))
        object.__setattr__(self, "sentinel", np.float32(lo))

    def q(self, v: np.ndarray) -> np.ndarray:
        x = np.asarray(v, dtype=np.float32) * self.scale
        x += self.offset
        return np.clip(x, 0, self.bins - 1).astype(np.intp)

    def edges(self) -> np.ndarray:
        """e[i] = the smallest float32 with q(e) >= i, so `v >= e[i]` <=> `q(v) >= i` for every
        float32 v. Bisection over ordered float32 keys in a window around (i - offset) / scale."""
        target = np.arange(self.bins, dtype=np.intp)
        guess = _f32_key(((target - float(self.offset)) / float(self.scale)).astype(np.float32))
        lo, hi = guess - 4096, guess + 4096
        bad = np.flatnonzero((self.q(_key_f32(lo)) >= target) | (self.q(_key_f32(hi)) < target))
        out = self._bisect(lo, hi, target, 14)
        if len(bad):
            lo_b = np.full(len(bad), _f32_key(np.float32(self.sentinel) - np.float32(1.0)), np.int64)
            hi_b = np.full(len(bad), _f32_key(np.float32(self.hi + (self.hi - self.lo) + 1.0)), np.int64)
            out[bad] = self._bisect(lo_b, hi_b, target[bad], 40)
        return _key_f32(out)

    def _bisect(self, lo: np.ndarray, hi: np.ndarray, target: np.ndarray, steps: int) -> np.ndarray:
        for _ in range(steps):  # invariant: q(lo) < target <= q(hi)
            mid = (lo + hi) // 2
            ok = self.q(_key_f32(mid)) >= target
            hi = np.where(ok, mid, hi)
            lo = np.where(ok, lo, mid)
        return hi


# ---------------------------------------------------------------------------------------------
# backends (numpy on CPU; torch for CUDA)


class _NumpyBackend:
    name = "numpy"

    def __init__(self) -> None:
        self._index = np.empty(0, np.intp)  # reused bin-index buffer (see hist)

    def put(self, x: np.ndarray):
        return x

    def block(self, xr, xc, scoring: Scoring, nr, nc):
        return transform_dots(xr @ xc.T, scoring, nr, nc)

    def band(self, s, w: int) -> np.ndarray:
        return s[:, :w]

    def fill(self, s, w: int, mask: np.ndarray, value: np.float32) -> None:
        s[:, :w][mask] = value

    def select_ge(self, s, thr: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = np.flatnonzero(s >= thr)  # 1-D: several times faster than a 2-D nonzero
        r, c = np.divmod(flat, s.shape[1])
        return r, c, s.reshape(-1)[flat]

    def hist(self, s, quant: Quantizer) -> np.ndarray:
        """`bincount(quant.q(s))` (the same float32 multiply-add and truncation), in chunks through
        one reused index buffer: casting a whole 16 M-score block at once allocated a 128 MB
        temporary per block, and its page faults cost more than the counting."""
        flat = s.reshape(-1)
        if len(self._index) < min(len(flat), HIST_CHUNK):
            self._index = np.empty(min(len(flat), HIST_CHUNK), np.intp)
        out = np.zeros(quant.bins, np.int64)
        for c in range(0, len(flat), HIST_CHUNK):
            v = flat[c:c + HIST_CHUNK]
            v *= quant.scale
            v += quant.offset
            idx = self._index[:len(v)]
            np.copyto(idx, v, casting="unsafe")  # truncation toward zero, as astype
            out += np.bincount(idx, minlength=quant.bins)
        return out


class _TorchBackend:
    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.name = f"torch:{self.device}"
        if self.device.type == "cuda":  # exact float32 products, no TF32 shortcuts
            torch.backends.cuda.matmul.allow_tf32 = False

    def put(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def block(self, xr, xc, scoring: Scoring, nr, nc):
        return transform_dots(xr @ xc.T, scoring, nr, nc)

    def band(self, s, w: int) -> np.ndarray:
        return s[:, :w].cpu().numpy()

    def fill(self, s, w: int, mask: np.ndarray, value: np.float32) -> None:
        s[:, :w].masked_fill_(self.torch.from_numpy(mask).to(self.device), float(value))

    def select_ge(self, s, thr: np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r, c = self.torch.nonzero(s >= float(thr), as_tuple=True)
        return r.cpu().numpy(), c.cpu().numpy(), s[r, c].cpu().numpy()

    def hist(self, s, quant: Quantizer) -> np.ndarray:
        t = self.torch
        s.mul_(t.tensor(quant.scale, device=self.device)).add_(t.tensor(quant.offset, device=self.device))
        return t.bincount(s.to(t.int64).view(-1), minlength=quant.bins).cpu().numpy().astype(np.int64)


def _backend(device: str):
    return _NumpyBackend() if device == "cpu" else _TorchBackend(device.removeprefix("torch-"))


# ---------------------------------------------------------------------------------------------
# trials in identity order


@dataclass
class _Trial:
    idx: np.ndarray  # embedding rows in identity order
    gend: np.ndarray  # per position: end (exclusive) of its identity group
    n_gen: int
    n_imp: int


def _trial(rows: np.ndarray, labels: np.ndarray) -> _Trial:
    rows = np.asarray(rows, np.int64)
    order = np.argsort(labels[rows], kind="stable")
    idx = rows[order]
    lab = labels[idx]
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    ends = np.r_[starts[1:], len(idx)]
    sizes = ends - starts
    gend = np.repeat(ends, sizes)
    n = len(idx)
    n_gen = int((sizes * (sizes - 1) // 2).sum())
    return _Trial(idx=idx, gend=gend, n_gen=n_gen, n_imp=n * (n - 1) // 2 - n_gen)


# ---------------------------------------------------------------------------------------------
# one streaming pass


@dataclass
class _Pass:
    gen: list[np.ndarray] = field(default_factory=list)
    gen_a: list[np.ndarray] = field(default_factory=list)
    gen_b: list[np.ndarray] = field(default_factory=list)
    kept: list[np.ndarray] = field(default_factory=list)
    kept_a: list[np.ndarray] = field(default_factory=list)
    kept_b: list[np.ndarray] = field(default_factory=list)
    hist: np.ndarray | None = None


def _stream(be, x: np.ndarray, sq: np.ndarray | None, trials: list[_Trial], scoring: Scoring,
            quant: Quantizer, keep: np.ndarray | None, edges: np.ndarray, *, want_hist: bool,
            want_gen: bool, block_elems: int, tick: Callable[[int], None] | None) -> _Pass:
    out = _Pass(hist=np.zeros(quant.bins, np.int64) if want_hist else None)
    floor = None
    if keep is not None and keep.any():
        floor = edges[int(np.argmax(keep))]
    sentinel = quant.sentinel
    for tr in trials:
        n = len(tr.idx)
        xt = be.put(x[tr.idx])
        nt = be.put(sq[tr.idx]) if sq is not None else None
        r0 = 0
        while r0 < n - 1:
            m = n - r0
            r1 = min(n - 1, r0 + max(16, block_elems // m))
            s = be.block(xt[r0:r1], xt[r0:], scoring, None if nt is None else nt[r0:r1],
                         None if nt is None else nt[r0:])
            rel_end = tr.gend[r0:r1] - r0  # columns < rel_end[i] are lower triangle/diagonal/genuine
            w = int(rel_end.max())
            cols = np.arange(w)
            rowpos = np.arange(r1 - r0)[:, None]
            invalid = cols[None, :] < rel_end[:, None]
            if want_gen:
                band = be.band(s, w)
                gmask = invalid & (cols[None, :] > rowpos)
                gi, gc = np.nonzero(gmask)
                out.gen.append(np.asarray(band[gi, gc], np.float32))
                out.gen_a.append(tr.idx[r0 + gi].astype(np.int32))
                out.gen_b.append(tr.idx[r0 + gc].astype(np.int32))
            be.fill(s, w, invalid, sentinel)
            if floor is not None:
                ri, ci, vals = be.select_ge(s, floor)
                if len(vals):
                    sel = keep[quant.q(vals)]
                    out.kept.append(np.asarray(vals[sel], np.float32))
                    out.kept_a.append(tr.idx[r0 + ri[sel]].astype(np.int32))  # N < 2^31
                    out.kept_b.append(tr.idx[r0 + ci[sel]].astype(np.int32))
            if want_hist:
                h = be.hist(s, quant)
                if len(h) != quant.bins:
                    raise RuntimeError("score outside the histogram range (internal error)")
                out.hist += h
            if tick:
                tick(int((r1 - r0) * m - (r1 - r0) * (r1 - r0 + 1) // 2))
            r0 = r1
    if want_hist:
        out.hist[0] = 0  # the sentinel bin: masked lower-triangle/genuine entries
    return out


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)


# ---------------------------------------------------------------------------------------------
# which bins the metrics need


def _cum_from_top(h: np.ndarray) -> np.ndarray:
    """C[i] = sum(h[i:]) (length bins + 1, C[bins] = 0)."""
    return np.concatenate([np.cumsum(h[::-1])[::-1], [0]])


def _neighbours(nonempty: np.ndarray, b: int, k: int) -> list[int]:
    """b and up to k nonempty bins on each side of it."""
    ne = np.flatnonzero(nonempty)
    p = int(np.searchsorted(ne, b))
    return [int(i) for i in ne[max(0, p - k): p + k + 1]] + [b]


def _target_bin(c: np.ndarray, n_imp: float, far: float) -> int:
    """The bin holding the bob FAR threshold's decision: the highest bin whose cumulative count
    from the top exceeds what the target allows (or the lowest bin when everything fits)."""
    over = np.flatnonzero(c[:-1] / n_imp > far)
    return int(over[-1]) if len(over) else 0


def _eer_bin(c: np.ndarray, glt: np.ndarray, n_imp: float, n_gen: float) -> int:
    """The last bin edge where FAR - FRR is still >= 0 (the crossing lies in that bin)."""
    d = c / n_imp - glt / n_gen
    nonneg = np.flatnonzero(d >= 0)
    return int(nonneg[-1]) if len(nonneg) else 0


def required_bins(hist_imp: np.ndarray, hist_gen: np.ndarray, far_targets: Sequence[float],
                  eer: bool = True) -> np.ndarray:
    """Bins whose exact impostor scores the operating points and the bob EER need (exact, from
    the complete histograms)."""
    bins = len(hist_imp)
    need = np.zeros(bins, bool)
    nonempty_imp = hist_imp > 0
    n_imp = hist_imp.sum()
    c = _cum_from_top(hist_imp)
    for f in far_targets:
        for i in _neighbours(nonempty_imp, _target_bin(c, n_imp, f), 1):
            need[i] = True
    ne = np.flatnonzero(nonempty_imp)
    if len(ne):  # the maximum impostor (thresholds above it)
        need[ne[-1]] = True
    if eer and hist_gen.sum():
        glt = np.concatenate([[0], np.cumsum(hist_gen)])
        b = _eer_bin(c, glt, n_imp, hist_gen.sum())
        for i in _neighbours(nonempty_imp | (hist_gen > 0), b, 2):
            need[i] = True
    return need & nonempty_imp


def _planned_bins(sample_hist: np.ndarray, n_sample: int, n_imp: int, hist_gen: np.ndarray,
                  far_targets: Sequence[float], eer: bool, z: float = 8.0, ratio: float = 1.25) -> np.ndarray:
    """Predict `required_bins` from a sample of impostor scores, with a wide margin: every bin
    whose estimated cumulative FAR is within `ratio` and z binomial sd of a target (or of the
    estimated EER crossing) is kept."""
    bins = len(sample_hist)
    keep = np.zeros(bins, bool)
    cs = _cum_from_top(sample_hist).astype(np.float64)  # sample counts from the top
    nonempty = sample_hist > 0

    def band(p_lo: float, p_hi: float) -> None:
        # bins whose [cs[i+1], cs[i]] overlaps [p_lo, p_hi]
        sel = (cs[1:] <= p_hi) & (cs[:-1] >= p_lo)
        keep[:] |= sel
        idx = np.flatnonzero(sel)
        for b in (idx[0], idx[-1]) if len(idx) else ():
            for i in _neighbours(nonempty, int(b), 2):
                keep[i] = True

    for f in far_targets:
        p = f * n_sample
        sd = np.sqrt(max(p, 1.0))
        band(max(0.0, p / ratio - z * sd - 2), p * ratio + z * sd + 2)
    if eer and hist_gen.sum():
        glt = np.concatenate([[0], np.cumsum(hist_gen)]) / hist_gen.sum()
        far_hat = cs / n_sample
        cross = np.flatnonzero(far_hat - glt >= 0)
        if len(cross):
            e = float(far_hat[cross[-1]])
            p = e * n_sample
            sd = np.sqrt(max(p, 1.0))
            band(max(0.0, p / ratio - z * sd - 2), p * ratio + z * sd + 2)
    ne = np.flatnonzero(nonempty)
    if len(ne):  # the top of the distribution (above-max thresholds)
        keep[ne[-1]:] = True
    return keep


# ---------------------------------------------------------------------------------------------
# the result


@dataclass
class AllPairsScores:
    genuine: np.ndarray  # float32, all genuine scores
    genuine_a: np.ndarray  # int32 embedding rows
    genuine_b: np.ndarray
    kept: np.ndarray  # float32, exact impostor scores of the kept bins
    kept_a: np.ndarray
    kept_b: np.ndarray
    hist_imp: np.ndarray  # int64 [bins]: all impostor scores
    hist_gen: np.ndarray  # int64 [bins]
    keep: np.ndarray  # bool [bins]
    quant: Quantizer
    edges: np.ndarray  # float32 [bins]: lower edge of each bin (see Quantizer.edges)
    n_imp: int
    n_gen: int
    passes: int
    backend: str
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """True when every impostor score is kept (small trials)."""
        return bool(self.keep[self.hist_imp > 0].all())

    def pseudo(self) -> tuple[np.ndarray, np.ndarray]:
        """(value, count) per non-kept, non-empty bin: the bin's lower edge stands for it."""
        bins = np.flatnonzero((self.hist_imp > 0) & ~self.keep)
        return self.edges[bins].astype(np.float64), self.hist_imp[bins]

    def table(self) -> ScoreTable:
        pv, pc = self.pseudo()
        imp = np.concatenate([self.kept.astype(np.float64), pv])
        w = np.concatenate([np.ones(len(self.kept), np.int64), pc])
        return ScoreTable.from_scores(imp, self.genuine, w_imp=w)

    def _bins_exact(self, values: np.ndarray) -> bool:
        """Every bin from the lowest to the highest of these scores is kept or has no impostor,
        so counts at thresholds among them are exact."""
        if not len(values):
            return True
        q = self.quant.q(np.asarray(values, np.float32))
        lo, hi = int(q.min()), int(q.max())
        return bool((self.keep[lo: hi + 1] | (self.hist_imp[lo: hi + 1] == 0)).all())

    # ---- exactness checks ---------------------------------------------------------------
    def far_exact(self, table: ScoreTable, threshold: float, above_max: bool) -> bool:
        """The bob FAR threshold depends on the impostor score it returns and the next lower one."""
        imp_vals = table.values[table.imp > 0]
        if above_max:
            return self._bins_exact(imp_vals[-1:])
        p = int(np.searchsorted(imp_vals, threshold))
        return self._bins_exact(imp_vals[max(0, p - 1): p + 1])

    def around_exact(self, table: ScoreTable, threshold: float, k: int = 2) -> bool:
        """Counts at the k distinct scores on each side of `threshold` are exact."""
        j = int(np.searchsorted(table.values, threshold))
        return self._bins_exact(table.values[max(0, j - k): j + k])


def allpairs_scores(emb: np.ndarray, labels: np.ndarray, trials: Sequence[np.ndarray], scoring: Scoring,
                    far_targets: Sequence[float], *, keep_above: bool = False, device: str = "cpu",
                    bins: int = DEFAULT_BINS, block_elems: int = DEFAULT_BLOCK_ELEMS,
                    sample_pairs: int = DEFAULT_SAMPLE_PAIRS, seed: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> AllPairsScores:
    """Stream every trial's upper triangle (see the module doc).

    `labels`: integer identity per embedding row; `trials`: embedding rows per trial.
    `keep_above`: keep every impostor score above the lowest needed bin (with pairs), which the
    identity bootstrap needs. `progress(done, total)` is called with comparison counts.
    """
    import time

    t0 = time.perf_counter()
    x = prepare(emb, scoring)
    sq = None if scoring.normalise else np.einsum("ij,ij->i", x, x).astype(np.float32)
    max_norm = float(np.sqrt(sq.max())) if sq is not None and len(sq) else 1.0
    lo, hi = scoring.bounds(max_norm)
    quant = Quantizer(lo, hi, bins)
    edges = quant.edges()
    labels = np.asarray(labels)
    trs = [_trial(t, labels) for t in trials if len(t) >= 2]
    n_imp = sum(t.n_imp for t in trs)
    n_gen = sum(t.n_gen for t in trs)
    be = _backend(device)
    total = sum(len(t.idx) * (len(t.idx) - 1) // 2 for t in trs)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress:
            progress(done[0], total)

    secs: dict[str, float] = {}
    keep_all = n_imp <= KEEP_ALL_BELOW
    if keep_all:
        keep = np.ones(bins, bool)
        keep[0] = False
    else:
        keep = _plan(x, sq, trs, scoring, quant, far_targets, sample_pairs, seed, be)
        if keep_above and keep.any():
            keep[int(np.argmax(keep)):] = True
    secs["plan"] = time.perf_counter() - t0
    p1 = _stream(be, x, sq, trs, scoring, quant, keep, edges, want_hist=True, want_gen=True,
                 block_elems=block_elems, tick=tick)
    secs["pass1"] = time.perf_counter() - t0 - secs["plan"]
    gen = _cat(p1.gen, np.float32)
    p1.gen = []
    hist_gen = np.zeros(bins, np.int64)
    for c0 in range(0, len(gen), 1 << 22):  # chunks: no full-size index temporaries
        hist_gen += np.bincount(quant.q(gen[c0:c0 + (1 << 22)]), minlength=bins)
    need = required_bins(p1.hist, hist_gen, far_targets)
    if keep_above and need.any():
        need[int(np.argmax(need)):] = True
        need &= p1.hist > 0
    passes = 1
    kept_parts = (p1.kept, p1.kept_a, p1.kept_b)
    if (need & ~keep).any():  # the sample missed a bin: collect exactly what is needed
        keep = need
        total += total
        p2 = _stream(be, x, sq, trs, scoring, quant, keep, edges, want_hist=False, want_gen=False,
                     block_elems=block_elems, tick=tick)
        kept_parts = (p2.kept, p2.kept_a, p2.kept_b)
        passes = 2
        secs["pass2"] = time.perf_counter() - t0 - secs["plan"] - secs["pass1"]
    if passes == 1 and not keep_all:  # the plan kept a margin around the needed bins: drop it,
        keep = need                     # chunk by chunk, before anything is concatenated
        for i, v in enumerate(kept_parts[0]):
            sel = need[quant.q(v)]
            kept_parts[0][i], kept_parts[1][i], kept_parts[2][i] = v[sel], kept_parts[1][i][sel], kept_parts[2][i][sel]
    kept = _cat(kept_parts[0], np.float32)
    kept_a, kept_b = _cat(kept_parts[1], np.int32), _cat(kept_parts[2], np.int32)
    return AllPairsScores(
        genuine=gen, genuine_a=_cat(p1.gen_a, np.int32), genuine_b=_cat(p1.gen_b, np.int32),
        kept=kept, kept_a=kept_a, kept_b=kept_b,
        hist_imp=p1.hist, hist_gen=hist_gen, keep=keep & (p1.hist > 0), quant=quant, edges=edges,
        n_imp=n_imp, n_gen=n_gen, passes=passes, backend=be.name, seconds=secs,
    )


def _plan(x: np.ndarray, sq: np.ndarray | None, trs: list[_Trial], scoring: Scoring, quant: Quantizer,
          far_targets: Sequence[float], sample_pairs: int, seed: int, be) -> np.ndarray:
    """Predict the kept bins from a sample of random rows x random columns per trial (many rows
    and many columns, so no single image dominates) and the genuine scores, which are cheap."""
    rng = np.random.default_rng(seed)
    sample_hist = np.zeros(quant.bins, np.int64)
    hist_gen = np.zeros(quant.bins)  # weighted: genuine pairs each planning score stands for
    n_sample = 0
    n_imp = sum(t.n_imp for t in trs)
    for tr in trs:
        n = len(tr.idx)
        share = max(1, int(sample_pairs * tr.n_imp / max(n_imp, 1)))
        k = int(min(n, max(64, np.sqrt(share))))
        rows = np.sort(rng.choice(n, size=k, replace=False))
        cols = np.sort(rng.choice(n, size=k, replace=False))
        s = be.block(be.put(x[tr.idx[rows]]), be.put(x[tr.idx[cols]]), scoring,
                     None if sq is None else be.put(sq[tr.idx[rows]]), None if sq is None else be.put(sq[tr.idx[cols]]))
        s = np.asarray(s.cpu().numpy() if hasattr(s, "cpu") else s)
        lab = tr.gend  # equal group end <=> same identity
        imp = lab[rows][:, None] != lab[cols][None, :]
        vals = s[imp]
        sample_hist += np.bincount(quant.q(vals), minlength=quant.bins)
        n_sample += len(vals)
        g, w = _planning_genuine(x, sq, tr, scoring, rng)
        hist_gen += np.bincount(quant.q(g), weights=w, minlength=quant.bins)
    return _planned_bins(sample_hist, n_sample, n_imp, hist_gen, far_targets, eer=True)


def _planning_genuine(x: np.ndarray, sq: np.ndarray | None, tr: _Trial, scoring: Scoring,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A weighted sample of about PLAN_GENUINE genuine scores for planning: (scores, weights),
    each weight the number of genuine pairs the score stands for, so every identity counts in
    proportion to its genuine pairs.

    Identities whose sample is large (PLAN_GEMM_ROWS images or more): one product over a random
    subset of their images (every pair of the subset). All others: row-wise products of pairs
    drawn uniformly from their pairs, in chunks (hundreds of tiny GEMMs cost more in BLAS thread
    wake-ups than in arithmetic). Computing every pair of every identity with >= 16 images, as
    before, took 12 s at N = 100,000 on this machine; the pass computes them anyway.
    """
    n = len(tr.idx)
    if tr.n_gen == 0:
        return np.empty(0, np.float32), np.empty(0)
    group_starts = np.flatnonzero(np.r_[True, tr.gend[1:] != tr.gend[:-1]])
    sizes = np.diff(np.r_[group_starts, n])
    rate = min(1.0, PLAN_GENUINE / tr.n_gen)  # fraction of the genuine pairs to sample
    pairs = sizes * (sizes - 1) // 2
    k = sizes if rate >= 1 else np.minimum(sizes, np.ceil(0.5 + np.sqrt(0.25 + 2 * rate * pairs)).astype(np.int64))
    by_gemm = k >= PLAN_GEMM_ROWS

    def scores(ra: np.ndarray, rb: np.ndarray) -> np.ndarray:  # row-wise, for embedding rows ra, rb
        d = np.einsum("ij,ij->i", x[ra], x[rb])[:, None]
        nsum = None if sq is None else sq[ra] + sq[rb]
        return transform_dots(d, scoring, nsum, None if sq is None else np.zeros(1, np.float32)).ravel()

    out, weights = [], []
    for a, m, kk in zip(group_starts[by_gemm], sizes[by_gemm], k[by_gemm], strict=True):
        pos = a + (np.arange(m) if kk == m else np.sort(rng.choice(m, size=kk, replace=False)))
        rows = tr.idx[pos]
        g = transform_dots(x[rows] @ x[rows].T, scoring, None if sq is None else sq[rows],
                           None if sq is None else sq[rows])
        out.append(g[np.triu_indices(kk, 1)])
        weights.append(np.full(len(out[-1]), (m * (m - 1) // 2) / (kk * (kk - 1) // 2)))
    in_gemm = np.repeat(by_gemm, sizes)
    e = np.where(in_gemm, 0, tr.gend - np.arange(n) - 1)  # partners after each position
    total = int(e.sum())
    if total:
        want = total if rate >= 1 else max(1, min(total, round(rate * total)))
        pick = np.arange(total) if want == total else np.sort(rng.choice(total, want, replace=False))
        first = np.cumsum(e) - e
        for c in range(0, len(pick), PLAN_ROW_CHUNK):  # bounded gathers: 2 x chunk x D floats
            pc = pick[c:c + PLAN_ROW_CHUNK]
            pa = np.searchsorted(first + e, pc, side="right")
            pb = pa + 1 + (pc - first[pa])
            out.append(scores(tr.idx[pa], tr.idx[pb]))
        weights.append(np.full(want, total / want))
    return np.concatenate(out), np.concatenate(weights)


class NaiveScores(NamedTuple):
    """Every pair of the naive reference: scores (float32) and embedding rows, split by kind."""

    imp: np.ndarray
    imp_a: np.ndarray
    imp_b: np.ndarray
    gen: np.ndarray
    gen_a: np.ndarray
    gen_b: np.ndarray


def naive_allpairs(emb: np.ndarray, labels: np.ndarray, trials: Sequence[np.ndarray],
                   scoring: Scoring) -> NaiveScores:
    """Reference: the full score matrix of each trial (one `score_block` GEMM), upper triangle
    split into impostor and genuine pairs. O(N^2) memory: for tests and benchmarks only.

    Its scores equal the stream's up to float32 rounding, not bit for bit: a BLAS chooses its
    kernel, and with it the summation order of each dot product, by the matrix shape and the
    CPU's instruction set, and the stream multiplies other shapes (blocks)."""
    x = prepare(emb, scoring)
    sq = None if scoring.normalise else np.einsum("ij,ij->i", x, x).astype(np.float32)
    labels = np.asarray(labels)
    parts: list[list[np.ndarray]] = [[] for _ in range(6)]
    for t in trials:
        t = np.asarray(t, np.int64)
        xt = x[t]
        s = score_block(xt, xt, scoring, None if sq is None else sq[t], None if sq is None else sq[t])
        iu = np.triu_indices(len(t), 1)
        same = labels[t][iu[0]] == labels[t][iu[1]]
        v, a, b = s[iu], t[iu[0]], t[iu[1]]
        for k, part in enumerate((v[~same], a[~same], b[~same], v[same], a[same], b[same])):
            parts[k].append(part)
    return NaiveScores(*(np.concatenate(p) if p else np.empty(0) for p in parts))
