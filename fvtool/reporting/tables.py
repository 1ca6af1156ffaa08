"""The comparison tables: one row per run, rendered as Markdown, CSV and HTML from one build.

Why one `Table` built once and rendered three ways: the numbers in report.md, report.html and
the CSV must be the same numbers; only their formatting differs. Display cells round for
reading; the CSV keeps the full-precision values from the metrics files (and the CI bounds,
attained FARs and thresholds as separate columns) so other tools can recompute anything.

Best value per column: among runs evaluated on the same protocol (numbers from different
protocols are not comparable), ties all marked; an FRR that is not measurable never wins.
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fvtool.reporting.paired import PairedResult
from fvtool.reporting.records import OperatingPoint, RunData

DEFAULT_FARS = (1e-3, 1e-4, 1e-5)
NOT_MEASURABLE = "not measurable"


def far_name(f: float) -> str:
    """1e-3 -> '1e-3' (names in headers and CSV columns)."""
    e = math.log10(f)
    return f"1e{round(e)}" if math.isclose(e, round(e), abs_tol=1e-9) else f"{f:g}"


def pct(v: float | None, digits: int = 2) -> str:
    return "" if v is None else f"{100 * v:.{digits}f}"


def _ci_pct(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]"


def duration(seconds: float | None) -> str:
    """Training time for humans: 45s, 3m 12s, 1h 02m."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def _int(v: int | None) -> str:
    return "" if v is None else f"{v:,}"


@dataclass
class Cell:
    text: str
    best: bool = False
    note: bool = False  # a "not measurable"-style cell (rendered in italics)
    worse: bool = False  # significantly worse than the baseline (paired table)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    records: list[dict[str, object]]  # full-precision values for CSV, one per row
    footnotes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Metric:
    """A metric column: header, raw value used to pick the best, display text, better direction."""

    key: str
    header: str
    value: Callable[[RunData], float | None]
    text: Callable[[RunData], str]
    higher_is_better: bool
    is_note: Callable[[RunData], bool] = lambda r: False
    group: Callable[[RunData], str] | None = None  # which runs compare for "best" (default: the protocol)


def _frr_value(p: OperatingPoint | None) -> float | None:
    return p.frr if p is not None and p.measurable and p.frr is not None else None


def _frr_text(r: RunData, target: float) -> str:
    p = r.point(target)
    if p is None:
        return ""
    if not p.measurable or p.frr is None:
        limit = f"; min FAR {r.min_far:.1e}" if r.min_far else ""
        return f"{NOT_MEASURABLE}{limit}"
    far = "" if p.far is None else f" (FAR {p.far:.1e})"
    return f"{pct(p.frr)}{far}{_ci_pct(p.ci)}"


def _accuracy_text(r: RunData) -> str:
    if r.accuracy_mean is None:
        return ""
    std = "" if r.accuracy_std is None else f" ± {pct(r.accuracy_std)}"
    return f"{pct(r.accuracy_mean)}{std}{_ci_pct(r.accuracy_ci)}"


def _metrics(fars: Sequence[float]) -> list[_Metric]:
    out = [
        _Metric("accuracy", "k-fold accuracy (%) mean ± std [CI]", lambda r: r.accuracy_mean, _accuracy_text, True),
        _Metric("eer", "EER (%) [95% CI]", lambda r: r.eer,
                lambda r: "" if r.eer is None else f"{pct(r.eer)}{_ci_pct(r.eer_ci)}", False),
    ]
    for f in fars:
        out.append(_Metric(
            f"frr_at_far_{far_name(f)}", f"FRR@FAR={far_name(f)} (%) (attained FAR) [CI]",
            (lambda r, f=f: _frr_value(r.point(f))), (lambda r, f=f: _frr_text(r, f)), False,
            (lambda r, f=f: r.point(f) is not None and not r.point(f).measurable)))
    out.append(_Metric("auc", "AUC [CI]", lambda r: r.auc,
                       lambda r: "" if r.auc is None else
                       f"{r.auc:.4f}" + ("" if r.auc_ci is None else f" [{r.auc_ci[0]:.4f}, {r.auc_ci[1]:.4f}]"),
                       True))
    return out


