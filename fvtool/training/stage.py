"""The train stage: options + workspace -> a resolved run (`TrainRun`) -> a trained run folder.

Why a library function and not CLI code: `fvtool train`, a torchrun rank, a rank spawned by
`--nproc` and the demo all start runs; they must resolve them by the same rules, and only the
command knows flag spellings. The rules, in order:

- Precedence: TrainConfig defaults < config file (TOML, or a run's config.json) or recipe
  (`--recipe`, fvtool/recipes) < explicit options (`overrides`: TrainConfig field -> value; None
  means "not given"). A recipe run records the recipe's name, sha256 and the options given on top
  in `config.recipe`.
- Workspace defaults (new runs only): `data` is the latest `align` output, else the embedded LFW
  subset; `split` is the latest split when it names an identity of the data. `split = "none"`
  trains on all identities without looking at the workspace. `train_pairs` (a pairs file,
  fvtool/training/pair_file.py) replaces the split: no workspace split is looked up, and both is an error.
- Paths that exist (data, split, init_from, a val-protocol file) are made absolute, so the saved
  config means the same from any directory and a resume can compare them.
- Run folder: `out`, else `<workspace>/runs/<name>` (default name LOSS-BACKBONE-TIMESTAMP, the
  same timestamp on every rank). A new run refuses a folder that already holds checkpoints.
- Resume: the run's own config.json + the given options; whether they may change is decided once,
  by the engine against the checkpoint (`training.config.check_resume`, RESUME_MAY_CHANGE).

`run_train` prints what the run does and its summary; `train_in_processes` runs it as N local
DDP ranks (`--nproc`), handing each rank the resolved `TrainRun` itself.
"""

from __future__ import annotations

import datetime as _dt
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp
from rich.markup import escape
from rich.table import Table

from fvtool.console import console, exit_on_error
from fvtool.data.dataset import load_image_set
from fvtool.errors import CheckFailed, InputError, Interrupted
from fvtool.protocols.splits import read_split
from fvtool.recipes import load_recipe
from fvtool.runtime import busy_advice
from fvtool.settings import EMBEDDED_DATA
from fvtool.training import distributed
from fvtool.training.config import TrainConfig, config_from_sources
from fvtool.training.engine import TrainResult, check_components
from fvtool.training.val_targets import parse_target
from fvtool.workspace import Workspace, set_workspace_override


@dataclass
class TrainRun:
    """A resolved training run: what to train, where, and the notes to show before it starts."""

    config: TrainConfig
    run_dir: Path
    resume: bool = False
    notes: list[str] = field(default_factory=list)


def _default_split(ws: Workspace, data: str, notes: list[str]) -> str | None:
    latest = ws.latest("split")
    if latest is None:
        return None
    try:
        split = read_split(latest)
        idents = set(load_image_set(data).identities)
    except InputError:
        return None
    if set(split.train) & idents:
        notes.append(f"using the workspace's latest split {latest}")
        return str(latest)
    notes.append(f"the workspace's latest split {latest} names no identity of {data}: not used")
    return None


def _absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """`split = "none"` -> None; existing data/split/init_from/val-protocol/val-target paths made absolute."""
    changes: dict[str, Any] = {}
    if cfg.split is not None and cfg.split.lower() == "none":
        changes["split"] = None
    for key in ("data", "split", "train_pairs", "init_from"):
        value = changes.get(key, getattr(cfg, key))
        if value is not None and Path(value).exists():
            changes[key] = str(Path(value).resolve())
    if cfg.val_protocol not in (None, "auto", "none") and Path(cfg.val_protocol).exists():
        changes["val_protocol"] = str(Path(cfg.val_protocol).resolve())
    if cfg.val_targets:  # NAME=SPEC with the default name filled in and a file SPEC made absolute
        targets = [parse_target(t) for t in cfg.val_targets]
        changes["val_targets"] = [f"{n}={Path(s).resolve() if Path(s).is_file() else s}" for n, s in targets]
    return replace(cfg, **changes) if changes else cfg


