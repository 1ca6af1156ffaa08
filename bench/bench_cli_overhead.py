"""What a user waits for around the work: `--help` start-up and each command's fixed cost.

Two tables from one run, rounds interleaved (every round runs every measurement once, in the same
order), so a loaded shared machine slows all of them alike; medians (and minima) are reported.

1. `--help` wall time of `fvtool --help` and of every `fvtool <cmd> --help`, beside
   `python -c "import typer"` (the issue's reference), `python -c pass` (the interpreter alone) and
   a bare Typer app with fvtool's root options rendering its own and a subcommand's help (Typer's floor:
   its rich help imports rich.markdown, and a subcommand's help first coerces the root options
   through pydantic).
2. Fixed cost of align, train, embed, verify and report on a small slice of the embedded subset
   (data/lfw-subset): process wall time minus the time inside the work loop, beside the import
   time of the libraries the command really needs. The work loop is
     align   `_Runner.run` (detect, align, write every image)
     train   the epochs' step time + the validation passes (from the run's history.jsonl)
     embed   `embed_rows` (forward passes)
     verify  scoring + metrics (`_score`, `_operating_points`, `_threshold_free`, k-fold)
     report  drawing and encoding the figures (`build_figures`) and rendering the HTML/Markdown
   measured in the command's own process by timing wrappers installed before the CLI runs.

    .venv/bin/python bench/bench_cli_overhead.py                  # 5 rounds, 20 identities (200 images)
    .venv/bin/python bench/bench_cli_overhead.py --rounds 3 --identities 158 --skip-help

Bytecode: the numbers assume compiled .pyc files, as an installed fvtool has; run once before
(the first round is a warm-up and is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fvtool.settings import EMBEDDED_DATA  # noqa: E402

# -- part 1: --help --------------------------------------------------------------------------
TYPER_FLOOR_APP = '''
import sys
from pathlib import Path
from typing import Annotated
import typer
app = typer.Typer(add_completion=False)
@app.callback()
def root(workspace: Annotated[Path | None, typer.Option("--workspace", envvar="X_WS")] = None,
         version: Annotated[bool, typer.Option("--version", is_eager=True)] = False) -> None:
    "root"
@app.command()
def cmd(path: Annotated[Path | None, typer.Argument()] = None, n: int = 1, name: str = "x") -> None:
    "a command"
@app.command()
def other(n: int = 1) -> None:
    "another"
app(args=sys.argv[1:])
'''

#: what each command really needs to import (beyond the interpreter): the floor its fixed cost is
#: compared with. facenet_pytorch's MTCNN imports torchvision, which imports torch._dynamo; any
#: torch optimizer imports torch._dynamo on construction (torch._disable_dynamo), so training does,
#: and `train --log auto` (the default) writes TensorBoard events when tensorboard is installed.
NEEDS = {
    "align": "import typer, rich.progress, numpy, PIL.Image, torch, facenet_pytorch",
    "train": "import typer, rich.progress, numpy, PIL.Image, torch, torch._dynamo, torch.utils.tensorboard",
    "embed": "import typer, rich.progress, numpy, h5py, PIL.Image, torch",
    "verify": "import typer, rich.progress, numpy, h5py",
    "report": "import typer, rich.progress, numpy, h5py, matplotlib.pyplot, PIL.Image",
}

WORK = {  # module -> functions whose time is the work loop (see the docstring)
    "align": {"fvtool.align.stage": ["_Runner.run"]},
    "embed": {"fvtool.embedding": ["embed_rows"]},
    "verify": {"fvtool.verification.stage": ["_score", "_operating_points", "_threshold_free", "kfold_report"]},
    "report": {"fvtool.reporting.stage": ["build_figures", "render_html", "render_markdown"]},
    "train": {},
}

TIMED_MAIN = '''
import atexit, importlib, json, sys, time
spec, out = json.loads(sys.argv[1]), sys.argv[2]
total = [0.0]
depth = [0]
def wrap(owner, name):
    f = getattr(owner, name)
    def timed(*a, **k):
        depth[0] += 1
        t = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                total[0] += time.perf_counter() - t
    setattr(owner, name, timed)
for mod, names in spec.items():
    m = importlib.import_module(mod)
    for n in names:
        owner = m
        *path, last = n.split(".")
        for p in path:
            owner = getattr(owner, p)
        wrap(owner, last)
atexit.register(lambda: open(out, "w").write(json.dumps(total[0])))
from fvtool.cli import main
main(sys.argv[3:])
'''


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # installed packages run from .pyc
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _wall(cmd: list[str], cwd: Path | None = None) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=cwd)
    w = time.perf_counter() - t
    if r.returncode != 0:
        shown = [c if len(c) < 200 else "<code>" for c in cmd]
        raise SystemExit(f"{' '.join(shown)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return w


def help_table(rounds: int) -> list[tuple[str, float, float]]:
    py = sys.executable
    floor_app = Path(tempfile.mkdtemp(prefix="fv-help-")) / "typer_floor.py"
    floor_app.write_text(TYPER_FLOOR_APP)
    from typer.main import get_command

    from fvtool.cli import app

    cases: dict[str, list[str]] = {
        "python -c pass": [py, "-c", "pass"],
        'python -c "import typer" (reference)': [py, "-c", "import typer"],
        "bare Typer app: --help (floor)": [py, str(floor_app), "--help"],
        "bare Typer app: cmd --help (floor)": [py, str(floor_app), "cmd", "--help"],
        "fvtool --help": [py, "-m", "fvtool", "--help"],
    }
    for name in get_command(app).commands:  # type: ignore[attr-defined]
        cases[f"fvtool {name} --help"] = [py, "-m", "fvtool", name, "--help"]
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(rounds + 1):
        for k, cmd in cases.items():
            w = _wall(cmd)
            if r:  # round 0 warms the caches
                times[k].append(w)
    shutil.rmtree(floor_app.parent)
    return [(k, statistics.median(v), min(v)) for k, v in times.items()]


# -- part 2: fixed cost per command ------------------------------------------------------------
def _timed(cmd_name: str, args: list[str], tmp: Path) -> tuple[float, float]:
    """(wall, seconds in the work loop) of `fvtool <args>` in a fresh process."""
    out = tmp / f"work-{cmd_name}.json"
    out.unlink(missing_ok=True)
    wall = _wall([sys.executable, "-c", TIMED_MAIN, json.dumps(WORK[cmd_name]), str(out), *args])
    return wall, json.loads(out.read_text())


def _history_work(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()]
    steps = sum(r.get("time_s", 0.0) for r in rows if r.get("kind") == "epoch")
    val = sum((r.get("val") or {}).get("time_s", 0.0) for r in rows if r.get("kind") == "eval")
    val += sum((r.get("val") or {}).get("time_s", 0.0) for r in rows if r.get("kind") == "epoch")
    return steps + val


def fixed_table(rounds: int, identities: int, threads: int) -> list[tuple[str, float, float, float, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="fv-fixed-"))
    data = tmp / "data"
    data.mkdir()
    for d in sorted(p for p in EMBEDDED_DATA.iterdir() if p.is_dir())[:identities]:
        shutil.copytree(d, data / d.name)
    n_images = sum(1 for _ in data.rglob("*.jpg"))
    t = ["--threads", str(threads)]
    walls: dict[str, list[float]] = {k: [] for k in NEEDS}
    works: dict[str, list[float]] = {k: [] for k in NEEDS}
    imports: dict[str, list[float]] = {k: [] for k in NEEDS}
    try:
        for r in range(rounds + 1):
            ws = tmp / f"ws{r}"
            common = ["--workspace", str(ws)]
            aligned, run, emb = ws / "aligned", ws / "run", ws / "emb.h5"
            res = {"align": _timed("align", [*common, "align", str(data), "-o", str(aligned), "-q", *t], tmp)}
            subprocess.run([sys.executable, "-m", "fvtool", *common, "pairs", "generate", str(aligned), "--folds",
                            "2", "--n", "40", "--seed", "0"], check=True, capture_output=True, env=_env())
            w, _ = _timed("train", [*common, "train", "--data", str(aligned), "--backbone", "resnet_small",
                                    "--input-size", "64", "--epochs", "1", "--batch-size", "32", "-o", str(run), "-q",
                                    *t], tmp)
            res["train"] = (w, _history_work(run))
            res["embed"] = _timed("embed", [*common, "embed", str(run), "--data", str(aligned), "-o", str(emb),
                                            "-q", *t], tmp)
            res["verify"] = _timed("verify", [*common, "verify", str(emb), "-o", str(ws / "verify"), "-q"], tmp)
            res["report"] = _timed("report", [*common, "report", str(ws / "verify"), str(run), "-o",
                                              str(ws / "report"), "--bootstrap", "100", "-q"], tmp)
            for k, needs in NEEDS.items():
                imp = _wall([sys.executable, "-c", needs])
                if r:
                    walls[k].append(res[k][0])
                    works[k].append(res[k][1])
                    imports[k].append(imp)
            shutil.rmtree(ws)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nfixed cost per command ({n_images} images of {identities} identities, --threads {threads}; "
          f"medians of {rounds} rounds)")
    rows = []
    for k in NEEDS:
        fixed = [w - x for w, x in zip(walls[k], works[k], strict=True)]
        rows.append((k, statistics.median(walls[k]), statistics.median(works[k]), statistics.median(fixed),
                     statistics.median(imports[k])))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--identities", type=int, default=20, help="identities of data/lfw-subset (10 images each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-help", action="store_true")
    ap.add_argument("--skip-fixed", action="store_true")
    a = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    if not a.skip_help:
        rows = help_table(a.rounds)
        ref = next(m for k, m, _ in rows if "reference" in k)
        print(f"\n--help wall time, median (min) of {a.rounds} interleaved rounds; ratio = median / import typer")
        print(f"| {'command':<40} | median s | min s | x import typer |")
        print(f"|{'-' * 42}|---------:|------:|---------------:|")
        for k, med, mn in rows:
            print(f"| {k:<40} | {med:8.3f} | {mn:5.3f} | {med / ref:14.2f} |")
    if not a.skip_fixed:
        rows2 = fixed_table(a.rounds, a.identities, a.threads)
        print("| command | wall s | work loop s | fixed s | import of what it needs s | fixed / import |")
        print("|---|---:|---:|---:|---:|---:|")
        for k, wall, work, fixed, imp in rows2:
            print(f"| {k} | {wall:.2f} | {work:.2f} | {fixed:.2f} | {imp:.2f} | {fixed / imp:.2f} |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