IDENTIFY_ORDER = ("logreg", "ncm", "1nn")


def identify_classifiers(runs: Sequence[RunData]) -> list[str]:
    """Classifiers with a closed-set result for at least one run (`fvtool identify`), in a fixed order."""
    have = {c for r in runs for c in r.identify}
    return [c for c in IDENTIFY_ORDER if c in have] + sorted(have - set(IDENTIFY_ORDER))


def _identify_text(r: RunData, c: str) -> str:
    rec = r.identify.get(c)
    if rec is None or rec.top1 is None:
        return ""
    top5 = "" if rec.top5 is None else f" (top-5 {pct(rec.top5)})"
    return f"{pct(rec.top1)}{top5}"


def _identify_metrics(classifiers: Sequence[str]) -> list[_Metric]:
    """Closed-set top-1 per classifier; best among runs identified on the same train/test images."""
    return [_Metric(f"identify_top1_{c}", f"closed-set top-1 {c} (%) (top-5)",
                    (lambda r, c=c: r.identify[c].top1 if c in r.identify else None),
                    (lambda r, c=c: _identify_text(r, c)), True,
                    group=(lambda r, c=c: (r.identify[c].split_sha256 or "") if c in r.identify else ""))
            for c in classifiers]


# The training facts of a run live in the "Training runs" table; the comparison table keeps to the
# run, its protocol (short alias; the "Protocols" table is the legend) and the numbers, so that it fits
# a 1,400 px page with four FAR targets (issue #17: FRR@1e-5 and AUC were behind a scroll bar).
_COMPARISON_FACTS: list[tuple[str, Callable[[RunData], str]]] = [
    ("Run", lambda r: r.label),
    ("Protocol", lambda r: r.protocol_alias or r.protocol or ""),
]
_TRAINING_FACTS: list[tuple[str, Callable[[RunData], str]]] = [
    ("Run", lambda r: r.label),
    ("Loss", lambda r: r.loss or ""),
    ("Miner", lambda r: r.miner or ""),
    ("Backbone", lambda r: r.backbone or ""),
    ("Input", lambda r: r.input_size or ""),
    ("Train images / ids", lambda r: "" if r.train_images is None and r.train_identities is None
     else f"{_int(r.train_images)} / {_int(r.train_identities)}"),
    ("Epochs", lambda r: _int(r.epochs)),
    ("Train time (wall)", lambda r: duration(r.train_seconds)),
    ("img/s", lambda r: "" if r.train_img_per_s is None else f"{r.train_img_per_s:,.0f}"),
]


def protocol_group(r: RunData) -> str:
    """Runs are comparable when they were verified on the same protocol (hash, else name)."""
    return r.protocol_sha256 or r.protocol or ""


def _best_flags(runs: Sequence[RunData], m: _Metric) -> list[bool]:
    flags = [False] * len(runs)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault((m.group or protocol_group)(r), []).append(i)
    for idx in groups.values():
        vals = [(i, m.value(runs[i])) for i in idx]
        vals = [(i, v) for i, v in vals if v is not None and math.isfinite(v)]
        if len(vals) < 2:
            continue
        best = max(v for _, v in vals) if m.higher_is_better else min(v for _, v in vals)
        for i, v in vals:
            flags[i] = v == best
    return flags


