"""The main job: align -> pairs -> train (several losses) -> embed -> verify -> report, end to end.

Why it drives the CLI in-process for most stages: the demo is also the reference for how users
chain stages in shell scripts, so it runs the commands they would type (printed as it goes), with
the same defaults, checks and outputs. Training takes a config instead (`LOSS_OPTIONS` are
TrainConfig fields): the train stage resolves it by the same rules as `fvtool train`
(fvtool/training/stage.py), and the printed line lists the config keys the demo sets. Every
stage is resumable or cheap to rerun, so a second `fvtool demo` reuses what is already there.

Protocol design (identity-disjoint by construction): the aligned embedded subset (158 LFW
identities x 10 images) is split by identity 70/10/20 (seeded); the networks train on the
train part and validate on the val part; evaluation uses only the test part:
  * k-fold pairs (LFW style, same/different pairs per fold) -> k-fold accuracy and EER;
  * all pairs of the test images (MEDS-II style) -> FRR at FAR 1e-3 / 1e-4 / 1e-5, where 1e-5
    is reported "not measurable" because ~50k impostor pairs cannot resolve it (that is the point).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from fvtool.console import console
from fvtool.runtime import busy_threads
from fvtool.settings import EMBEDDED_DATA
from fvtool.verification.record import VerifyMetrics
from fvtool.workspace import Workspace

DEFAULT_LOSSES = ("softmax", "arcface", "triplet")
#: per-loss TrainConfig fields: triplet trains on P x K batches with batch-hard mining (FaceNet-style online mining)
LOSS_OPTIONS: dict[str, dict[str, Any]] = {
    "triplet": {"mining": "hard", "lr": 0.05},
    "contrastive": {"mining": "hard", "lr": 0.05},
}


@dataclass
class DemoPlan:
    data: Path = EMBEDDED_DATA
    losses: tuple[str, ...] = DEFAULT_LOSSES
    epochs: int = 12
    input_size: int = 64
    align_size: int = 112
    folds: int = 4
    pairs_per_fold: int = 100
    seed: int = 0
    threads: int | None = None
    log: list[tuple[str, float]] = field(default_factory=list)


def _announce(line: str) -> None:
    if console.is_terminal:
        console.rule(f"[bold]{escape(line)}")
    else:  # a log file: the whole line (a rule would cut it at the console width)
        console.print(line, markup=False, soft_wrap=True)


def _run(args: list[str], plan: DemoPlan) -> None:
    from fvtool.cli import app  # the CLI imports the stages; keep `import fvtool.pipeline` light

    _announce(f"$ fvtool {shlex.join(args)}")
    t0 = time.perf_counter()
    app(args=args, standalone_mode=False)
    plan.log.append((" ".join(args[:2]) if args[0] == "pairs" else args[0], time.perf_counter() - t0))


def _train(overrides: dict[str, Any], run_dir: Path, resume: bool, plan: DemoPlan) -> None:
    from fvtool.training.stage import resolve_train_run, run_train  # torch: only when the demo trains

    shown = " ".join(f"{k}={v}" for k, v in overrides.items() if v is not None)
    _announce(f"train {shown} -o {run_dir}{' (resume)' if resume else ''}")
    t0 = time.perf_counter()
    run_train(resolve_train_run(overrides, resume=resume, out=run_dir), quiet=False)
    plan.log.append(("train", time.perf_counter() - t0))


def run_demo(plan: DemoPlan) -> Path:
    """Run the whole pipeline in the current workspace; returns the report's HTML path."""
    ws = Workspace.current()
    t_start = time.perf_counter()
    aligned = ws.dir("align") / plan.data.name
    split = ws.dir("split") / "demo-split.json"
    kfold = ws.dir("protocol") / "demo-kfold.json"
    allpairs = ws.dir("protocol") / "demo-allpairs.json"
    if plan.threads is None:  # one choice for every stage, printed in each command (fvtool/runtime.py)
        plan.threads, note = busy_threads()
        if note:
            console.print(f"[yellow]note:[/] {note}; every stage gets --threads 1")
    threads = ["--threads", str(plan.threads)] if plan.threads else []
    seed = ["--seed", str(plan.seed)]

    _run(["align", str(plan.data), "-o", str(aligned), "--size", str(plan.align_size), *threads], plan)
    _run(["pairs", "split", str(aligned), "--fractions", "0.7,0.1,0.2", *seed, "--name", "demo-split",
          "-o", str(split)], plan)
    _run(["pairs", "generate", str(aligned), "--split", str(split), "--part", "test", "--folds", str(plan.folds),
          "--n", str(plan.pairs_per_fold), *seed, "--name", "demo-kfold", "-o", str(kfold)], plan)
    _run(["pairs", "allpairs", str(aligned), "--split", str(split), "--part", "test", "--name", "demo-allpairs",
          "-o", str(allpairs)], plan)

    verify_dirs: list[Path] = []
    for loss in plan.losses:
        run_dir = ws.dir("train") / f"demo-{loss}"
        emb = ws.dir("embed") / f"demo-{loss}.h5"
        overrides = {"data": str(aligned), "split": str(split), "loss": loss, "epochs": plan.epochs,
                     "input_size": plan.input_size, "seed": plan.seed, "threads": plan.threads,
                     **LOSS_OPTIONS.get(loss, {})}
        # a finished run returns at once; an interrupted one continues
        _train(overrides, run_dir, (run_dir / "checkpoints" / "last.pt").exists(), plan)
        _run(["embed", str(run_dir), "--data", str(aligned), "-o", str(emb), *threads], plan)
        for proto, tag in ((kfold, "kfold"), (allpairs, "allpairs")):
            out = ws.dir("verify") / f"demo-{loss}-{tag}"
            far = ["--far", "1e-3", "--far", "1e-4", "--far", "1e-5"] if tag == "allpairs" else []
            _run(["verify", str(emb), "--protocol", str(proto), *far, "-o", str(out)], plan)
            verify_dirs.append(out)

    report_dir = ws.dir("report") / "demo"
    _run(["report", *map(str, verify_dirs), "-o", str(report_dir), "--fars", "1e-2,1e-3,1e-4,1e-5",
          "--bootstrap", "200", "--title", "fvtool demo: losses compared on held-out LFW identities"], plan)
    _summary(plan, verify_dirs, time.perf_counter() - t_start)
    html = report_dir / "report.html"
    console.print(f"\n[bold green]done[/] in {time.perf_counter() - t_start:.0f} s. Report: [bold]{html}[/]")
    return html


