"""The report stage: `make_report(inputs, out_dir, options)`.

Reads verify outputs and training runs (`loading`), fills missing bootstrap intervals and the
paired comparison against a baseline (`paired`), draws every figure (`figures`), renders the
tables and pages (`tables`, `html`), and writes the report folder:

    report.html            one self-contained page (figures embedded, no external references)
    report.md              the same as Markdown, figures linked relative to the folder
    table.md, table.csv, table.html       the comparison table (CSV: full-precision values)
    paired.csv             run - baseline differences with their CIs (when there is a baseline)
    figures/               det.png, roc.png, scores_<run>.png, training_curves.png, pairs_<run>.png,
                           recon_<run>_<image>.png; each with .svg/.pdf as asked

Why the whole folder is built beside the destination and renamed into place: a report is a set
of files that refer to each other; a killed run must leave either the previous complete report
or the new complete one, never a mix. An existing destination that does not look like a report
(it has files but no report.html) is refused rather than replaced.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fvtool import __version__
from fvtool.atomic import TMP_MARK, write_text
from fvtool.console import console, progress
from fvtool.data.images import load_rgb
from fvtool.data.scan import safe_join
from fvtool.errors import FvtoolError, InputError
from fvtool.reporting import figures as F
from fvtool.reporting import loading as L
from fvtool.reporting.html import FigureItem, ReportDocument, Section, render_html, render_markdown
from fvtool.reporting.paired import (
    MAX_COMPARISONS,
    PairedResult,
    compare_to_baseline,
    fill_bootstrap_cis,
    fill_operating_points,
    n_comparisons,
)
from fvtool.reporting.records import RunData
from fvtool.reporting.tables import (
    DEFAULT_FARS,
    Table,
    comparison_table,
    far_name,
    identify_classifiers,
    paired_table,
    protocol_group,
    protocol_table,
    to_csv,
    to_html,
    to_markdown,
    training_table,
)
from fvtool.workspace import Workspace

PAIR_IMAGE_SIZE = 112


@dataclass
class ReportOptions:
    baseline: str | None = None  # label; default: the first run of each protocol
    det_axes: str = "probit"
    labels: Sequence[str] = ()
    fars: Sequence[float] = DEFAULT_FARS  # table columns
    mark_fars: Sequence[float] = (1e-4, 1e-5)  # marked on the DET
    threshold: str = "eer"  # "eer" or "far=<FAR>": histograms and example pairs
    examples: int = 16
    data_root: Path | None = None
    formats: Sequence[str] = ("png", "svg")
    bootstrap: int = 1000
    seed: int = 0
    title: str = "fvtool report"
    show_progress: bool = True
    # `fvtool identify` JSONs/folders shown beside the rows; None: <workspace>/identify and the
    # identify/ folder beside each verify output's folder
    identify: Sequence[Path] | None = None


@dataclass
class ReportResult:
    out_dir: Path
    html: Path
    markdown: Path
    table_csv: Path | None
    figures: list[Path]
    runs: list[RunData]
    baselines: list[str]
    paired: list[PairedResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fars: Sequence[float] = DEFAULT_FARS

    def summary(self) -> str:
        """The end summary: one line per run with the headline numbers, then where the files are."""
        lines = [f"report of {len(self.runs)} run(s)"
                 + (f", baseline {', '.join(self.baselines)}" if self.baselines else "")]
        for r in self.runs:
            bits = []
            if r.accuracy_mean is not None:
                bits.append(f"acc {100 * r.accuracy_mean:.2f}%")
            if r.eer is not None:
                bits.append(f"EER {100 * r.eer:.2f}%")
            for f in self.fars:
                p = r.point(f)
                if p is not None:
                    bits.append(f"FRR@{far_name(f)} " + (f"{100 * p.frr:.2f}%" if p.measurable and p.frr is not None
                                                          else "n/m"))
            bits += [f"closed-set top-1 {c} {100 * r.identify[c].top1:.2f}%" for c in identify_classifiers([r])
                     if r.identify[c].top1 is not None]
            if not bits and r.history:
                bits.append(f"training curves only ({len(r.history)} records)")
            lines.append(f"  {r.label}: {', '.join(bits)}")
        lines.append(f"{len(self.figures)} figure file(s) in {self.out_dir / 'figures'}")
        lines.append(f"open {self.html}")
        return "\n".join(lines)


# ---- inputs -------------------------------------------------------------------------------------

def _workspace_runs(ws: Workspace) -> list[Path]:
    d = ws.dir("train")
    return sorted(p.resolve() for p in d.iterdir() if p.is_dir() and L.is_run_dir(p)) if d.is_dir() else []


def load_runs(inputs: Sequence[str | Path], options: ReportOptions) -> tuple[list[RunData], list[str]]:
    """RunData for every verify output (linked to its training run) and every unlinked run folder."""
    ws = Workspace.current()
    warnings: list[str] = []
    if not inputs:
        vdir = ws.dir("verify")
        if not vdir.is_dir() or not any(L.is_verify_dir(p) for p in vdir.iterdir() if p.is_dir()):
            raise InputError(f"no verify outputs in {vdir}: run `fvtool verify` first or pass verify/run folders "
                             "to `fvtool report`")
        inputs = [vdir]
    found = L.expand_inputs(inputs)
    if not found.verify_dirs and not found.run_dirs:
        raise InputError(f"nothing to report in {', '.join(map(str, inputs))}")
    candidates = list(dict.fromkeys([*found.run_dirs, *_workspace_runs(ws)]))
    runs: list[RunData] = []
    linked: set[Path] = set()
    for v in found.verify_dirs:
        r = L.read_verify_dir(v)
        run_dir = L.linked_run_dir(r, candidates)
        if run_dir is not None:
            try:
                L.fill_from_run(r, run_dir)
                linked.add(run_dir)
            except FvtoolError as e:
                warnings.append(f"{v.name}: its training run {run_dir} is unreadable ({e}); training facts left out")
        runs.append(r)
    for run_dir in found.run_dirs:
        if run_dir in linked:
            continue
        r = RunData(label=run_dir.name)
        L.fill_from_run(r, run_dir)
        runs.append(r)
    protocols = {r.protocol: r.protocol_kind for r in runs if r.protocol}
    aliases = L.protocol_aliases(list(protocols), list(protocols.values()))
    for r in runs:
        r.protocol_alias = aliases.get(r.protocol) if r.protocol else None
    configs = [L.run_config_fields(r.run_dir) if r.run_dir else {} for r in runs]
    names = [(r.verify_dir or r.run_dir).name for r in runs]
    base = L.automatic_labels(configs, names, unique=False)
    with_protocol = [dict(c, protocol=r.protocol_alias) if c and r.protocol else c
                     for c, r in zip(configs, runs, strict=True)]
    labels = L.apply_label_overrides(L.automatic_labels(with_protocol, names), names, options.labels)
    for r, lab, b in zip(runs, labels, base, strict=True):
        r.label, r.base_label = lab, b
    explicit = options.identify is not None
    sources = list(options.identify or ()) if explicit else list(dict.fromkeys(
        [ws.dir("identify"), *(v.parent.parent / "identify" for v in found.verify_dirs)]))
    warnings += L.attach_identify([r for r in runs if r.verify_dir is not None], sources, explicit)
    order = list(dict.fromkeys(protocol_group(r) for r in runs if r.verify_dir is not None))
    runs.sort(key=lambda r: order.index(protocol_group(r)) if r.verify_dir is not None else len(order))
    return runs, warnings


def pick_baselines(runs: list[RunData], wanted: str | None) -> dict[str, RunData]:
    """The baseline of each protocol (runs are paired only within a protocol): the run named `wanted`
    (its label, its label without the protocol part, or its verify folder name), by default the first
    run of each protocol that has at least two runs."""
    groups: dict[str, list[RunData]] = {}
    for r in runs:
        if r.verify_dir is not None:
            groups.setdefault(protocol_group(r), []).append(r)
    if wanted is None:
        return {g: rs[0] for g, rs in groups.items() if len(rs) > 1}
    out: dict[str, RunData] = {}
    for g, rs in groups.items():
        hit = [r for r in rs if wanted in (r.label, r.base_label, r.verify_dir.name)]
        if hit:
            out[g] = hit[0]
    if not out:
        named = [r for r in runs if wanted in (r.label, r.base_label, r.run_dir.name if r.run_dir else None)]
        if named:
            raise InputError(f"--baseline {wanted!r} has no verify output to compare with")
        raise InputError(f"--baseline {wanted!r} is not one of the runs: {', '.join(r.label for r in runs)}")
    return out


def _threshold(r: RunData, spec: str) -> tuple[str, float | None, str | None]:
    """(name, threshold, warning) for the histograms and example pairs."""
    s = spec.strip().lower()
    if s == "eer":
        return "EER threshold", r.eer_threshold, None
    if s.startswith("far="):
        try:
            f = float(s[4:])
        except ValueError:
            raise InputError(f"--threshold {spec!r}: write eer or far=<FAR>, e.g. far=1e-3") from None
        p = r.point(f)
        if p is not None and p.measurable and p.threshold is not None:
            return f"FAR={far_name(f)} threshold", p.threshold, None
        why = "not in its verify output" if p is None else "not measurable"
        return "EER threshold", r.eer_threshold, f"{r.label}: FAR={far_name(f)} is {why}; EER threshold used instead"
    raise InputError(f"--threshold {spec!r}: write eer or far=<FAR>, e.g. far=1e-3")


# ---- figures ------------------------------------------------------------------------------------

def _slug(i: int, label: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40]
    return f"{i + 1:02d}-{s or 'run'}"


def _training_panels(runs: Sequence[RunData]) -> list[F.Panel]:
    """The comparison panels: loss, train accuracy, validation accuracy / EER / FRR at each FAR, lr."""
    keys = {k for r in runs for rec in r.history for k in rec}
    frr = tuple(sorted((k for k in keys if k.startswith("val/frr@far=")), key=lambda k: -float(k.split("=")[1])))
    # relative: losses differ by orders of magnitude between loss functions (ArcFace 36-54 next to triplet's
    # 0.2 flattened every other curve); each run's absolute loss is in its own figure (`_component_panels`)
    return [
        F.Panel("Training loss / its first-epoch value", ("loss",), "x first epoch", relative=True),
        F.Panel("Train accuracy (classifier head)", ("train_accuracy",), "%", True),
        F.Panel("Validation balanced accuracy (1 - HTER, best threshold)", ("val/balanced_accuracy",), "%", True),
        F.Panel("Validation EER", ("val/eer", *sorted(k for k in keys if k.startswith("val/") and k.endswith("/eer")
                                                    and k.count("/") == 2)), "%", True),  # + --val-target sets
        F.Panel(f"Validation FRR at FAR={frr[0].split('=')[1]}" if len(frr) == 1 else "Validation FRR at FAR",
                frr, "%", True),
        F.Panel("Learning rate", ("lr",), "lr"),
    ]


def _component_panels(r: RunData) -> list[F.Panel]:
    """Per-run panels, each on its own y axis: the training loss, its components (when there is more
    than one) and the loss statistics. One axis per quantity because their scales differ by orders
    of magnitude (n_triplets = 128 flattened the fraction of active triplets next to it)."""
    keys = sorted({k for rec in r.history for k in rec})
    comps = [k for k in keys if k.startswith("components/")]
    stats = [k for k in keys if k.startswith("stats/")]
    panels = [F.Panel("Training loss", ("loss",), "loss")] if "loss" in keys else []
    if "val/val_loss" in keys:  # --val-holdout: the source's "Train vs. Validation Loss" figure (study 2)
        panels.append(F.Panel("Training and held-out validation loss", ("loss", "val/val_loss"), "loss"))
    if len(comps) > 1:
        panels += [F.Panel(f"Loss term: {k.split('/', 1)[1]}", (k,), "") for k in comps]
    panels += [F.Panel(f"Statistic: {k.split('/', 1)[1]}", (k,), "") for k in stats]
    return panels


def select_examples(r: RunData, threshold: float, n: int) -> list[tuple[int, int, float, bool]]:
    """(key a, key b, score, same) for the grid: hardest false accepts (highest impostor scores at or
    above the threshold) and hardest false rejects (lowest genuine scores below it) first, half each
    when both exist, then the closest correct decisions to fill the grid."""
    s = r.scores
    if s is None or n <= 0:
        return []
    fa = np.flatnonzero(s.impostor >= threshold)
    fa = fa[np.argsort(-s.impostor[fa], kind="stable")]
    fr = np.flatnonzero(s.genuine < threshold)
    fr = fr[np.argsort(s.genuine[fr], kind="stable")]
    n_fa = min(len(fa), max(n // 2, n - len(fr)))
    n_fr = min(len(fr), n - n_fa)
    out = [(int(s.imp_a[i]), int(s.imp_b[i]), float(s.impostor[i]), False) for i in fa[:n_fa]]
    out += [(int(s.gen_a[i]), int(s.gen_b[i]), float(s.genuine[i]), True) for i in fr[:n_fr]]
    left = n - len(out)
    if left > 0:  # correct decisions nearest the threshold: accepted genuines and rejected impostors
        ta = np.flatnonzero(s.genuine >= threshold)
        ta = ta[np.argsort(s.genuine[ta], kind="stable")]
        tr = np.flatnonzero(s.impostor < threshold)
        tr = tr[np.argsort(-s.impostor[tr], kind="stable")]
        extra = [(int(s.gen_a[i]), int(s.gen_b[i]), float(s.genuine[i]), True) for i in ta[: (left + 1) // 2]]
        extra += [(int(s.imp_a[i]), int(s.imp_b[i]), float(s.impostor[i]), False) for i in tr[: left // 2]]
        if len(extra) < left:
            extra = ([(int(s.gen_a[i]), int(s.gen_b[i]), float(s.genuine[i]), True) for i in ta[:left]] +
                     [(int(s.imp_a[i]), int(s.imp_b[i]), float(s.impostor[i]), False) for i in tr[:left]])[:left]
        out += extra
    return out


def _load_face(root: Path, key: str) -> np.ndarray | None:
    try:
        img = load_rgb(safe_join(root, key))
    except (FvtoolError, OSError):
        return None
    img.thumbnail((PAIR_IMAGE_SIZE, PAIR_IMAGE_SIZE))
    return np.asarray(img)


def _pair_grid(r: RunData, threshold: float, thr_name: str, n: int, data_root: Path | None
               ) -> tuple[object | None, str | None]:
    root = data_root or r.data_root
    if r.scores is None:
        return None, f"{r.label}: no scores file in its verify output; no example pairs"
    if root is None or not root.is_dir():
        return None, (f"{r.label}: the images are not at the recorded data root {root}; pass --data-root to show "
                      "example pairs")
    keys = r.scores.keys
    examples = []
    unreadable = 0
    for a, b, score, same in select_examples(r, threshold, n):
        ia, ib = _load_face(root, str(keys[a])), _load_face(root, str(keys[b]))
        unreadable += (ia is None) + (ib is None)
        examples.append(F.PairExample(ia, ib, str(keys[a]), str(keys[b]), score, same, score >= threshold))
    fig = F.pair_grid_figure(f"{r.label}: hardest errors at the {thr_name}", examples, threshold)
    warn = f"{r.label}: {unreadable} example image(s) unreadable under {root}" if unreadable else None
    return fig, warn


def _recon_groups(paths: Sequence[Path]) -> list[Path]:
    """Reconstruction/sample grids to show: the first and the last epoch of each kind."""
    groups: dict[str, list[Path]] = {}
    for p in paths:
        groups.setdefault(re.sub(r"_?epoch\d+$", "", p.stem), []).append(p)
    shown: list[Path] = []
    for _, ps in sorted(groups.items()):
        ps = sorted(ps)
        shown += [ps[0]] if len(ps) == 1 else [ps[0], ps[-1]]
    return shown


def _valid_png(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def _training_label(runs: Sequence[RunData], i: int, by_run: dict[Path, list[int]]) -> str:
    """A run's name in training figures: without the protocol part when several verify outputs share it."""
    r = runs[i]
    shared = r.run_dir is not None and len(by_run.get(r.run_dir, [])) > 1
    return (r.base_label or r.label) if shared else r.label