def config_from_recipe(name: str, overrides: dict[str, Any]) -> TrainConfig:
    """Recipe `name` (shipped, or a .toml path) < the given overrides, with its provenance recorded."""
    r = load_recipe(name)
    base = TrainConfig.from_dict(r.config, where=r.path)
    cfg = config_from_sources(None, overrides, base=base)
    given = cfg.to_dict()
    changed = {k: given[k] for k, v in overrides.items() if v is not None}
    return replace(cfg, recipe={"name": r.name, "sha256": r.sha256, "overrides": changed})


def resolve_train_run(overrides: dict[str, Any], *, config_file: Path | None = None, resume: bool = False,
                      out: Path | None = None, nproc: int | None = None, recipe: str | None = None,
                      workspace: Workspace | None = None) -> TrainRun:
    """The run these options ask for (see the module docstring for the rules).

    Joins the torchrun job of the environment, if any, so that every rank agrees on the run folder;
    `nproc` > 1 (spawn the ranks here) is refused inside such a job.
    """
    ws = workspace or Workspace.current()
    notes: list[str] = []
    name = overrides.get("name")
    if recipe is not None and config_file is not None:
        raise InputError("--recipe and --config both give the whole experiment; give one of them")
    if resume:
        if config_file is not None or recipe is not None:
            raise InputError("--resume continues a run with its own config (its config.json); drop "
                             + ("--config" if config_file is not None else "--recipe"))
        run_dir = Path(out or (ws.dir("train") / name if name else
                               ws.require_latest("train", "-o RUN_DIR", "fvtool train")))
        cfg_file = run_dir / "config.json"
        if not cfg_file.is_file():
            raise InputError(f"--resume: {cfg_file} does not exist; is {run_dir} a run folder?")
        cfg = _absolute_paths(config_from_sources(cfg_file, overrides))
        check_components(cfg)
        distributed.join_job(cfg.device, nproc)
        return TrainRun(cfg, run_dir, True, notes)
    cfg = config_from_sources(config_file, overrides) if recipe is None else config_from_recipe(recipe, overrides)
    if cfg.data is None:
        latest = ws.latest("align")
        cfg = replace(cfg, data=str(latest if latest is not None else EMBEDDED_DATA))
    if cfg.train_pairs is not None and cfg.split is not None and cfg.split.lower() != "none":
        raise InputError(f"--train-pairs {cfg.train_pairs} and --split {cfg.split} both say what trains; a pairs "
                         "file's train part trains and its val part validates: give one of them")
    if cfg.split is None and cfg.train_pairs is None:
        cfg = replace(cfg, split=_default_split(ws, cfg.data, notes))
    cfg = _absolute_paths(cfg)
    check_components(cfg)  # a misspelt --loss/--backbone fails here, before the run is announced
    distributed.join_job(cfg.device, nproc)
    stamp = distributed.agree(_dt.datetime.now().strftime("%Y%m%d-%H%M%S"))  # one run folder for every rank
    run_dir = Path(out or ws.dir("train") / (cfg.name or f"{cfg.loss}-{cfg.backbone}-{stamp}"))
    if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise InputError(f"run folder {run_dir} already holds checkpoints: add --resume to continue it, or "
                         "choose another --name / -o")
    return TrainRun(cfg, run_dir, False, notes)