def _record(r: RunData, fars: Sequence[float], best: list[str], classifiers: Sequence[str] = ()) -> dict[str, object]:
    def lo(ci: tuple[float, float] | None) -> float | None:
        return None if ci is None else ci[0]

    def hi(ci: tuple[float, float] | None) -> float | None:
        return None if ci is None else ci[1]

    rec: dict[str, object] = {
        "label": r.label, "protocol": r.protocol, "loss": r.loss, "miner": r.miner, "backbone": r.backbone,
        "input_size": r.input_size, "data": r.data, "train_images": r.train_images,
        "train_identities": r.train_identities, "epochs": r.epochs, "train_seconds": r.train_seconds,
        "n_genuine": r.n_genuine, "n_impostor": r.n_impostor,
        "accuracy_mean": r.accuracy_mean, "accuracy_std": r.accuracy_std,
        "accuracy_ci_low": lo(r.accuracy_ci), "accuracy_ci_high": hi(r.accuracy_ci),
        "eer": r.eer, "eer_ci_low": lo(r.eer_ci), "eer_ci_high": hi(r.eer_ci), "eer_threshold": r.eer_threshold,
    }
    for f in fars:
        p = r.point(f)
        n = far_name(f)
        rec[f"frr_at_far_{n}"] = None if p is None or not p.measurable else p.frr
        rec[f"attained_far_{n}"] = None if p is None else p.far
        rec[f"threshold_far_{n}"] = None if p is None else p.threshold
        rec[f"measurable_far_{n}"] = None if p is None else p.measurable
        rec[f"frr_at_far_{n}_ci_low"] = None if p is None else lo(p.ci)
        rec[f"frr_at_far_{n}_ci_high"] = None if p is None else hi(p.ci)
    rec.update({"auc": r.auc, "auc_ci_low": lo(r.auc_ci), "auc_ci_high": hi(r.auc_ci)})
    for c in classifiers:  # only when some run has a closed-set result: other reports keep their columns
        ident = r.identify.get(c)
        rec[f"identify_top1_{c}"] = None if ident is None else ident.top1
        rec[f"identify_top5_{c}"] = None if ident is None else ident.top5
        rec[f"identify_json_{c}"] = None if ident is None else str(ident.path)
    rec.update({"best": ";".join(best),
                "verify_dir": None if r.verify_dir is None else str(r.verify_dir),
                "run_dir": None if r.run_dir is None else str(r.run_dir)})
    return rec


def comparison_table(runs: Sequence[RunData], fars: Sequence[float] = DEFAULT_FARS) -> Table:
    """The main table: training facts and verification metrics per run, best values marked."""
    classifiers = identify_classifiers(runs)
    metrics = _metrics(fars) + _identify_metrics(classifiers)
    flags = {m.key: _best_flags(runs, m) for m in metrics}
    rows: list[list[Cell]] = []
    records: list[dict[str, object]] = []
    for i, r in enumerate(runs):
        row = [Cell(get(r)) for _, get in _COMPARISON_FACTS]
        row += [Cell(m.text(r), best=flags[m.key][i], note=m.is_note(r)) for m in metrics]
        rows.append(row)
        records.append(_record(r, fars, [m.key for m in metrics if flags[m.key][i]], classifiers))
    # fact columns nobody fills only take space
    n_facts = len(_COMPARISON_FACTS)
    keep = [j for j in range(n_facts + len(metrics)) if j == 0 or j >= n_facts or any(row[j].text for row in rows)]
    headers = [h for h, _ in _COMPARISON_FACTS] + [m.header for m in metrics]
    headers = [headers[j] for j in keep]
    rows = [[row[j] for j in keep] for row in rows]
    notes = ["Rates in %. FRR at a target FAR uses the threshold with the largest attained FAR <= target "
             "(no interpolation); the attained FAR is shown in parentheses. 'not measurable': the target is "
             "below 1/#impostors of the protocol. Best value per column in bold (among runs on the same protocol). "
             "Protocols by their short name (see the Protocols table); training facts in the Training runs table."]
    if len({protocol_group(r) for r in runs}) > 1:
        notes.append("The runs were verified on different protocols: compare numbers only within a protocol.")
    if classifiers:
        notes.append("Closed-set top-1 (top-5): `fvtool identify` on the same embeddings file: a classifier fitted on "
                     "part of each identity's images names the others (logreg = logistic regression, ncm = nearest "
                     "class mean, 1nn = nearest image); best among runs identified on the same images.")
    return Table("Comparison", headers, rows, records, notes)