def _fmt(v: object, pct: bool = True) -> str:
    if v is None:
        return "n/m"
    return f"{100 * float(v):.2f}%" if pct else f"{v}"


def _summary(plan: DemoPlan, verify_dirs: list[Path], elapsed: float) -> None:
    t = Table(title="demo results (test identities only)")
    for col in ("loss", "protocol", "k-fold acc.", "EER", "FRR@1e-3", "FRR@1e-4", "FRR@1e-5"):
        t.add_column(col, no_wrap=True)
    for d in verify_dirs:
        m = VerifyMetrics.read(d)

        def frr(f: float, m: VerifyMetrics = m) -> str:
            op = m.point(f)
            return "-" if op is None else (_fmt(op.frr) if op.measurable else "n/m")

        kf = (m.kfold or {}).get("grid") or {}
        acc = f"{100 * kf['accuracy_mean']:.2f} ± {100 * kf['accuracy_std']:.2f}%" if kf else "-"
        loss, tag = d.name.removeprefix("demo-").rsplit("-", 1)
        t.add_row(loss, tag, acc, _fmt(m.eer["value"]),
                  frr(1e-3), frr(1e-4), frr(1e-5))
    console.print(t)
    stages = Table(title=f"stage times (total {elapsed:.0f} s)")
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    totals: dict[str, float] = {}
    for name, sec in plan.log:
        totals[name] = totals.get(name, 0.0) + sec
    for name, sec in totals.items():
        stages.add_row(name, f"{sec:.1f}")
    console.print(stages)
    console.print("n/m = not measurable: the target FAR is below 1 / (number of impostor comparisons).")
