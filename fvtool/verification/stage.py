"""The verify stage: an embeddings file + a protocol -> metrics.json, scores, DET/ROC points.

Why one function (`verify`) with all the I/O: the metric modules stay pure (arrays in, numbers
out, tested against references), and everything about files, workspace defaults, failures to
acquire and error messages lives here, once. The output schema is documented in
docs/formats.md ("Verify output"); the report stage reads it.

Failure to acquire (FTA): an embedding whose `status` (from the alignment manifest) is not "ok"
came from an image where alignment failed (e.g. the LFW centre-crop fallback). Rule `include`
(default, the LFW/insightface convention that published numbers follow) scores those embeddings
like any other; rule `exclude` drops every comparison that involves one and also reports the
transaction-level rates of ISO/IEC 19795-1, FAR = FMR (1 - FTA_imp) and FRR = FTA_gen +
FNMR (1 - FTA_gen), where FTA_gen/FTA_imp are the fractions of genuine/impostor comparisons lost.
Either way the FTA rate (failed protocol images / protocol images) is reported. Protocol images
that are not in the embeddings file at all are an error (nothing to score), not an FTA.
"""

from __future__ import annotations

import datetime as _dt
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from fvtool import __version__
from fvtool.atomic import make_folder, sha256_file, write_bytes, write_text
from fvtool.console import console, progress
from fvtool.data.embeddings import EmbeddingSet, read_embeddings
from fvtool.errors import InputError
from fvtool.protocols.ijb import insightface_tar_at_far, is_ijb_spec, verification_set
from fvtool.protocols.leakage import overlap_message, training_overlap
from fvtool.protocols.model import Protocol
from fvtool.protocols.presets import resolve_protocol
from fvtool.runtime import check_device
from fvtool.verification import allpairs as ap
from fvtool.verification.bootstrap import Comparisons, bootstrap_ci, paired_comparison
from fvtool.verification.kfold import kfold_accuracy, kfold_report
from fvtool.verification.metrics import OperatingPoint, ScoreTable, intersection_from_hist, probit
from fvtool.verification.options import FTA_RULES, IDENTITY_RULES, THRESHOLD_RULES
from fvtool.verification.record import METRICS_NAME, VerifyMetrics
from fvtool.verification.scoring import Scoring, check_embeddings, pair_scores, prepare
from fvtool.workspace import Workspace

DEFAULT_FARS = (1e-2, 1e-3, 1e-4, 1e-5)
MAX_CURVE_ROWS = 10_000
MAX_SCORES_CSV_PAIRS = 1_000_000  # larger pair lists (IJB-C: 15.7 M) keep their scores in scores.npz only
PLOT_BINS = 200
INTERSECTION_BINS = 100


@dataclass
class VerifyOptions:
    metric: str = "cosine"
    normalise: bool = True
    far_targets: Sequence[float] | None = None  # None: the preset's targets + DEFAULT_FARS
    bootstrap: int = 0
    seed: int = 0
    level: float = 0.95
    compare: Path | None = None
    out: Path | None = None
    device: str = "cpu"
    fta: str = "include"
    threshold: float | None = None  # report FAR/FRR/accuracy at this fixed threshold ...
    threshold_from: Path | None = None  # ... or at the one chosen on a dev set's verify result
    threshold_rule: str = "min_hter"  # which threshold of that result: min_hter or eer
    bins: int = ap.DEFAULT_BINS
    block_elems: int = ap.DEFAULT_BLOCK_ELEMS
    show_progress: bool = True
    allow_unhashed: bool = False  # score a protocol file without sha256 (warned in metrics.json)
    identity_mismatch: str = "refuse"  # embeddings identities contradicting the protocol's: refuse or warn


@dataclass
class VerifyResult:
    folder: Path
    record: VerifyMetrics
    metrics: dict[str, Any]  # record.to_json(): what metrics.json holds
    files: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# scoring one embeddings file on one protocol


@dataclass
class _Scored:
    """Everything computed from one embeddings file on the protocol."""

    table: ScoreTable
    comps: Comparisons | None  # for the bootstrap
    genuine: np.ndarray
    gen_a: np.ndarray
    gen_b: np.ndarray
    impostor: np.ndarray
    imp_a: np.ndarray
    imp_b: np.ndarray
    n_imp: int
    fold: np.ndarray | None = None  # pairs: per comparison, in protocol order
    pair_scores: np.ndarray | None = None
    pair_keep: np.ndarray | None = None
    sqdist: np.ndarray | None = None  # pairs: squared L2 of normalised embeddings (k-fold)
    allpairs: ap.AllPairsScores | None = None


def _training_overlap(es: EmbeddingSet, protocol: Protocol, what: str, warnings: list[str]) -> dict[str, Any]:
    """Protocol identities the embeddings' training run saw (see `leakage.training_overlap`): a loud
    terminal warning and an entry in `warnings` when there are any."""
    run = es.attrs.get("run")
    rec = training_overlap(None if run is None else str(run), protocol)
    msg = overlap_message(rec, what)
    if msg:
        warnings.append(msg)
        console.print(f"[bold red]WARNING: evaluating on training identities.[/] {escape(msg)}")
    return rec


