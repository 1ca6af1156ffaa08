"""`fvtool train`: parse the options into TrainConfig overrides and call the train stage.

Every option defaults to None here so that "not given" is distinguishable from "given the default";
the run is resolved (workspace defaults, paths, resume) by `fvtool.training.stage.resolve_train_run`.
"""


import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fvtool.console import console
from fvtool.errors import InputError

_HELP_EPILOG = (
    "Examples:  fvtool train --loss arcface --backbone resnet_small --epochs 20   |   "
    "fvtool train --loss triplet --mining hard --pk 16 4   |   fvtool train --loss vae --recon bce --beta 1   |   "
    "fvtool train --config exp.toml   |   fvtool train --recipe study2-ce-faithful --epochs 2   |   "
    "fvtool train --resume   |   fvtool train --list   |   fvtool train --list-recipes"
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


def _list_components() -> None:
    from fvtool.losses.registry import loss_specs
    from fvtool.mining.registry import miner_specs
    from fvtool.models.registry import backbone_specs
    from fvtool.training.methods import method_specs

    for title, rows in (
        ("backbones (--backbone)", [*((n, s.summary) for n, s in backbone_specs().items()),
                                    ("timm:<model>", "any timm model (pretrained=False, no download) with "
                                                     "fvtool's embedding head, e.g. timm:seresnet18")]),
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


def _list_recipes() -> None:
    from fvtool.recipes import recipes

    t = Table(title="recipes (--recipe NAME; docs/recipes.md)", title_justify="left")
    t.add_column("recipe", no_wrap=True)
    t.add_column("study", no_wrap=True)
    for col in ("what", "departures from the source"):
        t.add_column(col, overflow="fold")
    for r in recipes():
        deps = "\n".join(f"- {d}" for d in r.departures) or "none"
        t.add_row(escape(r.name), str(r.study or ""), escape(f"{r.summary} [{r.source}]"), escape(deps))
    console.print(t)


def train_command(
    data: Annotated[str | None, typer.Option("--data", help="Aligned folder (with manifest.csv), manifest file, "
                    "identity folder, or a dataset as shipped (insightface .rec, VGGFace2 train/ or test/, "
                    "CASIA-WebFace, MEDS-II; docs/datasets.md). Default: the workspace's latest `align` output, "
                    "else the embedded LFW subset.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Identity split (fvtool-split JSON from `fvtool pairs "
                     "split`): trains on its train part; its val part validates. Default: the workspace's latest split "
                     "if it fits the data, else all identities (with a warning). `none` trains on all.")] = None,
    train_pairs: Annotated[str | None, typer.Option("--train-pairs", help="Train on a pairs file from `fvtool pairs "
                           "train-pairs` (e.g. study 1's --random-split 72/18/10 pair split) instead of an identity "
                           "split: its train part trains (the siamese method on the listed pairs; --loss contrastive "
                           "or triplet on them too, triplets from its genuine pairs; other methods on its images), its "
                           "val part validates. A random pair split's leakage warning is repeated.",
                           show_default=False)] = None,
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
    sync_bn: Annotated[bool, typer.Option("--sync-bn", hidden=True,
                       help="Old spelling of --batchnorm sync.")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Train with N processes on this machine "
                     "(DistributedDataParallel; gloo on the CPU, NCCL with one GPU each), like `torchrun "
                     "--nproc_per_node N -m fvtool train ...`. --batch-size stays the GLOBAL batch, split evenly "
                     "over the processes.")] = None,
    eval_every: Annotated[str | None, typer.Option("--eval-every", help="Validate every N epochs (`2`, `2epochs`) or "
                          "steps (`500steps`); 0 = never (default 1epoch).")] = None,
    select_metric: Annotated[str | None, typer.Option("--select-metric", help="Metric that picks best.pt and drives "
                             "early stopping/plateau: eer (default), balanced_accuracy (1 - HTER), accuracy (raw: "
                             "misleads on imbalanced all-pairs protocols), auc, loss (the epoch's training loss), "
                             "val_loss (the loss on the --val-holdout images) or frr@far=1e-4; NAME/eer etc. "
                             "for a --val-target.")] = None,
    val_holdout: Annotated[float | None, typer.Option("--val-holdout", help="Hold out this fraction (0-1) of the "
                           "training identities' images, drawn with --seed (every identity keeps >= 1 training image), "
                           "and measure the training loss on them at each evaluation: history.jsonl val_loss (and "
                           "val_accuracy for classification losses); --select-metric val_loss keeps the epoch with "
                           "the lowest. Classification and AE/VAE methods only.")] = None,
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
    recipe: Annotated[str | None, typer.Option("--recipe", help="Named recipe shipped with fvtool (a study's "
                      "settings: STUDY-faithful = the source's, STUDY-tuned = fvtool's best; `--list-recipes` shows "
                      "them and their departures from the source) or a recipe .toml file. Options given here "
                      "override its fields; config.json records the recipe's name, sha256 and the overrides.",
                      metavar="NAME")] = None,
    list_recipes: Annotated[bool, typer.Option("--list-recipes", help="List the shipped recipes, their source and "
                            "where each departs from its source, then exit.")] = False,
    name: Annotated[str | None, typer.Option("--name", help="Run name (default LOSS-BACKBONE-TIMESTAMP).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                   help="Run folder (default <workspace>/runs/<name>).")] = None,
    list_: Annotated[bool, typer.Option("--list",
                     help="List backbones, losses, miners and methods, then exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines.")] = False,
) -> None:
    """Train a face embedder with a loss; writes a run folder (config.json, history.jsonl, checkpoints/)."""
    if list_:
        _list_components()
        return
    if list_recipes:
        _list_recipes()
        return
    from fvtool.data.transforms import AugmentConfig
    from fvtool.training.stage import resolve_train_run, run_train, train_in_processes

    if sync_bn and batchnorm not in (None, "sync"):
        raise InputError(f"--sync-bn contradicts --batchnorm {batchnorm}; give one of them")
    overrides: dict[str, Any] = {
        "data": data, "split": split, "train_pairs": train_pairs, "val_protocol": val_protocol, "loss": loss,
        "mining": mining,
        "val_targets": list(val_target) if val_target else None,
        "margin": margin, "scale": scale, "method": method, "recon": recon, "beta": beta, "kl_warmup": kl_warmup,
        "backbone": backbone, "embedding_size": embedding_size, "input_size": input_size, "crop": crop,
        "normalisation": normalise, "cap": cap, "epochs": epochs, "batch_size": batch_size, "pk": pk, "lr": lr,
        "optimizer": optimizer, "schedule": schedule, "warmup_epochs": warmup_epochs, "weight_decay": weight_decay,
        "seed": seed, "device": device, "amp": amp, "threads": threads, "log": log, "eval_every": eval_every,
        "select_metric": select_metric, "val_holdout": val_holdout, "early_stop": early_stop,
        "collapse_patience": collapse_patience,
        "init_from": init_from, "name": name, "batchnorm": "sync" if sync_bn else batchnorm,
        "augment": AugmentConfig.parse(augment) if augment is not None else None,
        "loss_options": parse_options(loss_opt, "--loss-opt") or None,
        "mining_options": parse_options(mining_opt, "--mining-opt") or None,
        "method_options": parse_options(method_opt, "--method-opt") or None, "partial_fc": partial_fc,
        "backbone_options": parse_options(backbone_opt, "--backbone-opt") or None,
    }
    run = resolve_train_run(overrides, config_file=config, resume=resume, out=out, nproc=nproc, recipe=recipe)
    if nproc is not None and nproc > 1:  # spawn the ranks; each trains `run` under DDP
        console.print(f"starting {nproc} processes (DistributedDataParallel) -> {run.run_dir}")
        raise typer.Exit(train_in_processes(run, nproc, quiet=quiet))
    run_train(run, quiet=quiet)


def register(app: typer.Typer) -> None:
    app.command("train", help=train_command.__doc__, epilog=_HELP_EPILOG)(train_command)