def protocol_table(runs: Sequence[RunData]) -> Table:
    """The legend of the protocol short names: one row per protocol the runs were verified on."""
    headers = ["Protocol", "Full name", "Kind", "Images", "Identities", "Genuine", "Impostor", "Lowest FAR",
               "sha256"]
    rows, records, seen = [], [], set()
    for r in runs:
        key = protocol_group(r)
        if r.verify_dir is None or key in seen:
            continue
        seen.add(key)
        rec: dict[str, object] = {
            "alias": r.protocol_alias or r.protocol, "name": r.protocol, "kind": r.protocol_kind,
            "images": r.protocol_images, "identities": r.protocol_identities, "n_genuine": r.n_genuine,
            "n_impostor": r.n_impostor, "min_far": r.min_far, "sha256": r.protocol_sha256}
        records.append(rec)
        rows.append([Cell(str(rec["alias"] or "")), Cell(r.protocol or ""), Cell(r.protocol_kind or ""),
                     Cell(_int(r.protocol_images)), Cell(_int(r.protocol_identities)), Cell(_int(r.n_genuine)),
                     Cell(_int(r.n_impostor)), Cell("" if r.min_far is None else f"{r.min_far:.1e}"),
                     Cell((r.protocol_sha256 or "")[:12])])
    return Table("Protocols", headers, rows, records,
                 ["Genuine/impostor: comparisons scored. Lowest FAR = 1/#impostors: FRR at a smaller FAR target "
                  "is not measurable. sha256: the first 12 hex digits of the protocol's content hash."])


# ---- rendering ----------------------------------------------------------------------------------

def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(t: Table) -> str:
    def cell(c: Cell) -> str:
        s = _md_escape(c.text)
        if not s:
            return ""
        if c.best:
            return f"**{s}**"
        return f"*{s}*" if c.note else s

    lines = [
        "| " + " | ".join(_md_escape(h) for h in t.headers) + " |",
        "|" + "|".join("---" for _ in t.headers) + "|",
    ]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
    lines += ["", *[f"{n}" for n in t.footnotes]] if t.footnotes else []
    return "\n".join(lines) + "\n"