def _protocol_rows(protocol: Protocol, es: EmbeddingSet, what: str, opts: VerifyOptions,
                   warnings: list[str]) -> np.ndarray:
    rows = protocol.resolve_indices(es.keys)
    check_embeddings(es.embeddings, es.keys, rows, what=what)
    problem = identity_conflicts(protocol, es, rows)
    if problem:
        if opts.identity_mismatch != "warn":
            raise InputError(f"{what}: {problem}; the embeddings and the protocol are probably of different data "
                             "(pass --identity-mismatch warn to score anyway)")
        warnings.append(f"{what}: {problem}")
        console.print(f"[bold yellow]warning:[/] {what}: {problem}")
    return rows


def identity_conflicts(protocol: Protocol, es: EmbeddingSet, rows: np.ndarray, show: int = 3) -> str | None:
    """None when the embeddings file's identities partition the protocol images as the protocol's
    identities do, else what contradicts: how many images, and a few examples.

    Why a partition and not equal names: the two may name people differently (a dataset's folder
    names, a benchmark's ids) and still agree on who is who; when they disagree on who is who, the
    genuine/impostor labels of one of them are wrong for the other's images. Images whose identity
    in the embeddings file is empty (unknown) are not compared.
    """
    emb_list = [es.identities[r] for r in rows]
    if all(e == q or not e for e, q in zip(emb_list, protocol.identities, strict=True)):
        return None  # the same names (the usual case, and always for the all-pairs presets)
    emb_ids = np.asarray(emb_list, dtype=object)
    known = emb_ids != ""
    if not known.any():
        return None
    _, p = np.unique(np.asarray(protocol.identities, dtype=object)[known].astype(str), return_inverse=True)
    _, e = np.unique(emb_ids[known].astype(str), return_inverse=True)
    links = np.unique(np.stack([p, e], axis=1), axis=0)  # distinct (protocol id, embeddings id)
    split_p = np.flatnonzero(np.bincount(links[:, 0], minlength=p.max() + 1) > 1)
    merged_e = np.flatnonzero(np.bincount(links[:, 1], minlength=e.max() + 1) > 1)
    bad = np.isin(p, split_p) | np.isin(e, merged_e)
    if not bad.any():
        return None
    idx = np.flatnonzero(known)[bad]
    shown = "; ".join(f"{protocol.images[i]!r}: protocol {protocol.identities[i]!r}, embeddings "
                      f"{es.identities[rows[i]]!r}" for i in idx[:show])
    return (f"{len(idx)} of {int(known.sum())} protocol images have identities that contradict the protocol's "
            f"(the embeddings file groups them into other people; e.g. {shown})")