def build_figures(runs: list[RunData], fig_dir: Path, options: ReportOptions, warnings: list[str]
                  ) -> tuple[list[FigureItem], dict[str, list[FigureItem]]]:
    """All figures: (comparison figures, per-run figures by label)."""
    fmts = tuple(options.formats)
    overall: list[FigureItem] = []
    per_run: dict[str, list[FigureItem]] = {r.label: [] for r in runs}
    verified = [r for r in runs if r.verify_dir is not None]
    if verified:
        det = F.det_figure(verified, options.det_axes, options.mark_fars)
        overall.append(FigureItem(
            f"DET curves ({'probit' if options.det_axes == 'probit' else 'log-log'} axes)",
            F.save_figure(det, fig_dir / "det", fmts),
            "FRR against FAR for every run. Circles: EER points; filled markers: the operating points at "
            f"FAR = {', '.join(far_name(f) for f in options.mark_fars)}; dotted verticals: FAR = 1/#impostors, "
            "left of which a curve carries no information."))
        overall.append(FigureItem("ROC curves", F.save_figure(F.roc_figure(verified), fig_dir / "roc", fmts),
                                  "True accept rate against FAR (log axis), AUC in the legend."))
    # one training run can be behind several verify outputs (one per protocol): draw its curves once
    by_run: dict[Path, list[int]] = {}
    for i, r in enumerate(runs):
        if r.run_dir is not None:
            by_run.setdefault(r.run_dir, []).append(i)
    first_of_run = {idx[0] for idx in by_run.values()}
    with_history = [(_training_label(runs, i, by_run), i, r.history) for i, r in enumerate(runs)
                    if r.history and (r.run_dir is None or i in first_of_run)]
    if with_history:
        fig = F.training_curves_figure(with_history, _training_panels(runs))
        if fig is not None:
            overall.append(FigureItem("Training curves", F.save_figure(fig, fig_dir / "training_curves", fmts),
                                      "Per-epoch history of each run (validation at the run's evaluation points)."))
    for i, r in enumerate(runs):
        slug = _slug(i, r.label)
        comp_panels = _component_panels(r)
        if r.history and comp_panels and (r.run_dir is None or i in first_of_run):
            name = _training_label(runs, i, by_run)
            fig = F.training_curves_figure([(name, i, r.history)], comp_panels,
                                           title=f"{name}: training loss, terms and statistics")
            if fig is not None:
                per_run[r.label].append(FigureItem(
                    f"{r.label}: training loss, its terms and statistics",
                    F.save_figure(fig, fig_dir / f"components_{slug}", fmts),
                    "Per-epoch means of the loss and of the terms and statistics the run logged, each on its own "
                    "axis."))
        thr_name, thr, warn = _threshold(r, options.threshold)
        if warn:
            warnings.append(warn)
        if r.hist_edges is not None and r.hist_genuine is not None and r.hist_impostor is not None:
            thresholds = {thr_name: thr} if thr is not None else {}
            fig = F.score_histogram_figure(r.label, r.hist_edges, r.hist_genuine, r.hist_impostor, thresholds,
                                           r.intersection_threshold, color_index=i,
                                           score_name="cosine similarity" if r.metric == "cosine" else "score")
            per_run[r.label].append(FigureItem(
                f"{r.label}: score distributions", F.save_figure(fig, fig_dir / f"scores_{slug}", fmts),
                "Genuine and impostor score densities over all comparisons; black: the "
                + (f"{thr_name} ({thr:.4g})" if thr is not None else "chosen threshold (none available)")
                + ", green dotted: where the densities intersect (verify's intersection threshold)."))
        if options.examples > 0 and thr is not None and r.scores is not None:
            fig, warn = _pair_grid(r, thr, thr_name, options.examples, options.data_root)
            if warn:
                warnings.append(warn)
            if fig is not None:
                per_run[r.label].append(FigureItem(
                    f"{r.label}: example pairs", F.save_figure(fig, fig_dir / f"pairs_{slug}", fmts),
                    "Hardest false accepts (highest-scoring impostor pairs) and false rejects (lowest-scoring "
                    "genuine pairs) first, then the correct decisions nearest the threshold."))
        for src in _recon_groups(r.recon_images):
            if not _valid_png(src):
                warnings.append(f"{r.label}: {src} is not a readable PNG; left out")
                continue
            dest = fig_dir / f"recon_{slug}_{src.stem}.png"
            shutil.copyfile(src, dest)
            what = "samples from the prior" if src.stem.startswith("samples") else "inputs (top) and reconstructions"
            per_run[r.label].append(FigureItem(f"{r.label}: {src.stem}", {"png": dest},
                                               f"{what}, from {src.parent.name}/{src.name} of the run folder."))
    return overall, per_run


