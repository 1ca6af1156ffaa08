"""`fvtool train`: parse options into a TrainConfig, resolve workspace defaults, call the engine.

Precedence: built-in defaults < `--config file.toml` (or a run's config.json) < explicit options.
Every option defaults to None here so that "not given" is distinguishable from "given the default".
"""

import datetime as _dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fvtool.console import console
from fvtool.cpu_load import busy_advice
from fvtool.errors import CheckFailed, InputError, Interrupted
from fvtool.settings import EMBEDDED_DATA
from fvtool.workspace import Workspace

_HELP_EPILOG = (
    "Examples:  fvtool train --loss arcface --backbone resnet_small --epochs 20   |   "
    "fvtool train --loss triplet --mining hard --pk 16 4   |   fvtool train --loss vae --recon bce --beta 1   |   "
    "fvtool train --config exp.toml   |   fvtool train --resume   |   fvtool train --list"
)


def parse_options(items: list[str] | None, option: str) -> dict[str, Any]:
    """`KEY=VALUE` pairs; values are read as JSON when they parse (numbers, true/false, lists), else text."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{option} {item!r}: write KEY=VALUE (e.g. {option} label_smoothing=0.1)")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _config_file_dict(path: Path) -> dict[str, Any]:
    """A TOML experiment file, or a run's config.json (its "config" section)."""
    from fvtool.training.config import load_toml

    if path.suffix == ".json":
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: cannot read config JSON ({e})") from None
        return d.get("config", d)
    return load_toml(path)


def _default_data(ws: Workspace) -> str:
    latest = ws.latest("align")
    return str(latest if latest is not None else EMBEDDED_DATA)


def _default_split(ws: Workspace, data: str, notes: list[str]) -> str | None:
    latest = ws.latest("split")
    if latest is None:
        return None
    from fvtool.data.dataset import load_image_set
    from fvtool.protocols.splits import read_split

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


def _list_components() -> None:
    from fvtool.losses.registry import loss_specs
    from fvtool.mining.registry import miner_specs
    from fvtool.models.registry import backbone_specs
    from fvtool.training.methods import method_specs

    for title, rows in (
        ("backbones (--backbone)", [(n, s.summary) for n, s in backbone_specs().items()]),
        ("losses (--loss)", [(n, f"[{s.family}] {s.summary}") for n, s in loss_specs().items()]),
        ("miners (--mining)", [(n + (f" ({', '.join(s.aliases)})" if s.aliases else ""), s.summary)
                               for n, s in miner_specs().items()]),
        ("methods (--method; chosen from --loss by default)",
         [(n, f"{s.summary} (losses: {', '.join(s.losses) or 'classification/metric'})")
          for n, s in method_specs().items()]),
    ):
        t = Table(title=title, title_justify="left", show_header=False)
        for r in rows:
            t.add_row(*(escape(c) for c in r))
        console.print(t)


def _summary(result: Any, run_dir: Path) -> None:
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
                                                   for k in ("balanced_accuracy", "eer") if k in v))
        if (last.get("learning") or {}).get("not_learning"):
            t.add_row("[bold yellow]warning[/]", escape(last["learning"]["message"]))
    if result.best:
        t.add_row("best", f"{result.best['metric']} {result.best['value']:.4f} at epoch {result.best['epoch']}, "
                          f"step {result.best['step']}")
    best = f", {result.best_checkpoint}" if result.best_checkpoint else ""
    t.add_row("checkpoints", f"{result.last_checkpoint}{best}")
    console.print(t)
    console.print(f"next: [bold]fvtool embed {run_dir}[/]")


def _abs_target(text: str) -> str:
    """NAME=SPEC with the default name filled in and a file SPEC made absolute (config.json works from anywhere)."""
    from fvtool.training.val_targets import parse_target

    name, spec = parse_target(text)
    return f"{name}={Path(spec).resolve() if Path(spec).is_file() else spec}"