def _score(es: EmbeddingSet, rows: np.ndarray, protocol: Protocol, codes: np.ndarray, n_ids: int,
           failed: np.ndarray, opts: VerifyOptions, scoring: Scoring, fars: Sequence[float],
           keep_above: bool, label: str) -> _Scored:
    """Scores of one embeddings file; `failed` marks protocol images whose comparisons the FTA
    rule drops (all False for rule include)."""
    if protocol.kind == "pairs":
        keep = ~(failed[protocol.a] | failed[protocol.b])
        a, b, same = protocol.a[keep], protocol.b[keep], protocol.same[keep]
        x = prepare(es.embeddings, scoring)
        s = pair_scores(x, rows[a], rows[b], scoring)
        xn = prepare(es.embeddings, Scoring("sqeuclidean", True))
        sqd = -pair_scores(xn, rows[a], rows[b], Scoring("sqeuclidean", True))
        gen, imp = s[same], s[~same]
        _require_classes(len(gen), len(imp), protocol, int(failed.sum()))
        comps = Comparisons(genuine=gen, gen_id=codes[a[same]], impostor=imp, imp_ia=codes[a[~same]],
                            imp_ib=codes[b[~same]], n_ids=n_ids)
        return _Scored(table=ScoreTable.from_scores(imp, gen), comps=comps, genuine=gen,
                       gen_a=rows[a[same]], gen_b=rows[b[same]], impostor=imp, imp_a=rows[a[~same]],
                       imp_b=rows[b[~same]], n_imp=len(imp), fold=protocol.fold[keep], pair_scores=s,
                       pair_keep=keep, sqdist=sqd)
    # all pairs: trials as embedding rows, identity codes per embedding row
    labels = np.full(len(es.keys), -1, np.int64)
    labels[rows] = codes
    trials = [rows[t[~failed[t]]] for t in protocol.trials]
    counts = sum(len(t) * (len(t) - 1) // 2 for t in trials)
    if counts == 0:
        _require_classes(0, 0, protocol, int(failed.sum()))
    bar = progress(disable=not opts.show_progress)
    with bar:
        task = bar.add_task(f"scoring {label}", total=counts, info="all pairs")
        r = ap.allpairs_scores(es.embeddings, labels, trials, scoring, fars, keep_above=keep_above,
                               device=opts.device, bins=opts.bins, block_elems=opts.block_elems,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    _require_classes(r.n_gen, r.n_imp, protocol, int(failed.sum()))
    comps = None
    if keep_above:
        floor = int(np.argmax(r.keep))
        comps = Comparisons(
            genuine=r.genuine, gen_id=labels[r.genuine_a], impostor=r.kept, imp_ia=labels[r.kept_a],
            imp_ib=labels[r.kept_b], n_ids=n_ids,
            rest_value=float(np.nextafter(np.float64(r.edges[floor]), -np.inf)),
            trial_counts=[np.unique(labels[t], return_counts=True) for t in trials if len(t) >= 2],
        )
    return _Scored(table=r.table(), comps=comps, genuine=r.genuine, gen_a=r.genuine_a, gen_b=r.genuine_b,
                   impostor=r.kept, imp_a=r.kept_a, imp_b=r.kept_b, n_imp=r.n_imp, allpairs=r)


def _require_classes(n_gen: int, n_imp: int, protocol: Protocol, n_failed: int) -> None:
    why = f" (after excluding comparisons with {n_failed} failed images)" if n_failed else ""
    if n_gen == 0:
        raise InputError(f"protocol {protocol.name!r} has no genuine comparisons{why}: nothing to verify")
    if n_imp == 0:
        raise InputError(f"protocol {protocol.name!r} has no impostor comparisons{why}: nothing to verify")


# ---------------------------------------------------------------------------------------------
# metrics


def _far_targets(opts: VerifyOptions, preset) -> tuple[list[float], float]:
    """(targets, primary target): --far values as given, else the preset's, then the defaults."""
    if opts.far_targets:
        fars = list(dict.fromkeys(float(f) for f in opts.far_targets))
    else:
        fars = list(dict.fromkeys([*(preset.far_targets if preset else ()), *DEFAULT_FARS]))
    for f in fars:
        if not 0.0 < f < 1.0:
            raise InputError(f"--far {f}: a FAR target must be in (0, 1)")
    return fars, fars[0]


def _fta(status: list[str], rows: np.ndarray, protocol: Protocol, rule: str) -> tuple[np.ndarray, dict]:
    failed = np.array([status[r] != "ok" for r in rows], dtype=bool)
    by_status: dict[str, int] = {}
    for r in rows[failed]:
        by_status[status[r]] = by_status.get(status[r], 0) + 1
    gen_aff = imp_aff = gen_tot = imp_tot = 0
    if protocol.kind == "pairs":
        hit = failed[protocol.a] | failed[protocol.b]
        gen_aff, imp_aff = int((hit & protocol.same).sum()), int((hit & ~protocol.same).sum())
        gen_tot, imp_tot = int(protocol.same.sum()), int((~protocol.same).sum())
    else:
        ids = np.asarray(protocol.identities)
        for t in protocol.trials:
            cnt = np.unique(ids[t], return_counts=True)[1]
            cnt_ok = np.unique(ids[t][~failed[t]], return_counts=True)[1]
            n, n_ok = len(t), int((~failed[t]).sum())
            g = int((cnt * (cnt - 1) // 2).sum())
            g_ok = int((cnt_ok * (cnt_ok - 1) // 2).sum())
            gen_tot += g
            imp_tot += n * (n - 1) // 2 - g
            gen_aff += g - g_ok
            imp_aff += (n * (n - 1) // 2 - g) - (n_ok * (n_ok - 1) // 2 - g_ok)
    info = {
        "rule": rule, "images": len(rows), "failed": int(failed.sum()),
        "rate": float(failed.mean()) if len(rows) else 0.0, "by_status": by_status,
        "failed_keys": [protocol.images[i] for i in np.flatnonzero(failed)[:20]],
        "genuine_affected": gen_aff, "impostor_affected": imp_aff,
        "genuine_rate": gen_aff / gen_tot if gen_tot else 0.0,
        "impostor_rate": imp_aff / imp_tot if imp_tot else 0.0,
    }
    return failed, info


def _operating_points(sc: _Scored, fars: Sequence[float], fta: dict) -> list[OperatingPoint]:
    out = []
    for f in sorted(fars, reverse=True):
        op = sc.table.frr_at_far(f)
        if sc.allpairs is not None:
            op.exact = sc.allpairs.far_exact(sc.table, op.threshold, op.above_max)
        if fta["rule"] == "exclude":
            gi, ii = fta["genuine_rate"], fta["impostor_rate"]
            op.transaction = {"far": op.far * (1 - ii), "frr": gi + op.frr * (1 - gi)}
        out.append(op)
    return out


def _threshold_free(sc: _Scored) -> dict[str, Any]:
    t = sc.table
    e = t.eer()
    ei_v, ei_t = t.eer_interp()
    r = sc.allpairs
    out: dict[str, Any] = {
        "eer": {"value": e.value, "threshold": e.threshold, "far": e.far, "frr": e.frr, "rule": "bob",
                "exact": True if r is None else r.around_exact(t, e.threshold)},
        "eer_rocch": {"value": t.eer_rocch(), "rule": "rocch", "exact": r is None or r.complete},
        "eer_interp": {"value": ei_v, "threshold": ei_t, "rule": "interp",
                       "exact": True if r is None else r.around_exact(t, ei_t)},
        "auc": {"value": t.auc(), "error_bound": 0.0 if r is None else _auc_bound(r)},
    }
    if r is None:
        it = t.intersection_threshold(INTERSECTION_BINS)
    else:
        edges, hi, hg = _coarse_hist(r, INTERSECTION_BINS)
        it = intersection_from_hist(edges, hi, hg)
    h = t.min_hter_threshold()
    far_h, frr_h = t.rates_at(h)
    out["min_hter"] = {"threshold": h, "far": float(far_h), "frr": float(frr_h), "hter": float(far_h + frr_h) / 2,
                       "exact": True if r is None else r.around_exact(t, h)}
    if it is None:
        out["intersection"] = {"threshold": None, "far": None, "frr": None, "bins": INTERSECTION_BINS}
    else:
        far, frr = t.rates_at(it)
        out["intersection"] = {"threshold": it, "far": float(far), "frr": float(frr), "bins": INTERSECTION_BINS}
    return out


def _auc_bound(r: ap.AllPairsScores) -> float:
    """Genuine/impostor pairs inside one non-kept bin are the only ones the table cannot order."""
    nk = ~r.keep
    return float((r.hist_imp[nk].astype(np.float64) * r.hist_gen[nk]).sum() / (r.n_imp * r.n_gen))


def _coarse_hist(r: ap.AllPairsScores, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fine histograms regrouped into about `bins` groups over the occupied range."""
    occ = np.flatnonzero((r.hist_imp > 0) | (r.hist_gen > 0))
    lo, hi = int(occ[0]), int(occ[-1]) + 1
    cuts = np.unique(np.linspace(lo, hi, bins + 1).round().astype(np.int64))
    upper = np.append(r.edges.astype(np.float64), np.float64(r.quant.hi))  # bin i = [upper[i], upper[i+1])
    edges = upper[cuts]
    hi_c = np.add.reduceat(r.hist_imp, cuts[:-1])
    hg_c = np.add.reduceat(r.hist_gen, cuts[:-1])
    return edges, hi_c, hg_c


# ---------------------------------------------------------------------------------------------
# curves and files


def _curve(sc: _Scored) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(threshold, far, frr) rows for det.csv/roc.csv: every exactly attained decision, thinned
    to MAX_CURVE_ROWS (evenly in log FAR and in FRR, keeping both ends)."""
    thr, far, frr = sc.table.roc_points()
    r = sc.allpairs
    if r is not None:
        v = thr.astype(np.float32)
        qv = r.quant.q(v)
        exact = r.keep[qv] | (r.hist_imp[qv] == 0) | (v == r.edges[qv])
        exact[-1] = True
        thr, far, frr = thr[exact], far[exact], frr[exact]
    n = len(thr)
    if n > MAX_CURVE_ROWS:
        half = MAX_CURVE_ROWS // 2
        floor = 1.0 / max(sc.n_imp, 1)
        lf = np.log10(np.maximum(far, floor))[::-1]  # ascending
        pick_far = n - 1 - np.searchsorted(lf, np.linspace(lf[0], lf[-1], half)).clip(0, n - 1)
        pick_frr = np.searchsorted(frr, np.linspace(0, 1, half)).clip(0, n - 1)
        idx = np.unique(np.concatenate([pick_far, pick_frr, [0, n - 1]]))
        thr, far, frr = thr[idx], far[idx], frr[idx]
    return thr, far, frr


def _fmt_probit(p: np.ndarray) -> list[str]:
    z = probit(p)
    return [f"{v:.6f}" if np.isfinite(v) else "" for v in z]


def _write_curves(folder: Path, sc: _Scored) -> tuple[Path, Path]:
    thr, far, frr = _curve(sc)
    pf, pr = _fmt_probit(far), _fmt_probit(frr)
    det = io.StringIO()
    det.write("threshold,far,frr,far_probit,frr_probit\n")
    roc = io.StringIO()
    roc.write("threshold,far,tar\n")
    for i in range(len(thr)):
        det.write(f"{thr[i]:.17g},{far[i]:.9g},{frr[i]:.9g},{pf[i]},{pr[i]}\n")
        roc.write(f"{thr[i]:.17g},{far[i]:.9g},{1.0 - frr[i]:.9g}\n")
    write_text(folder / "det.csv", det.getvalue())
    write_text(folder / "roc.csv", roc.getvalue())
    return folder / "det.csv", folder / "roc.csv"


def _plot_hist(sc: _Scored) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if sc.allpairs is not None:
        return _coarse_hist(sc.allpairs, PLOT_BINS)
    allv = np.concatenate([sc.genuine, sc.impostor])
    edges = np.linspace(allv.min(), allv.max(), PLOT_BINS + 1)
    return edges, np.histogram(sc.impostor, edges)[0], np.histogram(sc.genuine, edges)[0]


def _write_scores(folder: Path, sc: _Scored, es: EmbeddingSet, protocol: Protocol, rows: np.ndarray,
                  scoring: Scoring) -> dict[str, str | None]:
    edges, hi, hg = _plot_hist(sc)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        genuine=sc.genuine.astype(np.float32), genuine_a=sc.gen_a.astype(np.int64), genuine_b=sc.gen_b.astype(np.int64),
        impostor=sc.impostor.astype(np.float32), impostor_a=sc.imp_a.astype(np.int64),
        impostor_b=sc.imp_b.astype(np.int64), impostor_complete=np.bool_(sc.allpairs is None or sc.allpairs.complete),
        n_impostor=np.int64(sc.n_imp), hist_edges=np.asarray(edges, np.float64),
        hist_impostor=np.asarray(hi, np.int64), hist_genuine=np.asarray(hg, np.int64),
        keys=np.array(es.keys, dtype=str), identities=np.array(es.identities, dtype=str),
        metric=np.array(scoring.metric), normalised=np.bool_(scoring.normalise),
    )
    write_bytes(folder / "scores.npz", buf.getvalue())
    files: dict[str, str | None] = {"scores": "scores.npz", "scores_csv": None}
    if protocol.kind == "pairs" and len(protocol.a) <= MAX_SCORES_CSV_PAIRS:
        keep = sc.pair_keep
        ids = protocol.identities
        out = io.StringIO()
        out.write("key_a,key_b,identity_a,identity_b,label,fold,score\n")
        k = 0
        for i in range(len(protocol.a)):
            a, b = int(protocol.a[i]), int(protocol.b[i])
            if keep[i]:
                score = f"{sc.pair_scores[k]:.9g}"
                k += 1
            else:
                score = ""  # dropped by --fta exclude
            out.write(f"{_csv(es.keys[rows[a]])},{_csv(es.keys[rows[b]])},{_csv(ids[a])},{_csv(ids[b])},"
                      f"{int(protocol.same[i])},{int(protocol.fold[i])},{score}\n")
        write_text(folder / "scores.csv", out.getvalue())
        files["scores_csv"] = "scores.csv"
    return files


def _csv(s: str) -> str:
    return f'"{s.replace(chr(34), chr(34) * 2)}"' if any(c in s for c in ',"\n') else s


# ---------------------------------------------------------------------------------------------
# the stage


def _resolve(spec: str, es: EmbeddingSet, allow_unhashed: bool):
    return resolve_protocol(spec, keys=es.keys, identities=es.identities, allow_unhashed=allow_unhashed)


def dev_threshold(source: Path, rule: str, scoring: Scoring, es: EmbeddingSet) -> tuple[float, dict[str, Any]]:
    """The threshold a dev-set verify result chose (bob's dev/eval practice: pick the operating
    threshold on data the test never saw, then report the test's FAR/FRR/accuracy there). Refuses a
    result scored with another metric (thresholds live on its scale) or from another model's
    embeddings (its threshold means nothing for this one)."""
    if rule not in THRESHOLD_RULES:
        raise InputError(f"--threshold-rule {rule!r}: choose {' or '.join(THRESHOLD_RULES)}")
    path = source / METRICS_NAME if source.is_dir() else source
    dev = VerifyMetrics.read(path)
    if dev.scoring != scoring.describe():
        raise InputError(f"{path}: scored with {dev.scoring}, this run with {scoring.describe()}; a threshold "
                         "only carries over on the same score scale (same --metric/--raw)")
    mine = es.attrs.get("checkpoint_sha256")
    theirs = (dev.embeddings.get("attrs") or {}).get("checkpoint_sha256")
    if mine and theirs and mine != theirs:
        raise InputError(f"{path}: threshold from embeddings of another checkpoint ({theirs[:12]}, this file: "
                         f"{mine[:12]}); embed the dev images with the same model")
    chosen = dev.min_hter if rule == "min_hter" else dev.eer
    thr = chosen.get("threshold") if isinstance(chosen, dict) else None
    if isinstance(thr, bool) or not isinstance(thr, int | float) or not np.isfinite(thr):
        raise InputError(f"{path}: metrics.json has no finite '{rule}' threshold (found {thr!r}); "
                         "it is damaged or not a verify result")
    return float(thr), {"source": str(path.resolve()), "rule": rule,
                                        "dev_protocol": dev.protocol["name"]}


def _at_threshold(sc: _Scored, thr: float, protocol: Protocol, origin: dict[str, Any]) -> dict[str, Any]:
    """FAR, FRR, HTER at a threshold fixed in advance; for pair lists also the accuracy (and per
    fold), which is how a threshold chosen elsewhere is judged on LFW-style folds."""
    fa, fr = sc.table.counts_at(thr)
    far, frr = float(fa) / sc.table.n_imp, float(fr) / sc.table.n_gen
    out: dict[str, Any] = {**origin, "threshold": thr, "far": far, "frr": frr, "hter": (far + frr) / 2,
                           "false_accepts": int(fa), "false_rejects": int(fr), "accuracy": None,
                           "fold_accuracy": None}
    if sc.pair_scores is not None:
        ok = (sc.pair_scores >= thr) == protocol.same[sc.pair_keep]
        out["accuracy"] = float(ok.mean())
        if protocol.n_folds >= 2:
            out["fold_accuracy"] = [float(ok[sc.fold == f].mean()) for f in np.unique(sc.fold)]
    return out


def verify(embeddings_path: str | Path, protocol_spec: str, options: VerifyOptions | None = None) -> VerifyResult:
    """Score `embeddings_path` on the protocol (preset name or file) and write the outputs."""
    opts = options or VerifyOptions()
    t0 = time.perf_counter()
    if opts.fta not in FTA_RULES:
        raise InputError(f"--fta {opts.fta!r}: choose {' or '.join(FTA_RULES)}")
    if opts.bootstrap < 0:
        raise InputError("--bootstrap must be >= 0")
    if not 0.0 < opts.level < 1.0:
        raise InputError(f"--level {opts.level}: a confidence level must be in (0, 1), e.g. 0.95")
    if opts.identity_mismatch not in IDENTITY_RULES:
        raise InputError(f"--identity-mismatch {opts.identity_mismatch!r}: choose {' or '.join(IDENTITY_RULES)}")
    if opts.out is not None and Path(opts.out).exists() and not Path(opts.out).is_dir():
        raise InputError(f"--output {opts.out} is an existing file; verify writes a folder (metrics.json, scores, "
                         "curves): give a folder path")
    check_device(opts.device)
    scoring = Scoring(opts.metric, opts.normalise)
    path = Path(embeddings_path)
    es = read_embeddings(path)
    if opts.threshold is not None and opts.threshold_from is not None:
        raise InputError("give either --threshold or --threshold-from, not both")
    fixed: tuple[float, dict[str, Any]] | None = None
    if opts.threshold is not None:
        if not np.isfinite(opts.threshold):
            raise InputError(f"--threshold {opts.threshold} is not a finite number")
        fixed = (float(opts.threshold), {"source": "--threshold", "rule": "given", "dev_protocol": None})
    elif opts.threshold_from is not None:
        fixed = dev_threshold(Path(opts.threshold_from), opts.threshold_rule, scoring, es)
    ijb = None
    if is_ijb_spec(protocol_spec):  # image embeddings -> template features + the template-pair protocol
        ijb = verification_set(protocol_spec, es)
        es, protocol, preset = ijb.embeddings, ijb.protocol, ijb.preset
    else:
        protocol, preset = _resolve(protocol_spec, es, opts.allow_unhashed)
    warnings: list[str] = []
    if protocol.unhashed:
        warnings.append(f"{protocol_spec}: the protocol file has no sha256, so edits to it (labels, pairs) cannot "
                        "be detected; scored because of --allow-unhashed")
        console.print(f"[bold yellow]warning:[/] {warnings[-1]}")
    rows = _protocol_rows(protocol, es, str(path), opts, warnings)
    fars, primary_far = _far_targets(opts, preset)
    failed, fta = _fta(es.status, rows, protocol, opts.fta)
    drop = failed if opts.fta == "exclude" else np.zeros(len(rows), bool)
    id_names, codes = np.unique(np.asarray(protocol.identities), return_inverse=True)
    n_ids = len(id_names)

    other = other_rows = None
    if opts.compare is not None:
        other = read_embeddings(opts.compare)
        if ijb is not None:
            other = verification_set(protocol_spec, other).embeddings
        if other.dim != es.dim:
            raise InputError(f"dimension mismatch: {path} has {es.dim}-d embeddings, {opts.compare} has "
                             f"{other.dim}-d; compare files from models with the same embedding size")
        other_rows = _protocol_rows(protocol, other, str(opts.compare), opts, warnings)
        if opts.fta == "exclude":  # the same comparisons for both files
            drop = drop | _fta(other.status, other_rows, protocol, opts.fta)[0]
    overlap = overlap_other = None  # IJB: template protocols name placeholder identities, nothing to compare
    if ijb is None:
        overlap = _training_overlap(es, protocol, str(path), warnings)
        if other is not None:
            overlap_other = _training_overlap(other, protocol, str(opts.compare), warnings)
    need_rest = opts.bootstrap > 0 or other is not None
    sc = _score(es, rows, protocol, codes, n_ids, drop, opts, scoring, fars, need_rest, path.name)

    ops = _operating_points(sc, fars, fta)
    kf = None
    if protocol.kind == "pairs" and protocol.n_folds >= 2 and (preset is None or preset.kfold):
        kf = kfold_report(sc.sqdist, protocol.same[sc.pair_keep], sc.fold)
        if not scoring.normalise:  # raw distances: thresholds on their own scale (study 2's rule)
            kf["on_scores"] = kfold_accuracy(-sc.pair_scores, protocol.same[sc.pair_keep], sc.fold,
                                             exact=True).to_dict() | {
                "distance": f"{scoring.metric} distance of the raw embeddings (-score); same iff d < t"}
    if preset is not None and preset.kfold and kf is not None:
        primary = {"metric": "kfold_accuracy", "far_target": None,
                   "value": kf["grid"]["accuracy_mean"], "label": f"{kf['folds']}-fold accuracy"}
    else:
        op = next(o for o in ops if o.far_target == primary_far)
        primary = {"metric": "frr_at_far", "far_target": primary_far,
                   "value": op.frr if op.measurable else None, "label": f"FRR@FAR={primary_far:g}"}
    bootstrap = _run_bootstrap(sc, fars, opts, ops) if opts.bootstrap > 0 else None
    comparison = None
    if other is not None:
        sc_b = _score(other, other_rows, protocol, codes, n_ids, drop, opts, scoring, fars, True,
                      Path(opts.compare).name)
        comparison = _run_comparison(sc, sc_b, fars, opts)
        comparison["other"]["training_overlap"] = overlap_other
    ijb_facts = None
    if ijb is not None:
        ijb_facts = {**ijb.info, "insightface_tar_at_far": insightface_tar_at_far(
            protocol.same[sc.pair_keep], sc.pair_scores), "insightface_rule": "sklearn roc_curve; the ROC point "
            "whose FPR is nearest the target (may exceed it); fvtool's operating_points never exceed the target"}
    allpairs_facts = None
    if sc.allpairs is not None:
        r = sc.allpairs
        allpairs_facts = {"bins": int(r.quant.bins), "kept_impostors": len(r.kept), "passes": r.passes,
                          "block_elems": opts.block_elems, "device": r.backend,
                          "seconds": {k: round(v, 3) for k, v in r.seconds.items()}}
    record = VerifyMetrics(
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), fvtool_version=__version__,
        embeddings={"path": str(path.resolve()), "name": path.stem, "sha256": sha256_file(path),
                    "n": len(es.keys), "dim": es.dim, "attrs": es.attrs_json()},
        protocol={"spec": str(protocol_spec), "name": protocol.name, "kind": protocol.kind,
                  "preset": preset.name if preset else None, "source": protocol.source,
                  "sha256": protocol.sha256(), "unhashed": protocol.unhashed, "images": len(protocol.images),
                  "identities": n_ids, "folds": protocol.n_folds},
        scoring=scoring.describe(),
        counts={"genuine": int(sc.table.n_gen), "impostor": int(sc.n_imp), "min_far": 1.0 / sc.n_imp},
        fta=fta, training_overlap=overlap, warnings=warnings, **_threshold_free(sc),
        fixed_threshold=_at_threshold(sc, fixed[0], protocol, fixed[1]) if fixed is not None else None,
        operating_points=ops, kfold=kf, primary=primary, bootstrap=bootstrap, comparison=comparison,
        ijb=ijb_facts, allpairs=allpairs_facts)

    folder = Path(opts.out) if opts.out else Workspace.current().dir("verify") / f"{path.stem}-{protocol.name}"
    make_folder(folder)
    files = _write_scores(folder, sc, es, protocol, rows, scoring)
    det, roc = _write_curves(folder, sc)
    files.update({"det": det.name, "roc": roc.name})
    record.files = files
    record.elapsed_s = round(time.perf_counter() - t0, 3)
    record.write(folder / METRICS_NAME)  # last: its presence marks a complete folder
    Workspace.current().record("verify", folder)
    return VerifyResult(folder=folder, record=record, metrics=record.to_json(),
                        files={k: folder / v for k, v in files.items() if v} | {"metrics": folder / METRICS_NAME})


def _run_bootstrap(sc: _Scored, fars: Sequence[float], opts: VerifyOptions, ops: list[OperatingPoint]) -> dict:
    bar = progress(disable=not opts.show_progress)
    with bar:
        task = bar.add_task("bootstrap", total=opts.bootstrap, info="identities")
        res = bootstrap_ci(sc.comps, fars, replicates=opts.bootstrap, seed=opts.seed, level=opts.level,
                           tick=lambda: bar.advance(task))
    by_far = {e["far_target"]: e for e in res["frr_at_far"]}
    for o in ops:
        e = by_far[o.far_target]
        o.ci = (e["lo"], e["hi"]) if e["lo"] is not None and o.measurable else None
    return res


def _run_comparison(a: _Scored, b: _Scored, fars: Sequence[float], opts: VerifyOptions) -> dict:
    reps = opts.bootstrap or 1000
    bar = progress(disable=not opts.show_progress)
    with bar:
        task = bar.add_task("paired bootstrap", total=reps, info="identities")
        res = paired_comparison(a.comps, b.comps, fars, replicates=reps, seed=opts.seed, level=opts.level,
                                tick=lambda: bar.advance(task))
    path = Path(opts.compare)
    res["other"] = {"path": str(path.resolve()), "name": path.stem, "sha256": sha256_file(path)}
    return res


# ---------------------------------------------------------------------------------------------
# terminal summary


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.3f}%"


def summary_table(m: dict[str, Any]):
    """A one-screen rich table of metrics.json."""
    from rich.table import Table

    t = Table(title=f"verify {m['embeddings']['name']} on {m['protocol']['name']} "
                    f"({m['scoring']['metric']}{', normalised' if m['scoring']['normalised'] else ''})",
              show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("detail")
    c, f = m["counts"], m["fta"]
    t.add_row("comparisons", f"{c['genuine']:,} gen / {c['impostor']:,} imp", f"min measurable FAR {c['min_far']:.2g}")
    t.add_row("FTA", _pct(f["rate"]), f"{f['failed']} of {f['images']} images not 'ok'; rule {f['rule']}")
    p = m["primary"]  # marked on its own row below (k-fold accuracy or an operating point), not repeated
    primary_far = p["far_target"] if p["metric"] == "frr_at_far" else None
    bs = m.get("bootstrap") or {}
    e = m["eer"]
    ci = ""
    if bs and bs["eer"]["lo"] is not None:
        ci = f" [{_pct(bs['eer']['lo'])}, {_pct(bs['eer']['hi'])}]"
    t.add_row("EER (bob)", _pct(e["value"]), f"threshold {e['threshold']:.4g}{ci}")
    t.add_row("EER (ROCCH)", _pct(m["eer_rocch"]["value"]), "convex hull")
    h = m.get("min_hter")
    if h:
        t.add_row("min HTER", _pct(h["hter"]), f"threshold {h['threshold']:.4g} (FAR {_pct(h['far'])}, "
                                               f"FRR {_pct(h['frr'])}): the one to carry to a test set")
    ft = m.get("fixed_threshold")
    if ft:
        where = ft["source"] if ft["rule"] == "given" else f"{ft['rule']} of {ft['dev_protocol']}"
        acc = "" if ft["accuracy"] is None else f"; accuracy {100 * ft['accuracy']:.2f}%"
        t.add_row(f"[bold]at threshold {ft['threshold']:.4g}[/]", f"HTER {_pct(ft['hter'])}",
                  f"FAR {_pct(ft['far'])}, FRR {_pct(ft['frr'])}{acc} (from {where})")
    t.add_row("AUC", f"{m['auc']['value']:.5f}", "")
    kf = m.get("kfold")
    if kf:
        g, x = kf["grid"], kf["exact"]
        _row(t, "k-fold accuracy (grid)", f"{100 * g['accuracy_mean']:.2f} ± {100 * g['accuracy_std']:.2f}",
             f"exact {100 * x['accuracy_mean']:.2f} ± {100 * x['accuracy_std']:.2f}; "
             f"VAL@FAR={kf['facenet']['val_far_target']:g} {100 * kf['facenet']['val_mean']:.2f}%",
             primary=p["metric"] == "kfold_accuracy")
        r = kf.get("on_scores")
        if r:
            acc = f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}"
            _row(t, "k-fold accuracy (raw distances)", acc,
                 "exact thresholds on the raw distance: " + ", ".join(f"{v:.4g}" for v in r["fold_threshold"][:3])
                 + (" ..." if len(r["fold_threshold"]) > 3 else ""))
    for o in m["operating_points"]:
        name, primary = f"FRR@FAR={o['far_target']:g}", o["far_target"] == primary_far
        if not o["measurable"]:
            _row(t, name, "n/m", "not measurable with this many impostors", primary=primary)
            continue
        extra = f"attained FAR {o['far']:.3g}, thr {o['threshold']:.4g}"
        if o.get("ci"):
            extra += f" [{_pct(o['ci']['frr'][0])}, {_pct(o['ci']['frr'][1])}]"
        if not o.get("exact", True):
            extra += " (approximate)"
        _row(t, name, _pct(o["frr"]), extra, primary=primary)
    cmp_ = m.get("comparison")
    if cmp_:
        for name, entry in [("EER", cmp_["eer"])] + [(f"FRR@FAR={e['far_target']:g}", e) for e in cmp_["frr_at_far"]]:
            if entry["diff"] is None:
                continue
            iv = "n/a" if entry["lo"] is None else f"[{100 * entry['lo']:+.3f}, {100 * entry['hi']:+.3f}] pp"
            t.add_row(f"Δ {name} vs {cmp_['other']['name']}", f"{100 * entry['diff']:+.3f} pp",
                      iv + (" significant" if entry["significant"] else ""))
    ov = m.get("training_overlap") or {}
    if ov.get("shared_identities"):
        t.add_row("[bold red]training overlap[/]", f"[bold red]{ov['shared_identities']} of "
                  f"{ov['protocol_identities']} ids[/]", "[red]identities the network trained on: optimistic "
                  "metrics (see the warning above)[/]")
    return t


def _row(t, name: str, value: str, detail: str, *, primary: bool = False) -> None:
    """A table row; the primary metric's in bold with "primary" in front of its detail."""
    if primary:
        name, value, detail = f"[bold]{name}[/]", f"[bold]{value}[/]", "primary; " + detail
    t.add_row(name, value, detail)


def print_summary(result: VerifyResult) -> None:
    console.print(summary_table(result.metrics))
    console.print(f"outputs in {result.folder}")