def _csv_value(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest round-trip representation: the exact value from the metrics file
    return str(v)


def to_csv(t: Table) -> str:
    if not t.records:
        return ""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = list(t.records[0])
    w.writerow(keys)
    for rec in t.records:
        w.writerow([_csv_value(rec.get(k)) for k in keys])
    return buf.getvalue()


def to_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
    body = []
    for row in t.rows:
        tds = []
        for c in row:
            kind = next((k for k, on in (("best", c.best), ("worse", c.worse), ("note", c.note)) if on), None)
            cls = f' class="{kind}"' if kind else ""
            tds.append(f"<td{cls}>{html.escape(c.text)}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    foot = "".join(f"<p class=\"footnote\">{html.escape(n)}</p>" for n in t.footnotes)
    return (f"<div class=\"table-wrap\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>{foot}")


# ---- paired comparison against the baseline ------------------------------------------------------

def _pp(v: float | None) -> str:
    return "" if v is None else f"{100 * v:+.2f}"


def paired_table(results: Sequence[PairedResult], fars: Sequence[float]) -> Table:
    """run - baseline for EER and FRR@FAR in percentage points, paired identity-bootstrap CI;
    a difference whose interval excludes 0 is marked (bold and 'significant')."""
    headers = ["Run", "Baseline", "ΔEER (pp) [95% CI]"] + [f"ΔFRR@FAR={far_name(f)} (pp) [CI]" for f in fars]
    headers += ["Bootstrap"]
    rows: list[list[Cell]] = []
    records: list[dict[str, object]] = []
    for res in results:
        by = {(d.metric, d.far_target): d for d in res.differences}
        row = [Cell(res.label), Cell(res.baseline)]
        rec: dict[str, object] = {"label": res.label, "baseline": res.baseline}
        for key, name in [(("eer", None), "eer"), *[(("frr_at_far", f), f"frr_at_far_{far_name(f)}") for f in fars]]:
            d = by.get(key)
            if d is None:
                row.append(Cell("n/a" if res.note else "", note=bool(res.note)))
            elif not d.measurable:
                row.append(Cell(NOT_MEASURABLE, note=True))
            elif d.diff is None:
                row.append(Cell("n/a", note=True))
            else:
                ci = "" if d.lo is None else f" [{_pp(d.lo)}, {_pp(d.hi)}]"
                sig = " significant" if d.significant else ""
                row.append(Cell(f"{_pp(d.diff)}{ci}{sig}", best=d.significant and d.diff < 0,
                                worse=d.significant and d.diff > 0))
            rec[f"{name}_run"] = None if d is None or not d.measurable else d.run_value
            rec[f"{name}_baseline"] = None if d is None or not d.measurable else d.baseline_value
            rec[f"{name}_diff"] = None if d is None or not d.measurable else d.diff
            rec[f"{name}_diff_lo"] = None if d is None or not d.measurable else d.lo
            rec[f"{name}_diff_hi"] = None if d is None or not d.measurable else d.hi
            rec[f"{name}_significant"] = None if d is None or not d.measurable else d.significant
        how = res.note or f"{res.replicates} replicates, seed {res.seed} ({res.source})"
        row.append(Cell(how, note=bool(res.note)))
        rec.update({"replicates": res.replicates, "seed": res.seed, "source": res.source, "note": res.note})
        rows.append(row)
        records.append(rec)
    notes = ["Differences run - baseline in percentage points (negative = fewer errors than the baseline). "
             "Interval: paired bootstrap over identities (both runs re-weighted by the same identity draw), "
             "percentile; 'significant' when it excludes 0 (bold: significantly fewer errors)."]
    return Table("Paired comparison with the baseline", headers, rows, records, notes)


# ---- training runs --------------------------------------------------------------------------------

def _last(history: Sequence[dict[str, float]], key: str) -> float | None:
    vals = [rec[key] for rec in history if key in rec]
    return vals[-1] if vals else None


def training_table(runs: Sequence[RunData]) -> Table:
    """One row per training run: the facts and the last validation numbers of its history (the run's
    own periodic validation, not the verify protocol)."""
    frr_keys = sorted({k for r in runs for rec in r.history for k in rec if k.startswith("val/frr@far=")},
                      key=lambda k: -float(k.split("=")[1]))
    facts = _TRAINING_FACTS
    headers = [h for h, _ in facts] + ["Train loss (last)", "Val balanced acc. (%)", "Val EER (%)"]
    headers += [f"Val FRR@{far_name(float(k.split('=')[1]))} (%)" for k in frr_keys]
    rows, records = [], []
    for r in runs:
        loss, eer = _last(r.history, "loss"), _last(r.history, "val/eer")
        acc = _last(r.history, "val/balanced_accuracy")
        frr = [_last(r.history, k) for k in frr_keys]
        # one row per training run: its name without the protocol a verify output added
        rows.append([Cell(r.base_label or r.label)] + [Cell(get(r)) for _, get in facts[1:]]
                    + [Cell("" if loss is None else f"{loss:.4g}"), Cell(pct(acc)),
                                                          Cell(pct(eer)), *[Cell(pct(v)) for v in frr]])
        rec: dict[str, object] = {"label": r.base_label or r.label, "loss": r.loss, "miner": r.miner,
                                  "backbone": r.backbone,
                                  "input_size": r.input_size, "train_images": r.train_images,
                                  "train_identities": r.train_identities, "epochs": r.epochs,
                                  "train_seconds": r.train_seconds, "train_img_per_s": r.train_img_per_s,
                                  "last_loss": loss,
                                  "last_val_balanced_accuracy": acc, "last_val_eer": eer}
        rec.update({f"last_val_frr_at_far_{k.split('=')[1]}": v for k, v in zip(frr_keys, frr, strict=True)})
        rec["run_dir"] = None if r.run_dir is None else str(r.run_dir)
        records.append(rec)
    keep = [j for j in range(len(headers)) if j == 0 or any(row[j].text for row in rows)]
    return Table("Training runs", [headers[j] for j in keep], [[row[j] for j in keep] for row in rows], records,
                 ["Train loss and Val columns: the last values of each run's history.jsonl; validation numbers are "
                  "the run's periodic validation on its own validation protocol, not a verify protocol.",
                  "Train time is wall-clock (training steps + periodic validation) and img/s is training images per "
                  "wall second of the steps, on the machine that trained and under whatever load it had: compare "
                  "them only between runs trained on the same, equally loaded machine. CPU time is not recorded."])