def run_train(run: TrainRun, *, quiet: bool = False, workspace: Workspace | None = None) -> TrainResult:
    """Train `run` in this process (a DDP rank when it joined a job), printing notes, the data
    summary, per-epoch lines (unless `quiet`) and the final summary; records the run in the workspace.
    A run stopped by the collapse alarm raises CheckFailed after the summary."""
    ws = workspace or Workspace.current()
    cfg, run_dir = run.config, run.run_dir
    with distributed.rank_errors():
        advice = busy_advice() if not cfg.threads else None
        for n in [*run.notes, *([advice] if advice else [])]:
            console.print(f"[yellow]note:[/] {n}")
        console.print(f"training [bold]{cfg.loss}[/] ({cfg.input_size}px, {cfg.embedding_size}-d) from {cfg.data} "
                      f"-> {run_dir}")
        trainer = distributed.make_trainer(cfg, run_dir, resume=run.resume, show_progress=not quiet)
        for n in trainer.notes:
            console.print(f"[yellow]note:[/] {n}")
        d = trainer.data
        # the backbone as the method resolved it (the AE/VAE methods train their own conv-encoder)
        console.print(f"{len(d.rows)} training images of {d.num_classes} identities, method "
                      f"{trainer.method_spec.name} on [bold]{trainer.config.backbone}[/], {trainer.steps_per_epoch} "
                      f"batches/epoch, device {trainer.device}"
                      + (f", validation {d.validation.name} ({len(d.validation.rows)} images)" if d.validation else ""))
        run_dir.mkdir(parents=True, exist_ok=True)
        if trainer.is_main:
            ws.record("train", run_dir)
        shown = len(trainer.notes)
        try:
            result = trainer.fit()
        except KeyboardInterrupt:
            saved = (run_dir / "checkpoints" / "last.pt").is_file()
            raise Interrupted(f"at epoch {trainer.epoch + 1}, step {trainer.step}; "
                              + (f"rerun with --resume to continue from the last checkpoint: fvtool train --resume "
                                 f"-o {run_dir}" if saved else "before the first step, nothing was saved: rerun the "
                                 "same command to start again")) from None
        for n in result.notes[shown:]:
            console.print(f"[yellow]note:[/] {n}")
        print_summary(result, run_dir)
        if result.stopped.startswith("collapse"):
            raise CheckFailed(result.stopped)
    return result


def _rank_main(run: TrainRun, quiet: bool, workspace: Path) -> None:
    """One rank of `train_in_processes` (a spawned process): join the job, train, exit with the
    CLI's exit code for an error (the launcher reports the job's code)."""
    set_workspace_override(workspace)
    with exit_on_error():
        distributed.join_job(run.config.device, None)
        run_train(run, quiet=quiet)


def train_in_processes(run: TrainRun, nproc: int, *, quiet: bool = False, workspace: Workspace | None = None) -> int:
    """`fvtool train --nproc N`: train `run` as N DDP ranks on this machine; returns the job's exit code
    (0 when every rank succeeded). Each rank prints its own errors; rank 0 prints everything else."""
    ws = workspace or Workspace.current()
    try:
        distributed.spawn(_rank_main, nproc, (run, quiet, ws.root))
    except mp.ProcessExitedException as e:
        return int(e.exit_code) if e.exit_code and e.exit_code > 0 else 1
    except mp.ProcessRaisedException as e:
        sys.stderr.write(f"{e}\n")
        return 1
    return 0


def print_summary(result: TrainResult, run_dir: Path) -> None:
    """The end-of-run table on the console (stderr)."""
    t = Table(title="training summary", title_justify="left", show_header=False)
    t.add_column("what", no_wrap=True)
    t.add_column("value", overflow="fold")
    last = next((r for r in reversed(result.history) if r.get("kind") == "epoch"), None)
    t.add_row("run folder", str(run_dir))
    t.add_row("stopped", result.stopped)
    t.add_row("epochs / steps", f"{result.epochs_done} / {result.steps}")
    t.add_row("time", f"{result.seconds:.1f} s ({result.img_per_s:.0f} img/s in training steps)")
    if last is not None:
        acc = f", train accuracy {last['train_accuracy']:.3f}" if last.get("train_accuracy") is not None else ""
        t.add_row("last epoch", f"loss {last['loss']:.4f}{acc}")
        if last.get("val"):
            v = last["val"]
            t.add_row("last validation", ", ".join(f"{k.replace('_', ' ')} {v[k]:.4f}"
                                                   for k in ("balanced_accuracy", "eer", "val_loss", "val_accuracy")
                                                   if k in v))
        if (last.get("learning") or {}).get("not_learning"):
            t.add_row("[bold yellow]warning[/]", escape(last["learning"]["message"]))
    if result.best:
        t.add_row("best", f"{result.best['metric']} {result.best['value']:.4f} at epoch {result.best['epoch']}, "
                          f"step {result.best['step']}")
    best = f", {result.best_checkpoint}" if result.best_checkpoint else ""
    t.add_row("checkpoints", f"{result.last_checkpoint}{best}")
    console.print(t)
    console.print(f"next: [bold]fvtool embed {run_dir}[/]")
