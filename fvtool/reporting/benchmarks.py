"""Report sections for the benchmark protocols: IJB-B/C TAR@FAR and open-set identification (CMC, DIR).

Why a module of its own: these results have their own shape (TAR at FARs down to 1e-6 with the
insightface rule beside fvtool's; `fvtool-openset` JSONs with a CMC curve) and appear only when such
results are among the inputs, so the general comparison table stays as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from fvtool.reporting.figures import figure_style, plt, run_style
from fvtool.reporting.records import RunData
from fvtool.reporting.tables import Cell, Table

OPENSET_FORMAT = "fvtool-openset"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def ijb_table(runs: Sequence[RunData]) -> Table | None:
    """TAR (%) at FAR 1e-6 ... 1e-1 of every IJB verify output: fvtool's rule, then insightface's."""
    rows, records = [], []
    fars: list[float] = []
    for r in runs:
        ijb = r.metrics_raw.get("ijb")
        if not ijb:
            continue
        ops = {o["far_target"]: o for o in r.metrics_raw.get("operating_points", [])}
        fars = fars or sorted(ops)
        ins = {e["far_target"]: e for e in ijb.get("insightface_tar_at_far", [])}
        cells = [Cell(r.label), Cell(f"{ijb['variant'].upper()} ({ijb['templates']:,} templates, "
                                     f"{ijb['pairs']:,} pairs)")]
        rec: dict[str, object] = {"run": r.label, "protocol": ijb["variant"]}
        for f in fars:
            o = ops.get(f)
            ok = o is not None and o["measurable"]
            cells.append(Cell(_pct(o["tar"]) if ok else "n/m", note=not ok))
            rec[f"tar@{f:g}"] = o["tar"] if ok else None
        for f in fars:
            e = ins.get(f)
            cells.append(Cell("n/a" if e is None else f"{_pct(e['tar'])} @ {e['fpr']:.1e}"))
            rec[f"insightface_tar@{f:g}"] = None if e is None else e["tar"]
            rec[f"insightface_fpr@{f:g}"] = None if e is None else e["fpr"]
        rows.append(cells)
        records.append(rec)
    if not rows:
        return None
    headers = ["run", "protocol", *(f"TAR@{f:g}" for f in fars), *(f"insightface TAR@{f:g} (at FPR)" for f in fars)]
    return Table("IJB 1:1 template verification: TAR (%) at FAR", headers, rows, records, footnotes=[
        "TAR@FAR: fvtool's (bob's) threshold, the attained FAR never above the target; n/m: target below "
        "1/#impostor pairs. insightface TAR: their ijb_11.py rule (the ROC point whose FPR is nearest the "
        "target), with the FPR it really has. Pooling: " + str(runs[0].metrics_raw.get("ijb", {}).get("pooling",
                                                                                                      ""))])


def read_open_set(sources: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Every `fvtool-openset` JSON in the given files/folders (other files are skipped)."""
    import json

    files: list[Path] = []
    for src in sources:
        src = Path(src)
        files += sorted(src.glob("*.json")) if src.is_dir() else ([src] if src.is_file() else [])
    out = []
    for f in dict.fromkeys(p.resolve() for p in files):
        try:
            m = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("format") == OPENSET_FORMAT and m.get("version") == 1:
            out.append((f, m))
    return out


def _label(m: dict[str, Any]) -> str:
    return f"{m['embeddings']['name']} / {m['protocol']['name']}"


def open_set_table(results: Sequence[tuple[Path, dict[str, Any]]]) -> Table:
    ranks = list(results[0][1]["cmc"]["at"])
    fpirs = [d["fpir_target"] for d in results[0][1]["dir"]]
    rows, records = [], []
    for path, m in results:
        c = m["counts"]
        cells = [Cell(_label(m)), Cell(f"{c['gallery']:,} / {c['mated_probes']:,} / {c['nonmated_probes']:,}")]
        rec: dict[str, object] = {"result": _label(m), "json": str(path), **c}
        for r in ranks:
            v = m["cmc"]["at"].get(r)
            cells.append(Cell(_pct(v)))
            rec[f"rank{r}"] = v
        dirs = {d["fpir_target"]: d for d in m["dir"]}
        for f in fpirs:
            d = dirs.get(f)
            ok = d is not None and d["dir"] is not None
            cells.append(Cell((_pct(d["dir"]) + ("" if d["measurable"] else " (n/m)")) if ok else "n/a",
                              note=not ok or not d["measurable"]))
            rec[f"dir@fpir={f:g}"] = d["dir"] if ok else None
        rows.append(cells)
        records.append(rec)
    headers = ["result", "gallery / mated / non-mated probes", *(f"rank-{r} (%)" for r in ranks),
               *(f"DIR@FPIR={f:g} (%)" for f in fpirs)]
    return Table("Open-set identification: CMC and DIR at FPIR", headers, rows, records, footnotes=[
        "Rank-k: share of mated probes whose mate is among the k best gallery templates (bob cmc). DIR@FPIR: "
        "share of mated probes found at rank 1 above the threshold at which that share of non-mated probes "
        "raises an alarm (bob detection_identification_rate / false_alarm_rate). n/a: no non-mated probes "
        "(closed set) or a gallery smaller than k; n/m: FPIR below 1/#non-mated probes."])


def cmc_figure(results: Sequence[tuple[Path, dict[str, Any]]]) -> Figure:
    """CMC curves (identification rate against rank, log rank axis) of every open-set result."""
    with figure_style():
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        for i, (_p, m) in enumerate(results):
            ranks = np.asarray(m["cmc"]["ranks"], np.float64)
            rate = 100 * np.asarray(m["cmc"]["rate"], np.float64)
            ax.step(ranks, rate, where="post", lw=1.4, label=f"{_label(m)} (rank-1 {rate[0]:.1f}%)",
                    **run_style(i))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("rank")
        ax.set_ylabel("identification rate (%) of mated probes")
        ax.set_title("CMC")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
        fig.tight_layout()
    return fig