# ---- the stage ----------------------------------------------------------------------------------

def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"report destination {out} is a file; choose a folder with -o")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.html").is_file():
        raise InputError(f"{out} exists and is not an fvtool report (no report.html); refusing to replace it, "
                         "choose another folder with -o")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` folder (old report removed only after the rename)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=TMP_MARK + "old-", dir=out.parent))
        os.replace(out, old / "report")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def make_report(inputs: Sequence[str | Path], out_dir: str | Path | None = None,
                options: ReportOptions | None = None) -> ReportResult:
    """Build the report folder from verify outputs / run folders and record it in the workspace."""
    opts = options or ReportOptions()
    if opts.det_axes not in F.DET_AXES:
        raise InputError(f"DET axes {opts.det_axes!r}: choose {' or '.join(F.DET_AXES)}")
    runs, warnings = load_runs(inputs, opts)
    ws = Workspace.current()
    out = Path(out_dir) if out_dir else ws.dir("report")
    out = out.resolve()
    _check_destination(out)
    baselines = pick_baselines(runs, opts.baseline)
    fars = tuple(opts.fars)
    for r in runs:
        added = fill_operating_points(r, fars)
        if added:
            r.notes.append(f"FRR at FAR {', '.join(far_name(f) for f in added)}: computed by the report from "
                           "the stored scores (verify's rule)")
    blind = {(r.protocol, r.n_impostor): r.min_far for r in runs
             if r.verify_dir is not None and r.min_far and all(f < r.min_far for f in fars)}
    for (proto, n_imp), lowest in blind.items():
        warnings.append(f"protocol {proto}: none of the FAR targets {', '.join(far_name(f) for f in fars)} is "
                        f"measurable with {n_imp:,} impostors (lowest {lowest:.1e}); add a larger one with --fars")

    # intervals where the verify output has none, then the paired comparison
    paired: list[PairedResult] = []
    need_ci = [r for r in runs if r.scores is not None and r.eer_ci is None and opts.bootstrap > 0]
    for r in [r for r in need_ci if n_comparisons(r.scores) > MAX_COMPARISONS]:
        need_ci.remove(r)
        warnings.append(f"{r.label}: no confidence intervals ({n_comparisons(r.scores):,} comparisons is more than the "
                        f"report bootstraps); run `fvtool verify --bootstrap {opts.bootstrap}` to get them")
    pairs = [(r, baselines[protocol_group(r)]) for r in runs
             if r.verify_dir is not None and protocol_group(r) in baselines and r is not baselines[protocol_group(r)]]
    if opts.bootstrap > 0 and (need_ci or pairs):
        bar = progress(disable=not opts.show_progress)
        with bar:
            for r in need_ci:
                task = bar.add_task(f"bootstrap {r.label}", total=opts.bootstrap, info="identities")
                if fill_bootstrap_cis(r, fars, opts.bootstrap, opts.seed, tick=lambda t=task: bar.advance(t)):
                    r.notes.append(f"CIs: identity bootstrap by the report ({opts.bootstrap} replicates, "
                                   f"seed {opts.seed})")
            for r, b in pairs:
                task = bar.add_task(f"paired {r.label}", total=opts.bootstrap, info=f"vs {b.label}")
                paired.append(compare_to_baseline(r, b, fars, opts.bootstrap, opts.seed,
                                                  tick=lambda t=task: bar.advance(t)))
    for p in paired:
        if p.note:
            warnings.append(f"paired comparison {p.label}: {p.note}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_MARK, dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make the renamed report private
    try:
        fig_dir = tmp / "figures"
        fig_dir.mkdir()
        overall, per_run = build_figures(runs, fig_dir, opts, warnings)
        verified = [r for r in runs if r.verify_dir is not None]
        table = comparison_table(verified, fars) if verified else None
        seen: set[Path] = set()
        trained = [r for r in runs if r.history and r.run_dir is not None
                   and not (r.run_dir in seen or seen.add(r.run_dir))]
        ttable = training_table(trained) if trained else None
        ptable = paired_table(paired, fars) if paired else None
        if table is not None:
            write_text(tmp / "table.md", to_markdown(table))
            write_text(tmp / "table.csv", to_csv(table))
            write_text(tmp / "table.html", to_html(table))
        if ttable is not None:
            write_text(tmp / "training.csv", to_csv(ttable))
        if ptable is not None:
            write_text(tmp / "paired.csv", to_csv(ptable))
        doc = _document(runs, table, ptable, ttable, overall, per_run, list(baselines.values()), opts, inputs)
        doc.sections[1:1] = _benchmark_sections(runs, verified, tmp, fig_dir, opts, inputs)
        write_text(tmp / "report.md", render_markdown(doc, tmp))
        write_text(tmp / "report.html", render_html(doc))
        figures = sorted(p.relative_to(tmp) for p in fig_dir.iterdir())
        _swap_into_place(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    ws.record("report", out)
    return ReportResult(out_dir=out, html=out / "report.html", markdown=out / "report.md",
                        table_csv=(out / "table.csv") if table is not None else None,
                        figures=[out / p for p in figures], runs=runs,
                        baselines=[b.label for b in baselines.values()], paired=paired, warnings=warnings,
                        fars=fars)


def _benchmark_sections(runs: list[RunData], verified: list[RunData], tmp: Path, fig_dir: Path,
                        opts: ReportOptions, inputs: Sequence[str | Path]) -> list[Section]:
    """IJB TAR@FAR table and open-set CMC/DIR (table + figure), when such results are among the inputs:
    open-set JSONs given as inputs or --identify, else those in the default identify folders."""
    from fvtool.reporting import benchmarks as B

    out = []
    ijb = B.ijb_table(verified)
    if ijb is not None:
        write_text(tmp / "ijb.csv", to_csv(ijb))
        out.append(Section(ijb.title, [ijb]))
    ws = Workspace.current()
    sources = [Path(p) for p in inputs if Path(p).suffix == ".json"] + list(opts.identify or ())
    if not sources:
        sources = list(dict.fromkeys([ws.dir("identify"), *(r.verify_dir.parent.parent / "identify"
                                                            for r in verified)]))
    results = B.read_open_set(sources)
    if results:
        t = B.open_set_table(results)
        write_text(tmp / "openset.csv", to_csv(t))
        fig = FigureItem("CMC curves", F.save_figure(B.cmc_figure(results), fig_dir / "cmc", tuple(opts.formats)),
                         "Identification rate of mated probes against rank (bob's cmc: ties count against).")
        out.append(Section(t.title, [t, fig]))
    return out


def _document(runs: list[RunData], table: Table | None, ptable: Table | None, ttable: Table | None,
              overall: list[FigureItem], per_run: dict[str, list[FigureItem]], baselines: list[RunData],
              opts: ReportOptions, inputs: Sequence[str | Path]) -> ReportDocument:
    verified = [r for r in runs if r.verify_dir is not None]
    protocols = sorted({f"{r.protocol_alias or r.protocol} ({r.n_genuine:,} genuine / {r.n_impostor:,} impostor)"
                        for r in verified if r.protocol and r.n_genuine is not None and r.n_impostor is not None})
    intro = [f"{len(verified)} verified run(s), {len(runs) - len(verified)} training-only run(s). "
             f"Protocol(s): {'; '.join(protocols) or 'none'}."]
    if baselines:
        intro.append(f"Baseline for the paired comparison: {', '.join(b.label for b in baselines)}"
                     + (" (one per protocol)." if len(baselines) > 1 else "."))
    by_note: dict[str, list[str]] = {}  # the same note for several runs (report-made CIs) is said once
    for r in runs:
        for n in r.notes:
            by_note.setdefault(n, []).append(r.label)
    notes = [f"{n} ({', '.join(labels)})." if len(labels) > 1 else f"{labels[0]}: {n}"
             for n, labels in by_note.items()]
    sections = [Section("Comparison", [table, protocol_table(verified), *notes])] if table is not None else []
    if ptable is not None:
        sections.append(Section(ptable.title, [ptable]))
    if ttable is not None:
        sections.append(Section(ttable.title, [ttable]))
    if overall:
        sections.append(Section("Figures", list(overall)))
    for r in runs:
        if per_run.get(r.label):
            sections.append(Section(f"Run: {r.label}", list(per_run[r.label])))
    sources = []
    for r in runs:
        parts = [f"{r.label}:"]
        if r.verify_dir:
            parts.append(f"verify {r.verify_dir}")
        if r.run_dir:
            parts.append(f"run {r.run_dir}")
        sources.append(" ".join(parts))
    sources.append(f"fvtool {__version__}; fvtool report {' '.join(map(str, inputs)) or '(workspace verify outputs)'}")
    return ReportDocument(opts.title, intro, sections, inputs=sources)


def print_warnings(warnings: Sequence[str]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning:[/] {w}")