def train_command(
    data: Annotated[str | None, typer.Option("--data", help="Aligned folder (with manifest.csv), manifest file or "
                    "identity folder. Default: the workspace's latest `align` output, else the embedded LFW "
                    "subset.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Identity split (fvtool-split JSON from `fvtool pairs "
                     "split`): trains on its train part; its val part validates. Default: the workspace's latest split "
                     "if it fits the data, else all identities (with a warning). `none` trains on all.")] = None,
    val_protocol: Annotated[str | None, typer.Option("--val-protocol", help="Validation protocol: a protocol file, a "
                            "preset (meds, ms1m: all pairs of the split's val images), `auto` (all pairs of the "
                            "split's val identities; the default) or `none`. Checked for identity leakage against the "
                            "training identities.")] = None,
    val_target: Annotated[list[str] | None, typer.Option("--val-target", help="Extra validation set, evaluated at "
                          "every --eval-every point beside --val-protocol (repeatable; insightface-style lfw, "
                          "cfp_fp, agedb_30): [NAME=]FILE.bin (an insightface .bin, e.g. from `fvtool interop "
                          "bin-write`), "
                          "[NAME=]PROTOCOL_FILE over the training data, or lfw. Its metrics are NAME/eer, "
                          "NAME/frr@far=... in history.jsonl and the report; --select-metric NAME/eer selects on "
                          "it.", show_default=False)] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Loss or method: softmax, normface, sphereface, cosface, "
                    "arcface, combined_margin, center, adaface, magface, curricularface, triplet, contrastive, margin, "
                    "hard-margin, npair, circle, supcon, siamese-bce, ae, vae (`--list` shows all). "
                    "Default softmax.")] = None,
    partial_fc: Annotated[float | None, typer.Option("--partial-fc", help="Partial FC for classification losses: "
                          "shard the class weights over the DDP processes (each holds C/N rows; features are "
                          "all-gathered, the softmax reduced across processes) and keep this fraction R in (0, 1] of "
                          "each shard's negative classes per step (the batch's classes always); 1.0 = exact full "
                          "softmax. Off by default (replicated weights).", metavar="R")] = None,
    mining: Annotated[str | None, typer.Option("--mining", help="Miner for pair/triplet losses: random, semihard, "
                      "hard (batch-hard), all (batch-all), hard-negative, distance-weighted. Default per loss: "
                      "triplet semihard, margin and hard-margin distance-weighted, contrastive and circle every pair "
                      "of the batch; npair and supcon take no miner.")] = None,
    margin: Annotated[float | None, typer.Option("--margin", help="The loss's margin. Defaults: arcface 0.5 (radians), "
                      "cosface 0.35, sphereface 4 (integer m), adaface 0.4, curricularface 0.5, triplet 0.2, "
                      "contrastive 1.0, margin 0.2, circle 0.25; combined_margin takes --loss-opt m1=1 m2=0.5 "
                      "m3=0 instead, magface --loss-opt l_margin=0.45 u_margin=0.8.")] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="Logit scale s. Default for normface, cosface, "
                     "arcface, combined_margin, adaface, magface and curricularface: AdaCos's sqrt(2) ln(C - 1) for C "
                     "training identities (6.6 for 110, 9.8 for 1,000, 16.1 for 85k; the papers' s = 64 suits 10k+ "
                     "only), recorded in config.json; sphereface 1 (times the feature norm); circle 256.")] = None,
    loss_opt: Annotated[list[str] | None, typer.Option("--loss-opt", help="Other loss option KEY=VALUE "
                        "(repeatable), e.g. label_smoothing=0.1, center_weight=0.01.")] = None,
    mining_opt: Annotated[list[str] | None, typer.Option("--mining-opt",
                          help="Miner option KEY=VALUE (repeatable).")] = None,
    method: Annotated[str | None, typer.Option("--method",
                      help="Training method (default: chosen from --loss).")] = None,
    method_opt: Annotated[list[str] | None, typer.Option("--method-opt", help="Method option KEY=VALUE (repeatable), "
                          "e.g. head=arcface head_weight=0.1 for the AE/VAE.")] = None,
    recon: Annotated[str | None, typer.Option("--recon", help="AE/VAE reconstruction loss: bce or mse.")] = None,
    beta: Annotated[float | None, typer.Option("--beta", help="VAE: weight of the KL term.")] = None,
    kl_warmup: Annotated[int | None, typer.Option("--kl-warmup",
                         help="VAE: epochs of linear KL warm-up (0: off).")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="Backbone network (default resnet_small; "
                        "`--list` shows all).")] = None,
    backbone_opt: Annotated[list[str] | None, typer.Option("--backbone-opt", help="Backbone option KEY=VALUE "
                            "(repeatable), e.g. dropout=0.2.")] = None,
    embedding_size: Annotated[int | None, typer.Option("--embedding-size",
                              help="Embedding dimension (default 128).")] = None,
    input_size: Annotated[int | None, typer.Option("--input-size", help="Square input side in pixels (default 64); "
                          "images are decoded once into a cache at this size.")] = None,
    crop: Annotated[float | None, typer.Option("--crop", help="Central fraction of each image kept before resizing "
                    "(default 1.0; e.g. 0.5 for unaligned 250x250 LFW).")] = None,
    augment: Annotated[str | None, typer.Option("--augment", help="Augmentations, comma-separated, each optionally "
                       "=STRENGTH: flip, shift, scale=0.9:1.1, rotate, pad, blur, brightness, contrast; `none` for "
                       "none. Default: flip.")] = None,
    normalise: Annotated[str | None, typer.Option("--normalise", help="Input normalisation: pm1 ([-1, 1], default), "
                         "unit ([0, 1]) or imagenet; AE/VAE targets are always de-normalised to [0, 1].")] = None,
    cap: Annotated[int | None, typer.Option("--cap", help="At most this many images per identity per epoch "
                   "(a fresh random subset each epoch).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs (default 10).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per batch (default 128).")] = None,
    pk: Annotated[tuple[int, int] | None, typer.Option("--pk", help="P identities x K images per batch (metric "
                  "losses; default P = batch/4, K = 4).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default 0.1).")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="sgd (Nesterov momentum, default), adam or "
                         "adamw. Weight decay never applies to norms and biases.")] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="LR schedule: cosine (default), step, onecycle, "
                        "constant, or plateau (drop 10x when validation stops improving, restart from the best "
                        "weights).")] = None,
    warmup_epochs: Annotated[float | None, typer.Option("--warmup-epochs", help="Linear LR warm-up (epochs). "
                             "Default 1 for normface, cosface, arcface, combined_margin, adaface, magface and "
                             "curricularface (the losses with the AdaCos scale), else 0.")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="Weight decay (default 5e-4).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Seed of everything random (default 0).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto (default), cpu or cuda.")] = None,
    amp: Annotated[str | None, typer.Option("--amp", help="Mixed precision: auto (bf16/fp16 on CUDA, off on CPU), "
                   "off, bf16, fp16.")] = None,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")] = None,
    log: Annotated[str | None, typer.Option("--log", help="Extra live log of the run: tensorboard (scalars and the "
                   "validation DET curve in <run>/tb/; `tensorboard --logdir <run>/tb`), none, or auto (default: "
                   "tensorboard when the tensorboard package is installed).")] = None,
    batchnorm: Annotated[str | None, typer.Option("--batchnorm", help="Batch-norm layers: batch (statistics of "
                         "each process's part of the batch; default), sync (SyncBatchNorm over all processes; CUDA "
                         "only) or frozen (eval mode: running statistics, affine parameters still learn).")] = None,
    sync_bn: Annotated[bool, typer.Option("--sync-bn", help="Same as --batchnorm sync: batch-norm statistics over "
                       "the global batch of all DDP processes (CUDA only).")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Train with N processes on this machine "
                     "(DistributedDataParallel; gloo on the CPU, NCCL with one GPU each), like `torchrun "
                     "--nproc_per_node N -m fvtool train ...`. --batch-size stays the GLOBAL batch, split evenly "
                     "over the processes.")] = None,
    eval_every: Annotated[str | None, typer.Option("--eval-every", help="Validate every N epochs (`2`, `2epochs`) or "
                          "steps (`500steps`); 0 = never (default 1epoch).")] = None,
    select_metric: Annotated[str | None, typer.Option("--select-metric", help="Metric that picks best.pt and drives "
                             "early stopping/plateau: eer (default), balanced_accuracy (1 - HTER), accuracy (raw: "
                             "misleads on imbalanced all-pairs protocols), auc, loss or frr@far=1e-4; NAME/eer etc. "
                             "for a --val-target.")] = None,
    early_stop: Annotated[int | None, typer.Option("--early-stop", help="Stop after N evaluations without "
                          "improvement of --select-metric.")] = None,
    collapse_patience: Annotated[int | None, typer.Option("--collapse-patience", help="Metric losses: stop after N "
                                 "consecutive collapsed epochs (default 2).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in -o/--name (default: the latest run) "
                      "from its last checkpoint; the loss curve continues exactly as if never interrupted. Options "
                      "other than --epochs/--early-stop/--device/--threads/--amp/--log must not change.")] = False,
    init_from: Annotated[str | None, typer.Option("--init-from", help="Start the embedder from a trained run or "
                         "checkpoint (fine-tuning, e.g. softmax -> triplet at a lower --lr).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML experiment file (or a run's config.json); "
                      "options given here override it.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default LOSS-BACKBONE-TIMESTAMP).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                   help="Run folder (default <workspace>/runs/<name>).")] = None,
    list_: Annotated[bool, typer.Option("--list",
                     help="List backbones, losses, miners and methods, then exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines.")] = False,
) -> None:
    """Train a face embedder with a loss; writes a run folder (config.json, history.jsonl, checkpoints/)."""
    from fvtool.data.transforms import AugmentConfig
    from fvtool.training.config import TrainConfig, config_from_sources
    from fvtool.training.distributed import agree, join_job, launch_train_processes, rank_errors
    from fvtool.training.engine import RESUME_MAY_CHANGE, check_components

    if list_:
        _list_components()
        return
    ws = Workspace.current()
    notes: list[str] = []
    overrides: dict[str, Any] = {
        "data": data, "split": split, "val_protocol": val_protocol, "loss": loss, "mining": mining,
        "val_targets": [_abs_target(t) for t in val_target] if val_target else None,
        "margin": margin, "scale": scale, "method": method, "recon": recon, "beta": beta, "kl_warmup": kl_warmup,
        "backbone": backbone, "embedding_size": embedding_size, "input_size": input_size, "crop": crop,
        "normalisation": normalise, "cap": cap, "epochs": epochs, "batch_size": batch_size, "pk": pk, "lr": lr,
        "optimizer": optimizer, "schedule": schedule, "warmup_epochs": warmup_epochs, "weight_decay": weight_decay,
        "seed": seed, "device": device, "amp": amp, "threads": threads, "log": log, "eval_every": eval_every,
        "select_metric": select_metric, "early_stop": early_stop, "collapse_patience": collapse_patience,
        "init_from": init_from, "name": name, "batchnorm": _batchnorm_option(batchnorm, sync_bn),
        "augment": AugmentConfig.parse(augment) if augment is not None else None,
        "loss_options": parse_options(loss_opt, "--loss-opt") or None,
        "mining_options": parse_options(mining_opt, "--mining-opt") or None,
        "method_options": parse_options(method_opt, "--method-opt") or None, "partial_fc": partial_fc,
        "backbone_options": parse_options(backbone_opt, "--backbone-opt") or None,
    }
    if resume:
        run_dir = out or (ws.dir("train") / name if name else ws.require_latest("train", "-o RUN_DIR", "fvtool train"))
        cfg_file = Path(run_dir) / "config.json"
        if not cfg_file.is_file():
            raise InputError(f"--resume: {cfg_file} does not exist; is {run_dir} a run folder?")
        base = _config_file_dict(cfg_file)
        given = sorted(k for k, v in overrides.items() if v is not None and k not in RESUME_MAY_CHANGE)
        if given or config is not None:
            raise InputError(f"--resume continues a run with its own config; only "
                             f"{', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE)} may be given "
                             f"(got {', '.join('--' + k.replace('_', '-') for k in given) or '--config'})")
        cfg = TrainConfig.from_dict(base, where=str(cfg_file)).with_overrides(overrides)
        ctx = join_job(cfg.device, nproc)
    else:
        if config is not None:
            base = _config_file_dict(config)
            cfg = TrainConfig.from_dict(base, where=str(config)).with_overrides(overrides)
        else:
            cfg = config_from_sources(None, overrides)
        if cfg.data is None:
            cfg = cfg.with_overrides({"data": _default_data(ws)})
        if cfg.split is None:
            cfg = cfg.with_overrides({"split": _default_split(ws, cfg.data, notes)})
        if cfg.split is not None and cfg.split.lower() == "none":
            cfg.split = None
        for key in ("data", "split", "init_from"):
            value = getattr(cfg, key)
            if value is not None and Path(value).exists():
                setattr(cfg, key, str(Path(value).resolve()))
        if cfg.val_protocol not in (None, "auto", "none") and Path(cfg.val_protocol).exists():
            cfg.val_protocol = str(Path(cfg.val_protocol).resolve())
        ctx = join_job(cfg.device, nproc)
        stamp = agree(_dt.datetime.now().strftime("%Y%m%d-%H%M%S"))  # the same run folder on every rank
        run_name = cfg.name or f"{cfg.loss}-{cfg.backbone}-{stamp}"
        run_dir = out or ws.dir("train") / run_name
        if (Path(run_dir) / "checkpoints").is_dir() and any((Path(run_dir) / "checkpoints").iterdir()):
            raise InputError(f"run folder {run_dir} already holds checkpoints: add --resume to continue it, or "
                             "choose another --name / -o")
    run_dir = Path(run_dir)
    check_components(cfg)  # a misspelt --loss/--backbone fails here, before the run is announced
    if nproc is not None and nproc > 1:  # spawn the ranks; each runs this command under DDP
        console.print(f"starting {nproc} processes (DistributedDataParallel) -> {run_dir}")
        raise typer.Exit(launch_train_processes(cfg, run_dir, resume=resume, overrides=overrides, nproc=nproc,
                                                quiet=quiet, workspace=ws.root))
    with rank_errors(ctx):
        _train(cfg, run_dir, resume=resume, quiet=quiet, ws=ws, notes=notes)


def _batchnorm_option(batchnorm: str | None, sync_bn: bool) -> str | None:
    if sync_bn and batchnorm not in (None, "sync"):
        raise InputError(f"--sync-bn contradicts --batchnorm {batchnorm}; give one of them")
    return "sync" if sync_bn else batchnorm


def _train(cfg: Any, run_dir: Path, *, resume: bool, quiet: bool, ws: Workspace, notes: list[str]) -> None:
    """Build the trainer (a DDP rank under torchrun), fit, print the summary (rank 0 prints)."""
    from fvtool.training.distributed import make_trainer

    advice = busy_advice() if not cfg.threads else None
    for n in [*notes, *([advice] if advice else [])]:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"training [bold]{cfg.loss}[/] on [bold]{cfg.backbone}[/] ({cfg.input_size}px, "
                  f"{cfg.embedding_size}-d) from {cfg.data} -> {run_dir}")
    trainer = make_trainer(cfg, run_dir, resume=resume, show_progress=not quiet)
    for n in trainer.notes:
        console.print(f"[yellow]note:[/] {n}")
    d = trainer.data
    console.print(f"{len(d.rows)} training images of {d.num_classes} identities, method {trainer.method_spec.name}, "
                  f"{trainer.steps_per_epoch} batches/epoch, device {trainer.device}"
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
                          + (f"rerun with --resume to continue from the last checkpoint: fvtool train --resume -o "
                             f"{run_dir}" if saved else "before the first step, nothing was saved: rerun the same "
                             "command to start again")) from None
    for n in result.notes[shown:]:
        console.print(f"[yellow]note:[/] {n}")
    _summary(result, run_dir)
    if result.stopped.startswith("collapse"):
        raise CheckFailed(result.stopped)


def register(app: typer.Typer) -> None:
    app.command("train", help=train_command.__doc__, epilog=_HELP_EPILOG)(train_command)
