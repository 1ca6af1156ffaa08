"""Report figures as matplotlib figures over plain arrays, saved as deterministic files.

Why deterministic: reports are compared across reruns (diff, hashes); matplotlib otherwise
stamps dates, its version and random SVG ids into every file. `save_figure` removes those,
fixes the font (DejaVu Sans, shipped with matplotlib) and renders SVG text as paths, so the
same numbers give byte-identical PNG and SVG/PDF files.

DET axes: probit (normal deviate) by default, as DETware, bob and sklearn draw them; log-log
(NIST FRVT style) on request. Below FAR = 1/#impostors a DET curve carries no information
(zero or one impostor decides it): each curve's limit is drawn as a dotted line in its colour
and operating points that cannot be measured are listed in a note instead of being plotted.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, same output everywhere

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fvtool.atomic import write_bytes
from fvtool.reporting.records import RunData
from fvtool.verification.metrics import probit

DET_AXES = ("probit", "log")
FIGURE_FORMATS = ("png", "svg", "pdf")
PNG_DPI = 110

_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "svg.fonttype": "path",
    "svg.hashsalt": "fvtool-report",
    "pdf.fonttype": 42,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": PNG_DPI,
    "savefig.dpi": PNG_DPI,
    "path.simplify": True,
}
_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": "fvtool"},
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": "fvtool"},
}
_COLORS = plt.get_cmap("tab10").colors
_LINESTYLES = ("-", "--", "-.", ":")


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """Fixed rcParams for every report figure (does not leak into the caller's matplotlib state)."""
    with plt.rc_context(_RC):
        yield


def run_style(i: int) -> dict[str, object]:
    """Colour and line style of the i-th run, the same in every figure of a report."""
    return {"color": _COLORS[i % len(_COLORS)], "linestyle": _LINESTYLES[(i // len(_COLORS)) % len(_LINESTYLES)]}


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """Render `fig` to bytes without dates or version stamps."""
    if fmt not in FIGURE_FORMATS:
        raise ValueError(f"unknown figure format {fmt!r} (choose from {', '.join(FIGURE_FORMATS)})")
    buf = io.BytesIO()
    with figure_style():
        fig.savefig(buf, format=fmt, metadata=_METADATA[fmt], bbox_inches="tight", pad_inches=0.08)
    return buf.getvalue()


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png", "svg")) -> dict[str, Path]:
    """Write `stem.<fmt>` for each format atomically, close the figure, return the paths by format."""
    out: dict[str, Path] = {}
    try:
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            write_bytes(path, figure_bytes(fig, fmt))
            out[fmt] = path
    finally:
        plt.close(fig)
    return out


# ---- DET / ROC ----------------------------------------------------------------------------------

_PROB_TICKS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)


def probability_label(p: float) -> str:
    """Tick label for a probability: 1e-4 style below 1 %, plain decimals above."""
    if p < 0.01:
        e = math.log10(p)
        return f"1e{round(e)}" if math.isclose(e, round(e), abs_tol=1e-9) else f"{p:.0e}"
    return f"{p:g}"


def _positive_curve(far: np.ndarray, frr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points both axes can show (0 and 1 are at infinity on probit and log axes), ordered by FAR."""
    far = np.asarray(far, dtype=np.float64)
    frr = np.asarray(frr, dtype=np.float64)
    keep = (far > 0) & (frr > 0) & (far < 1) & (frr < 1) & np.isfinite(far) & np.isfinite(frr)
    far, frr = far[keep], frr[keep]
    order = np.lexsort((-frr, far))
    return far[order], frr[order]


def thin_curve(x: np.ndarray, y: np.ndarray, cells: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Drop points that fall in the same cell of a `cells` x `cells` grid over the plotted range as
    their predecessor: invisible at any sensible resolution, but a 90M-pair curve would otherwise make
    SVG/PDF files huge and slow. The first and last points are always kept."""
    if len(x) <= 2 * cells:
        return x, y
    fx, fy = np.isfinite(x), np.isfinite(y)
    if not (fx.any() and fy.any()):
        return x, y

    def cell(v: np.ndarray, ok: np.ndarray) -> np.ndarray:
        lo, hi = v[ok].min(), v[ok].max()
        return np.floor((np.where(ok, v, lo) - lo) / ((hi - lo) or 1.0) * cells).astype(np.int64)

    cx, cy = cell(x, fx), cell(y, fy)
    keep = np.ones(len(x), bool)
    keep[1:-1] = (np.diff(cx)[:-1] != 0) | (np.diff(cy)[:-1] != 0)
    # also keep the point before each change, so staircase corners stay where they are
    keep[:-1] |= keep[1:]
    return x[keep], y[keep]


@dataclass(frozen=True)
class _Axes:
    kind: str
    lo_x: float
    lo_y: float
    hi: float

    def tx(self, v: np.ndarray | float) -> np.ndarray:
        return probit(v) if self.kind == "probit" else np.asarray(v, dtype=np.float64)


def _det_limits(runs: Sequence[RunData], mark_fars: Sequence[float]) -> tuple[float, float, float]:
    """Axis range: from the smallest informative FAR/FRR (or marked target) up to 50 % or more."""
    lo_x = min([*(r.min_far for r in runs if r.min_far), *mark_fars, 1e-3])
    lo_y_candidates = [1.0 / r.n_genuine for r in runs if r.n_genuine]
    lo_y = min([*lo_y_candidates, 1e-3])
    hi = 0.5
    for r in runs:
        if r.det_far is None:
            continue
        far, frr = _positive_curve(r.det_far, r.det_frr)
        if len(far):
            frr_at_lo = frr[far >= lo_x]
            if len(frr_at_lo):
                hi = max(hi, float(frr_at_lo[0]))
    hi = min(0.99, hi) if hi > 0.5 else 0.5
    return max(lo_x / 2, 1e-7), max(lo_y / 2, 1e-7), hi


def _limit_lines(ax: plt.Axes, runs: Sequence[RunData], tx) -> None:
    """A dotted vertical at FAR = 1/#impostors per distinct impostor count: in the run's colour when
    one run has it, grey when several share it."""
    owners: dict[float, list[int]] = {}
    for i, r in enumerate(runs):
        if r.min_far:
            owners.setdefault(r.min_far, []).append(i)
    for limit, idx in owners.items():
        color = run_style(idx[0])["color"] if len(idx) == 1 else "0.3"
        ax.axvline(float(tx(limit)), color=color, lw=0.9, ls=":", zorder=2)


def det_figure(runs: Sequence[RunData], axes: str = "probit", mark_fars: Sequence[float] = (1e-4, 1e-5)) -> Figure:
    """DET curves of all runs overlaid, EER points and the FAR targets in `mark_fars` marked."""
    if axes not in DET_AXES:
        raise ValueError(f"DET axes must be one of {', '.join(DET_AXES)}, not {axes!r}")
    with figure_style():
        fig, ax = plt.subplots(figsize=(6.4, 5.6))
        lo_x, lo_y, hi = _det_limits(runs, mark_fars)
        ax_t = _Axes(axes, lo_x, lo_y, hi)
        notes: list[str] = []
        unmeasurable: dict[tuple[int | None, float], list[str]] = {}
        markers = ("s", "^", "v", "D", "P")
        for target in mark_fars:
            ax.axvline(float(ax_t.tx(target)), color="0.55", lw=0.8, ls=(0, (4, 3)), zorder=1)
            ax.annotate(f"FAR={probability_label(target)}", (float(ax_t.tx(target)), 0.0),
                        xycoords=("data", "axes fraction"), xytext=(2, 4), textcoords="offset points",
                        fontsize=7, color="0.4", rotation=90)
        diag = np.geomspace(min(lo_x, lo_y), hi, 200)
        ax.plot(ax_t.tx(diag), ax_t.tx(diag), color="0.75", lw=0.7, zorder=1)
        _limit_lines(ax, runs, ax_t.tx)
        for i, r in enumerate(runs):
            st = run_style(i)
            if r.det_far is None or r.det_frr is None:
                notes.append(f"{r.label}: no DET points in its verify output")
                continue
            far, frr = _positive_curve(r.det_far, r.det_frr)
            if not len(far):
                notes.append(f"{r.label}: DET curve has no point with 0 < FAR, FRR < 1 (nothing to draw)")
            label = r.label if r.eer is None else f"{r.label} (EER {100 * r.eer:.2f}%)"
            ax.plot(*thin_curve(ax_t.tx(far), ax_t.tx(frr)), lw=1.4, label=label, zorder=3, **st)
            if r.eer is not None and 0 < r.eer < 1:
                ax.plot(ax_t.tx(r.eer), ax_t.tx(r.eer), "o", ms=5, mfc="white", mec=st["color"], mew=1.3, zorder=4)
            for t_i, target in enumerate(mark_fars):
                p = r.point(target)
                if p is None:
                    continue
                if not p.measurable or p.far is None or p.frr is None or p.far <= 0:
                    unmeasurable.setdefault((r.n_impostor, target), []).append(r.label)
                    continue
                if 0 < p.frr < 1:
                    ax.plot(ax_t.tx(p.far), ax_t.tx(p.frr), markers[t_i % len(markers)], ms=6, color=st["color"],
                            mec="black", mew=0.6, zorder=5)
        for (n_imp, target), labels in unmeasurable.items():
            many = f"{n_imp:,} impostors" if n_imp else "too few impostors"
            notes.append(f"FAR={probability_label(target)} not measurable with {many}: {', '.join(labels)}")
        _finish_det_axes(ax, ax_t)
        handles, _ = ax.get_legend_handles_labels()
        handles += [
            plt.Line2D([], [], marker="o", ls="none", mfc="white", mec="black", label="EER point"),
            *[plt.Line2D([], [], marker=markers[k % len(markers)], ls="none", color="0.5", mec="black",
                         label=f"operating point FAR={probability_label(t)}") for k, t in enumerate(mark_fars)],
            plt.Line2D([], [], color="0.3", ls=":", label="FAR = 1/#impostors (no information to the left)"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, framealpha=0.9)
        ax.set_title(f"DET ({'probit' if axes == 'probit' else 'log-log'} axes)")
        if notes:
            fig.text(0.01, -0.01, "\n".join(notes), fontsize=7, va="top", ha="left", color="#8a1c1c")
        return fig


def _finish_det_axes(ax: plt.Axes, a: _Axes) -> None:
    ax.set_xlabel("False accept rate (FAR / FMR)")
    ax.set_ylabel("False reject rate (FRR / FNMR)")
    if a.kind == "probit":
        ax.set_xlim(float(probit(a.lo_x)), float(probit(a.hi)))
        ax.set_ylim(float(probit(a.lo_y)), float(probit(a.hi)))
        xt = [p for p in _PROB_TICKS if a.lo_x <= p <= a.hi]
        yt = [p for p in _PROB_TICKS if a.lo_y <= p <= a.hi]
        ax.set_xticks(probit(np.array(xt)), [probability_label(p) for p in xt])
        ax.set_yticks(probit(np.array(yt)), [probability_label(p) for p in yt])
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(a.lo_x, a.hi)
        ax.set_ylim(a.lo_y, a.hi)


def roc_figure(runs: Sequence[RunData]) -> Figure:
    """ROC (TAR against FAR on a log axis, where face verification operates), AUC in the legend."""
    with figure_style():
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        notes: list[str] = []
        lo = min([*(r.min_far for r in runs if r.min_far), 1e-3])
        for i, r in enumerate(runs):
            st = run_style(i)
            far, tar = r.roc_far, r.roc_tar
            if (far is None or tar is None) and r.det_far is not None:
                far, tar = r.det_far, 1.0 - np.asarray(r.det_frr, dtype=np.float64)
            if far is None or tar is None:
                notes.append(f"{r.label}: no ROC points in its verify output")
                continue
            far = np.asarray(far, dtype=np.float64)
            tar = np.asarray(tar, dtype=np.float64)
            keep = far > 0
            order = np.lexsort((tar[keep], far[keep]))
            label = r.label if r.auc is None else f"{r.label} (AUC {r.auc:.4f})"
            ax.plot(*thin_curve(np.log10(far[keep][order]), tar[keep][order]), lw=1.4, label=label, **st)
        _limit_lines(ax, runs, np.log10)
        ax.set_xlim(np.log10(max(lo / 2, 1e-7)), 0.0)
        ticks = [p for p in (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0) if p >= max(lo / 2, 1e-7)]
        ax.set_xticks(np.log10(ticks), [probability_label(p) if p < 1 else "1" for p in ticks])
        ax.set_xlabel("False accept rate (FAR, log scale)")
        ax.set_ylabel("True accept rate (TAR = 1 - FRR)")
        ax.set_title("ROC (dotted: FAR = 1/#impostors)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7)
        if notes:
            fig.text(0.01, -0.01, "\n".join(notes), fontsize=7, va="top", ha="left", color="#8a1c1c")
        return fig


# ---- score histograms ---------------------------------------------------------------------------

def coarsen_histograms(edges: np.ndarray, *hists: np.ndarray, min_bins: int = 20
                       ) -> tuple[np.ndarray, ...]:
    """Merge groups of k adjacent bins (exact: counts add) so the smaller class has about 2*sqrt(n)
    bins; 600 genuine scores in 200 bins would show mostly noise."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = [np.asarray(h, dtype=np.int64) for h in hists]
    nbins = len(edges) - 1
    smallest = min(int(h.sum()) for h in counts) if counts else 0
    target = max(min_bins, int(2 * np.sqrt(max(smallest, 1))))
    k = max(1, nbins // target)
    if k == 1:
        return (edges, *counts)
    starts = np.arange(0, nbins, k)
    new_edges = np.append(edges[starts], edges[-1])
    return (new_edges, *[np.add.reduceat(h, starts) for h in counts])


def score_histogram_figure(label: str, edges: np.ndarray, hist_genuine: np.ndarray, hist_impostor: np.ndarray,
                           thresholds: dict[str, float], intersection: float | None, color_index: int = 0,
                           score_name: str = "score") -> Figure:
    """Genuine vs impostor score densities from histograms over all comparisons (each class
    normalised to area 1: they differ in size by orders of magnitude), with the chosen threshold(s)
    and the density-intersection threshold drawn."""
    edges, hist_genuine, hist_impostor = coarsen_histograms(edges, hist_genuine, hist_impostor)
    widths = np.diff(edges)
    with figure_style():
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for counts, color, name in ((hist_impostor, "#d62728", "impostor"), (hist_genuine, "#1f77b4", "genuine")):
            counts = np.asarray(counts, dtype=np.float64)
            total = counts.sum()
            dens = counts / (total * widths) if total > 0 else counts
            ax.stairs(dens, edges, fill=True, alpha=0.45, color=color, label=f"{name} (n={int(total):,})")
            ax.stairs(dens, edges, color=color, lw=0.8)
        styles = ("-", "--", "-.")
        for k, (name, t) in enumerate(thresholds.items()):
            ax.axvline(t, color="black", lw=1.2, ls=styles[k % len(styles)], label=f"{name}: {t:.4g}")
        if intersection is not None:
            ax.axvline(intersection, color="#2ca02c", lw=1.4, ls=":", label=f"density intersection: {intersection:.4g}")
        ax.set_xlabel(f"{score_name} (higher = more likely the same person)")
        ax.set_ylabel("density")
        ax.set_title(f"Score distributions: {label}", color=run_style(color_index)["color"])
        ax.legend(fontsize=7, loc="upper left")
        return fig


# ---- training curves ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Panel:
    """One training-curve panel: which history keys it plots and how the y axis is read."""

    title: str
    keys: tuple[str, ...]
    ylabel: str
    percent: bool = False
    relative: bool = False  # each run's curve divided by its first value (runs whose first value is <= 0 left out)


def training_curves_figure(histories: Sequence[tuple[str, int, list[dict[str, float]]]],
                           panels: Sequence[Panel], title: str | None = None) -> Figure | None:
    """Per-epoch curves of several runs overlaid: one panel per quantity, one colour per run
    (`(label, run index, history)` so colours match the other figures), one legend of runs for the
    whole figure; a panel with several keys (FRR at several FARs, loss components) tells them apart
    by line style. Panels no run has are left out; None when nothing is left."""
    present = [p for p in panels if any(any(k in rec for rec in h for k in p.keys) for _, _, h in histories)]
    if not present:
        return None
    key_styles = ("-", "--", "-.", ":", (0, (1, 3)), (0, (5, 1, 1, 1, 1, 1)))
    markers = (".", "x", "+", "1", "2", "3")
    with figure_style():
        ncols = 2 if len(present) > 1 else 1
        nrows = (len(present) + ncols - 1) // ncols
        fig, axs = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 2.7 * nrows + 0.4), squeeze=False)
        for ax in axs.flat[len(present):]:
            ax.set_visible(False)
        drawn: dict[str, object] = {}
        for ax, panel in zip(axs.flat, present, strict=False):
            scale = 100.0 if panel.percent else 1.0
            for label, idx, hist in histories:
                st = run_style(idx)
                for k_i, key in enumerate(panel.keys):
                    pts = [(rec["epoch"], rec[key]) for rec in hist if key in rec and "epoch" in rec]
                    if not pts:
                        continue
                    x, y = np.array(pts, dtype=np.float64).T
                    if panel.relative:
                        if not (np.isfinite(y[0]) and y[0] > 0):
                            continue
                        y = y / y[0]
                    (line,) = ax.plot(x, y * scale, color=st["color"], ls=key_styles[k_i % len(key_styles)],
                                      marker=markers[k_i % len(markers)], ms=4, lw=1.2)
                    drawn.setdefault(label, line)
            if len(panel.keys) > 1:
                ax.legend(handles=[plt.Line2D([], [], color="0.35", ls=key_styles[k % len(key_styles)],
                                              marker=markers[k % len(markers)], label="/".join(key.split("/")[1:]))
                                   for k, key in enumerate(panel.keys)], fontsize=6, loc="best")
            ax.set_title(panel.title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            single = panel.keys[0].split("/")[-1] if len(panel.keys) == 1 else ""
            if single and panel.ylabel and single not in panel.ylabel:
                ax.set_ylabel(f"{single} ({panel.ylabel})")
            else:
                ax.set_ylabel(panel.ylabel or single)
        if len(histories) > 1:  # a legend of runs; one run is named by the title
            fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
            fig.legend(handles=[plt.Line2D([], [], color=run_style(idx)["color"], lw=2, label=label)
                                for label, idx, _ in histories if label in drawn],
                       loc="upper center", ncol=min(4, len(drawn)) or 1, fontsize=8, frameon=False,
                       bbox_to_anchor=(0.5, 1.0))
        else:
            fig.tight_layout()
        if title:
            fig.suptitle(title, y=1.0 + 0.25 / fig.get_figheight(), fontsize=10)
        return fig


# ---- example pairs ------------------------------------------------------------------------------

@dataclass
class PairExample:
    """One comparison shown in the example grid; images are HxW or HxWx3 uint8 arrays (None: unreadable)."""

    image_a: np.ndarray | None
    image_b: np.ndarray | None
    key_a: str
    key_b: str
    score: float
    same: bool
    accepted: bool

    @property
    def outcome(self) -> str:
        if self.accepted:
            return "correct accept" if self.same else "FALSE ACCEPT"
        return "FALSE REJECT" if self.same else "correct reject"

    @property
    def correct(self) -> bool:
        return self.accepted == self.same


def _tile(img: np.ndarray | None, size: int) -> np.ndarray:
    """An image as a size x size RGB uint8 tile (letterboxed on grey; grey with a cross if unreadable)."""
    tile = np.full((size, size, 3), 200, np.uint8)
    if img is None:
        idx = np.arange(size)
        tile[idx, idx] = tile[idx, size - 1 - idx] = 120
        return tile
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    h, w = a.shape[:2]
    scale = size / max(h, w)
    if scale != 1:
        from PIL import Image

        a = np.asarray(Image.fromarray(a[:, :, :3].astype(np.uint8)).resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS))
    h, w = a.shape[:2]
    y0, x0 = (size - h) // 2, (size - w) // 2
    tile[y0:y0 + h, x0:x0 + w] = a[:, :, :3]
    return tile


def _short(key: str, n: int = 21) -> str:
    name = key.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return name if len(name) <= n else name[: n - 1] + "…"


def pair_grid_figure(title: str, examples: Sequence[PairExample], threshold: float, ncols: int = 4,
                     tile: int = 96) -> Figure:
    """Example pairs, two faces side by side per cell with a frame in the outcome's colour (red: wrong
    decision, green: right), captioned with outcome and score at the given threshold.

    One mosaic image in one axes (not two axes per pair): drawing dozens of axes is what makes
    matplotlib slow."""
    n = max(1, len(examples))
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    border, gap, cap = 4, 12, 26  # frame width, space between cells, caption band (pixels)
    cell_w, cell_h = 2 * tile + 2 * border + 2, tile + 2 * border
    width = ncols * cell_w + (ncols + 1) * gap
    height = nrows * (cell_h + cap) + (nrows + 1) * gap
    mosaic = np.full((height, width, 3), 255, np.uint8)
    captions = []
    for k, ex in enumerate(examples):
        r, c = divmod(k, ncols)
        x0 = gap + c * (cell_w + gap)
        y0 = gap + r * (cell_h + cap + gap) + cap
        rgb = (26, 127, 55) if ex.correct else (198, 40, 40)
        mosaic[y0:y0 + cell_h, x0:x0 + cell_w] = rgb
        mosaic[y0 + border:y0 + border + tile, x0 + border:x0 + border + tile] = _tile(ex.image_a, tile)
        xb = x0 + border + tile + 2
        mosaic[y0 + border:y0 + border + tile, xb:xb + tile] = _tile(ex.image_b, tile)
        color = "#{:02x}{:02x}{:02x}".format(*rgb)
        captions.append((x0, y0 - 13, f"{ex.outcome}  s={ex.score:.3f}", color, 7.5, "bold"))
        names = f"{_short(ex.key_a)} | {_short(ex.key_b)}"
        captions.append((x0, y0 - 2, names, "#444444", 6.0, "normal"))
    with figure_style():
        dpi = 100
        fig = plt.figure(figsize=(width / dpi, (height + 30) / dpi), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, height / (height + 30)))
        ax.imshow(mosaic, interpolation="nearest")
        ax.set_axis_off()
        for x, y, text, color, size, weight in captions:
            ax.text(x, y, text, fontsize=size, color=color, ha="left", va="bottom", fontweight=weight)
        if not examples:
            ax.text(gap, height / 2, "no pairs to show", fontsize=9)
        fig.suptitle(f"{title} (threshold {threshold:.4g})", fontsize=9, y=1 - 4 / (height + 30), va="top")
        return fig
