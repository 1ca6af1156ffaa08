"""The training loop: one function, `train(config, run_dir)`, for every method.

What it guarantees:
- Same config + seed -> same numbers on the CPU. Batches and augmentations are pure functions of
  (seed, epoch, batch index) (see samplers.py, data.py); model init and dropout use the global
  torch RNG, seeded here and saved in checkpoints.
- `resume=True` continues from `checkpoints/last.pt` (written every epoch, at the end, on Ctrl-C
  and at `stop_after_steps`) so that the loss curve and the final weights equal those of the
  uninterrupted run, also when interrupted mid-epoch (tested bit-exactly on the CPU).
- Periodic validation every N epochs or steps with the verify stage's metric rules; the best
  checkpoint (`best.pt`) is chosen on `select_metric` (e.g. frr@far=1e-4); early stopping and
  the "drop 10x on plateau and restart from the best weights" schedule use the same numbers.
- `history.jsonl` gets one record per epoch (and one per step-based evaluation); see
  docs/formats.md "Training run folder".
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fvtool import __version__
from fvtool.atomic import write_json, write_text
from fvtool.console import console, progress
from fvtool.data.samplers import ListedPairSampler, SampledBatch, build_sampler
from fvtool.data.transforms import BatchTransform, Normalisation
from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.registry import get_loss_spec
from fvtool.models.registry import get_backbone_spec
from fvtool.runtime import resolve_amp, resolve_device, set_threads
from fvtool.training.batchnorm import apply_batchnorm_mode
from fvtool.training.checkpoint import (
    CKPT_DIRNAME,
    json_field,
    load_checkpoint,
    resolve_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fvtool.training.collapse import CollapseMonitor
from fvtool.training.config import TrainConfig, check_resume, metric_key, parse_every, parse_metric
from fvtool.training.data import BatchLoader, TrainingData, prepare_training_data
from fvtool.training.evaluation import validation_scores, verification_metrics
from fvtool.training.loss_defaults import resolve_loss_defaults
from fvtool.training.methods import Method, MethodContext, build_method, resolve_method
from fvtool.training.not_learning import learning_check
from fvtool.training.schedules import LRSchedule, build_optimizer
from fvtool.training.tensorboard_log import TensorBoardLog, wants_tensorboard

RUN_CONFIG_FORMAT = "fvtool-run"


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    steps: int
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    stopped: str  # "completed" | "early-stop: ..." | "interrupted" | "step limit"
    last_checkpoint: Path
    best_checkpoint: Path | None
    seconds: float
    img_per_s: float
    notes: list[str] = field(default_factory=list)


def check_components(config: TrainConfig) -> Any:
    """The run's method spec, after checking that its loss and backbone names exist: a misspelt name
    (`--loss tripplet`) fails before any image is decoded and before `fvtool train` announces the run."""
    spec = resolve_method(config)
    if spec.name == "embedding":
        get_loss_spec(config.loss)
        get_backbone_spec(config.backbone)
    return spec


class _Meters:
    """Running sums over an epoch (saved in checkpoints so a mid-epoch resume logs the same means)."""

    def __init__(self) -> None:
        self.n_steps = 0
        self.n_images = 0
        self.loss = 0.0
        self.components: dict[str, float] = defaultdict(float)
        self.stats: dict[str, float] = defaultdict(float)
        self.correct = 0
        self.n_classified = 0
        self.n_logits = 0  # classes of the classifier whose accuracy is counted (chance = 1 / n_logits)
        self.seconds = 0.0

    def add(self, out: LossOutput, loss_value: float, labels: torch.Tensor, n_images: int, seconds: float,
            counts: tuple[int, int] | None = None) -> None:
        """`counts` = (correct, classified) when the caller computed the accuracy itself (DDP: global counts)."""
        self.n_steps += 1
        self.n_images += n_images
        self.loss += loss_value
        for k, v in out.components.items():
            self.components[k] += float(v)
        for k, v in out.stats.items():
            self.stats[k] += float(v)
        if counts is None and out.counts is not None:
            counts = out.counts[:2]
            self.n_logits = int(out.counts[2])
        if counts is not None:
            self.correct += counts[0]
            self.n_classified += counts[1]
        elif out.logits is not None and out.logits.shape[0] == labels.shape[0]:
            self.correct += int((out.logits.detach().argmax(1) == labels).sum())
            self.n_classified += int(labels.shape[0])
        if out.logits is not None and out.logits.ndim == 2:
            self.n_logits = int(out.logits.shape[1])
        self.seconds += seconds

    def summary(self) -> dict[str, Any]:
        n = max(1, self.n_steps)
        return {
            "loss": self.loss / n,
            "components": {k: v / n for k, v in sorted(self.components.items())},
            "stats": {k: v / n for k, v in sorted(self.stats.items())},
            "train_accuracy": self.correct / self.n_classified if self.n_classified else None,
            "images": self.n_images,
            "time_s": self.seconds,
            "img_per_s": self.n_images / self.seconds if self.seconds > 0 else None,
        }

    def state(self) -> str:
        return json.dumps({k: (dict(v) if isinstance(v, defaultdict) else v) for k, v in vars(self).items()})

    def load(self, text: str) -> None:
        for k, v in json.loads(text).items():
            setattr(self, k, defaultdict(float, v) if isinstance(v, dict) else v)


def _collapse_monitor(config: TrainConfig, method: Method) -> CollapseMonitor | None:
    """The collapse alarm for metric-family methods (fvtool/training/collapse.py); None for the others."""
    return CollapseMonitor.from_config(config) if method.metric_family else None


def _monitor_state(monitor: CollapseMonitor | None) -> str:
    """The collapse monitor's state (its count of collapsed epochs and the running sums of the current
    epoch, so a mid-epoch resume closes that epoch with the same record)."""
    return json.dumps(monitor.state_dict() if monitor is not None else None)


def _load_monitor_state(monitor: CollapseMonitor | None, text: str | None) -> None:
    state = json.loads(text) if text else None
    if monitor is not None and state:
        monitor.load_state_dict(state)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


class Trainer:
    """Holds one run's objects; `fit()` runs the loop. Built by `train()`.

    Hooks for multi-process training (fvtool/training/distributed.py overrides them): `_forward`,
    `_loss_value`, `_step_counts`, `_load`, `_validate`, `save`, `_write_history`; `is_main` gates
    every file the run writes, `world_size` is recorded in checkpoints and checked on resume.
    """

    is_main = True
    world_size = 1

    def __init__(self, config: TrainConfig, run_dir: Path, *, resume: bool = False, show_progress: bool = True,
                 cache_dir: Path | None = None, prefetch: int = 2) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise InputError(f"run folder {self.run_dir} is an existing file; give a folder path")
        self.ckpt_dir = self.run_dir / CKPT_DIRNAME
        self.show_progress = show_progress
        set_threads(config.threads)
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.amp, self.device)
        self.method_spec = check_components(config)
        self.data: TrainingData = prepare_training_data(config, cache_dir=cache_dir, show_progress=show_progress)
        self.notes = list(self.data.notes)
        # data-dependent defaults (the cosine losses' scale from the class count, their warm-up), saved in config.json
        self.config, filled = resolve_loss_defaults(config, self.data.num_classes)
        config = self.config
        self.notes += filled
        self.normalisation = Normalisation.named(config.normalisation)

        torch.manual_seed(config.seed)
        ctx = MethodContext(config, self.data.num_classes, self.normalisation, self.data.class_counts())
        self.method: Method = build_method(ctx)
        if config.init_from:
            self._init_from(config.init_from)
        apply_batchnorm_mode(self.method, config.batchnorm, self.device)
        self.method.to(self.device)
        if config.channels_last:
            self.method.to(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            dt, dev = self.amp_dtype, self.device.type
            self.method.autocast = lambda: torch.autocast(device_type=dev, dtype=dt)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None

        self.sampler = build_sampler(self.method.sampler_kind, self.data.labels, seed=config.seed,
                                     batch_size=config.batch_size, pk=config.pk, cap=config.cap,
                                     listed=self.data.pairs)
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch == 0:
            raise InputError("no complete batch per epoch: lower --batch-size / --pk")
        transform = BatchTransform(self.normalisation, config.augment, channels_last=config.channels_last)
        self.loader = BatchLoader(np.asarray(self.data.cache.array), self.data.rows, self.data.labels, transform,
                                  self.device, config.seed, prefetch=prefetch)
        self.optimizer = build_optimizer(self.method.param_groups(config.weight_decay), config)
        self.schedule = LRSchedule(config, self.steps_per_epoch)
        self.monitor = _collapse_monitor(config, self.method)

        self.eval_n, self.eval_unit = parse_every(config.eval_every)
        self.select_kind, self.higher_better, _far = parse_metric(config.select_metric)
        self.select_key = metric_key(config.select_metric)
        target_names = [t.name for t in self.data.targets]
        chosen = config.select_metric.strip().rpartition("/")[0]
        if chosen and chosen not in target_names:
            raise InputError(f"--select-metric {config.select_metric}: no validation target named {chosen!r} "
                             f"(--val-target NAME=...; given: {', '.join(target_names) or 'none'})")
        self.val_listed: tuple[BatchLoader, list[SampledBatch]] | None = None
        vp = self.data.val_pairs
        if vp is not None and self.method.sampler_kind in ("pairs", "triplets"):  # the siamese method, --train-pairs
            per = max(1, config.batch_size // (2 if self.method.sampler_kind == "pairs" else 3))
            sampler = ListedPairSampler(vp.labels, vp.pairs.left, vp.pairs.right, vp.pairs.same,
                                        layout=self.method.sampler_kind, per_batch=1, seed=config.seed)
            self.val_listed = (BatchLoader(np.asarray(self.data.cache.array), vp.rows, vp.labels,
                                           BatchTransform(self.normalisation, None, channels_last=config.channels_last),
                                           self.device, config.seed, prefetch=0, workers=0),
                               sampler.fixed_batches(per))
        if self.select_kind == "val_loss" and not len(self.data.holdout_rows) and self.val_listed is None:
            raise InputError(f"--select-metric {config.select_metric}: the validation loss needs held-out images of "
                             "the training identities (add --val-holdout FRACTION, e.g. 0.1) or, for the siamese "
                             "method, a --train-pairs file with a val part")
        if len(self.data.holdout_rows) and self.method.sampler_kind != "random":
            raise InputError(f"--val-holdout: the validation loss is defined for methods trained on plain random "
                             f"batches (classification, AE/VAE); {self.method_spec.name!r} forms "
                             f"{self.method.sampler_kind} batches, whose loss depends on how they are drawn. "
                             "Select on a verification metric (eer) instead")
        if len(self.data.holdout_rows):
            self.holdout = BatchLoader(np.asarray(self.data.cache.array), self.data.holdout_rows,
                                       self.data.holdout_labels,
                                       BatchTransform(self.normalisation, None, channels_last=config.channels_last),
                                       self.device, config.seed, prefetch=0, workers=0)
        else:
            self.holdout = None
        own = ("loss", "val_loss")  # selection metrics that need no verification protocol
        if not chosen and self.data.validation is None and target_names and self.select_kind not in own:
            first = target_names[0]
            self.notes.append(f"no main validation protocol: best.pt is selected on {first}/{self.select_key}")
            self.select_key = f"{first}/{self.select_key}"
        if self.data.validation is None and not target_names and self.select_kind not in own:
            self.notes.append(f"no validation protocol: best.pt is selected on the training loss, not "
                              f"{config.select_metric} (give --val-protocol or a split with val identities)")
            self.select_kind, self.higher_better, self.select_key = "loss", False, "loss"
        if self.select_kind == "frr@far" and self.data.validation is not None and "/" not in self.select_key:
            n_imp = int((~self._val_same()).sum())
            if _far is not None and _far < 1.0 / max(1, n_imp):
                raise InputError(f"--select-metric {config.select_metric}: the validation protocol has only {n_imp} "
                                 f"impostor pairs, so FAR {_far:g} is not measurable (needs >= {math.ceil(1 / _far)}); "
                                 "use a larger validation set or --select-metric eer")
        if config.early_stop is not None and self.select_kind == "loss":
            self.notes.append("--early-stop without validation: stopping on the training loss")
        far = sorted(set(config.far_points) | ({_far} if _far else set()), reverse=True)
        self.far_points = far

        # loop state
        self.epoch = 0
        self.step = 0
        self.meters = _Meters()
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.bad_evals = 0
        self._warned_not_learning = False  # the not-learning alarm prints once per session
        self.resumed = resume
        if resume:
            self._resume()
        self.val_scores: tuple[np.ndarray, np.ndarray] | None = None
        self.tb: TensorBoardLog | None = None  # opened by fit() (checked here: a missing package fails early)
        self.tb_wanted = self.is_main and wants_tensorboard(config.log)

    # ---- setup helpers ----------------------------------------------------------------
    def _val_same(self) -> np.ndarray:
        vs = self.data.validation
        if vs.protocol.kind == "pairs":
            return vs.protocol.same
        ids = np.asarray(vs.protocol.identities)
        out = []
        for t in vs.protocol.trials:
            iu = np.triu_indices(len(t), 1)
            out.append(ids[t][iu[0]] == ids[t][iu[1]])
        return np.concatenate(out)

    def _init_from(self, source: str) -> None:
        path = resolve_checkpoint(source, prefer="best")
        state = self._load(path)
        src_cfg = json_field(state, "config") or {}
        try:
            self.method.embedder.load_state_dict(state["embedder"])
        except RuntimeError as e:
            raise InputError(
                f"--init-from {path}: its embedder ({src_cfg.get('backbone')}, {src_cfg.get('embedding_size')}-d, "
                f"{src_cfg.get('input_size')}px) does not fit this run's ({self.config.backbone}, "
                f"{self.config.embedding_size}-d, {self.config.input_size}px); use the same --backbone, "
                f"--embedding-size and --input-size ({str(e).splitlines()[0]})"
            ) from None
        self.notes.append(f"initialised the embedder from {path}")

    def data_facts(self) -> dict[str, Any]:
        d = self.data
        return {
            "data_root": str(d.images.root),
            "fingerprint": d.cache.fingerprint,
            "n_cached_images": len(d.images),
            "n_train_images": len(d.rows),
            "num_classes": d.num_classes,
            "identities_sha256": d.identities_sha256(),
            "source_size": d.cache.source_size,
            "align_source": d.images.source,
            "cache": d.cache.meta(),
            "split": d.split_path,
            "validation": None if d.validation is None else {
                "name": d.validation.name, "images": len(d.validation.rows),
                "sha256": d.validation.protocol.sha256()},
            "holdout_images": len(d.holdout_rows),
        }

    def resolved(self) -> dict[str, Any]:
        return {
            "format": RUN_CONFIG_FORMAT,
            "version": 1,
            "fvtool_version": __version__,
            "torch_version": torch.__version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "config": self.config.to_dict(),
            "resolved": {
                "method": self.method_spec.name,
                "sampler": self.sampler.state_dict() | {"batches_per_epoch": self.steps_per_epoch},
                "device": str(self.device),
                "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
                "normalisation": {"name": self.normalisation.name, "mean": list(self.normalisation.mean),
                                  "std": list(self.normalisation.std)},
                "select_metric": self.select_key,
                "parameters": sum(p.numel() for p in self.method.embedder.parameters()),
                "world_size": self.world_size,
                "data": self.data_facts(),
            },
        }

    # ---- checkpoints --------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "num_classes": self.data.num_classes,
            "method": self.method.state_dict(),
            "embedder": self.method.embedder.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "progress": json.dumps({"epoch": self.epoch, "step": self.step, "bad_evals": self.bad_evals}),
            "meters": self.meters.state(),
            "history": json.dumps(self.history),
            "best": json.dumps(self.best),
            "data": json.dumps({k: v for k, v in self.data_facts().items() if k != "cache"}),
            "resolved": json.dumps(self.resolved()["resolved"]),
            "collapse": _monitor_state(self.monitor),
            "world_size": self.world_size,
        }

    def save(self, name: str) -> Path:
        path = self.ckpt_dir / name
        if self.is_main:
            save_checkpoint(path, self._state())
        return path

    def _load(self, path: Path) -> dict[str, Any]:
        """Read a checkpoint (hook: under DDP rank 0 reads it and sends it to the other ranks)."""
        return load_checkpoint(path)

    def _resume(self) -> None:
        """Continue from last.pt: same world size, and the config must be the checkpoint's except
        RESUME_MAY_CHANGE (checked after the method is built, which may complete the config, e.g. the
        AE/VAE encoder name)."""
        path = self.ckpt_dir / "last.pt"
        if not path.is_file():
            raise InputError(f"--resume: {path} does not exist (nothing to resume; run without --resume)")
        state = self._load(path)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise InputError(
                f"--resume: {path} was written by a run with {saved_world} process(es), this one has "
                f"{self.world_size}; "
                f"resume with the same number (torchrun --nproc_per_node / fvtool train --nproc {saved_world}). "
                "Per-process batch-norm statistics and the per-process batch slices depend on it, so another count "
                "would not continue the same run")
        check_resume(json_field(state, "config"), self.config, str(path))
        old_data = json_field(state, "data")
        if old_data.get("fingerprint") != self.data.cache.fingerprint:
            raise InputError(f"--resume: the training data changed since {path} was written (content hash "
                             "differs); resume on the same data or start a new run")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        for g in self.optimizer.param_groups:  # lr is rewritten by the schedule; base_lr from this config
            g.setdefault("base_lr", g["lr"])
        self.schedule.load_state_dict(state["schedule"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        prog = json_field(state, "progress")
        self.epoch, self.step, self.bad_evals = prog["epoch"], prog["step"], prog["bad_evals"]
        self.meters.load(state["meters"])
        self.history = json_field(state, "history")
        _load_monitor_state(self.monitor, state.get("collapse"))
        self.best = json_field(state, "best")
        self._write_history()
        self.notes.append(f"resumed from {path} at epoch {self.epoch + 1}, step {self.step}")

    # ---- logging ------------------------------------------------------------------------
    def _write_history(self) -> None:
        if not self.is_main:
            return
        lines = "".join(json.dumps(_json_safe(r), allow_nan=False) + "\n" for r in self.history)
        write_text(self.run_dir / "history.jsonl", lines)

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # ---- evaluation and selection ------------------------------------------------------
    @torch.no_grad()
    def _fixed_batch_loss(self, loader: BatchLoader, plan: list[SampledBatch]) -> tuple[float, int, dict[str, float]]:
        """The training objective over fixed batches in eval mode (BatchNorm running statistics, no dropout),
        no augmentation, no gradient: (mean per sample, samples, sample-weighted means of accuracy-like
        numbers: `val_accuracy` from a classifier's logits, `val_pair_accuracy` from a pair head's stats).
        A sample is an image, or a pair/triplet of a pair/triplet batch."""
        was_training = self.method.training
        self.method.eval()
        total, n, sums, counted = 0.0, 0, defaultdict(float), defaultdict(int)
        try:
            for i, sb in enumerate(plan):
                batch = loader.make(sb, self.epoch, i)
                batch.step, batch.steps_per_epoch = self.step, self.steps_per_epoch
                out = self.method.training_step(batch)
                k = len(sb.indices) // {"pairs": 2, "triplets": 3}.get(self.method.sampler_kind, 1)
                total += float(out.loss.detach()) * k
                n += k
                if out.logits is not None and out.logits.dim() == 2 and out.logits.shape[0] == batch.labels.shape[0]:
                    sums["val_accuracy"] += float((out.logits.argmax(1) == batch.labels).sum())
                    counted["val_accuracy"] += k
                if "pair_accuracy" in out.stats:
                    sums["val_pair_accuracy"] += float(out.stats["pair_accuracy"]) * k
                    counted["val_pair_accuracy"] += k
        finally:
            self.method.train(was_training)
        return total / max(1, n), n, {key: sums[key] / counted[key] for key in sums if counted[key]}

    def _holdout_loss(self) -> dict[str, float]:
        """The training objective on the held-out images (--val-holdout), image-weighted over fixed batches;
        `val_accuracy` is the top-1 accuracy of the classifier's logits (classification losses)."""
        assert self.holdout is not None
        n, bs = len(self.data.holdout_rows), max(1, self.config.batch_size)
        plan = [SampledBatch(np.arange(s, min(n, s + bs), dtype=np.int64)) for s in range(0, n, bs)]
        loss, n, extra = self._fixed_batch_loss(self.holdout, plan)
        return {"val_loss": loss, "val_images": n, **extra}

    def _listed_val_loss(self) -> dict[str, float]:
        """The siamese method's loss on the listed val pairs (or triplets) of a --train-pairs file, per
        pair (triplet); `val_pair_accuracy` for a pair head (siamese-bce: p(same) > 0.5 is right)."""
        assert self.val_listed is not None
        loss, n, extra = self._fixed_batch_loss(*self.val_listed)
        return {"val_loss": loss, f"val_{self.method.sampler_kind}": n, **extra}

    def _validate(self) -> dict[str, Any] | None:
        if self.data.validation is None and not self.data.targets and self.holdout is None and self.val_listed is None:
            return None
        t0 = time.perf_counter()
        kw = {"batch_size": max(64, self.config.batch_size), "channels_last": self.config.channels_last}
        res: dict[str, Any] = {}
        if self.holdout is not None:
            res.update(self._holdout_loss())
        if self.val_listed is not None:
            res.update(self._listed_val_loss())
        if self.data.validation is not None:
            imp, gen = validation_scores(self.method.embedder, self.data.validation, self.loader.array,
                                         self.normalisation, self.device, **kw)
            res.update(verification_metrics(imp, gen, self.far_points))
            self.val_scores = (imp, gen)  # for the DET figure of the TensorBoard log
        for t in self.data.targets:  # --val-target sets: their metrics under "<name>/..."
            array = self.loader.array if t.array is None else t.array
            imp, gen = validation_scores(self.method.embedder, t.vs, array, self.normalisation, self.device, **kw)
            res.update({f"{t.name}/{k}": v for k, v in verification_metrics(imp, gen, self.far_points).items()})
        res["time_s"] = time.perf_counter() - t0
        return res

    def _select(self, value: float | None, where: dict[str, Any]) -> str | None:
        """Update best/plateau/early-stop state with a new value; returns a stop reason or None."""
        if value is None or not math.isfinite(value):
            return None
        better = self.best is None or (value > self.best["value"] if self.higher_better else value < self.best["value"])
        if better:
            self.best = {"metric": self.select_key, "value": value, **where}
            self.bad_evals = 0
            self.save("best.pt")
            return None
        self.bad_evals += 1
        cfg = self.config
        if cfg.schedule == "plateau" and self.bad_evals >= cfg.plateau_patience:
            if self.schedule.drops >= cfg.max_drops:
                return f"plateau after {cfg.max_drops} learning-rate drops"
            self._restart_from_best()
            return None
        if cfg.early_stop is not None and self.bad_evals >= cfg.early_stop:
            return f"early stop: {self.select_key} did not improve for {cfg.early_stop} evaluations"
        return None

    def _restart_from_best(self) -> None:
        """Plateau schedule: reload the best weights and optimiser state, lower the lr 10x."""
        best = self.ckpt_dir / "best.pt"
        if best.is_file():
            state = self._load(best)
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.drops += 1
        self.bad_evals = 0
        self.notes.append(f"plateau: restarted from the best weights with lr x {0.1 ** self.schedule.drops:g} "
                          f"(epoch {self.epoch + 1}, step {self.step})")

    # ---- the loop -------------------------------------------------------------------------
    def _forward(self, batch: Any) -> LossOutput:
        """Forward + loss of one batch (hook: DDP runs it through DistributedDataParallel)."""
        return self.method.training_step(batch)

    def _loss_value(self, out: LossOutput) -> float:
        """The logged loss of a step (hook: DDP logs the global-batch value)."""
        return float(out.loss.detach())

    def _step_counts(self, out: LossOutput, batch: Any) -> tuple[int, tuple[int, int] | None]:
        """(images in the step, (correct, classified) or None to count from the logits) for the meters."""
        return int(batch.images.shape[0]), None

    def _clip_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """--grad-clip: scale all gradients so their joint L2 norm is at most the limit (hook: with Partial FC
        over several processes the norm includes every rank's class rows)."""
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)

    def _train_step(self, batch: Any) -> tuple[LossOutput, float]:
        self.schedule.apply(self.optimizer, self.step)
        batch.step, batch.steps_per_epoch = self.step, self.steps_per_epoch
        self.method.train()
        out = self._forward(batch)
        loss = out.loss
        value = self._loss_value(out)
        if not math.isfinite(value):
            raise InputError(f"the loss became {value} at epoch {self.epoch + 1}, step {self.step} "
                             f"(components {out.components}); lower --lr, check the data, or try --amp off. "
                             f"The last good state is in {self.ckpt_dir / 'last.pt'}")
        self.optimizer.zero_grad(set_to_none=True)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.config.grad_clip:
                self.scaler.unscale_(self.optimizer)
                self._clip_gradients(params)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.config.grad_clip:
                self._clip_gradients(params)
            self.optimizer.step()
        return out, value

    def fit(self, stop_after_steps: int | None = None) -> TrainResult:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main and not (self.resumed and (self.run_dir / "config.json").is_file()):
            write_json(self.run_dir / "config.json", _json_safe(self.resolved()))
        if self.tb_wanted:  # a continued run drops events logged past the step it continues from
            self.tb = TensorBoardLog(self.run_dir, purge_step=self.step + 1 if self.step else None)
        t_start = time.perf_counter()
        session_steps = 0
        stopped = "completed"
        total = cfg.epochs * self.steps_per_epoch
        with progress(disable=not self.show_progress) as bar:
            task = bar.add_task("training", total=total, completed=self.step, info="")
            try:
                while self.epoch < cfg.epochs:
                    epoch = self.epoch
                    plan = self.sampler.plan(epoch)
                    start = self.sampler.position if self.sampler.epoch == epoch else 0
                    self.sampler.epoch, self.sampler.position = epoch, start
                    t_last = time.perf_counter()
                    for index, batch in self.loader.iterate(plan, epoch, start):
                        out, value = self._train_step(batch)
                        if self.monitor is not None:
                            self.monitor.update(self.method.last_embeddings, out.stats)
                        self.step += 1
                        session_steps += 1
                        self.sampler.position = index + 1
                        now = time.perf_counter()
                        n_images, counts = self._step_counts(out, batch)
                        self.meters.add(out, value, batch.labels, n_images, now - t_last, counts)
                        t_last = now
                        if self.tb is not None:
                            self.tb.step(self.step, value, self._lr())
                        if self.show_progress:
                            m = self.meters
                            ips = m.n_images / m.seconds if m.seconds else 0.0
                            acc = f" acc {m.correct / m.n_classified:.3f}" if m.n_classified else ""
                            bar.update(task, completed=self.step, description=f"epoch {epoch + 1}/{cfg.epochs}",
                                       info=f"loss {m.loss / m.n_steps:.4f}{acc} lr {self._lr():.3g} {ips:.0f} img/s")
                        if self.eval_unit == "step" and self.eval_n and self.step % self.eval_n == 0:
                            val = self._validate()
                            if val is not None:
                                self.history.append({"kind": "eval", "epoch": epoch + 1, "step": self.step, "val": val})
                                if self.tb is not None:
                                    self.tb.validation(self.step, val, self.val_scores)
                                reason = self._select(val.get(self.select_key), {"epoch": epoch + 1, "step": self.step})
                                if reason:
                                    stopped = reason
                                    break
                                t_last = time.perf_counter()
                        if stop_after_steps is not None and session_steps >= stop_after_steps:
                            stopped = "step limit"
                            break
                    if stopped == "step limit":
                        self.save("last.pt")
                        break
                    reason = self._end_epoch(epoch)
                    if stopped != "completed":  # step-based early stop inside the epoch
                        break
                    if reason:
                        stopped = reason
                        break
            except KeyboardInterrupt:
                if session_steps:
                    self.save("last.pt")
                raise
            finally:
                if self.tb is not None:
                    self.tb.close()
                    self.tb = None
        seconds = time.perf_counter() - t_start
        images = sum(r.get("images", 0) for r in self.history if r.get("kind") == "epoch")
        train_s = sum(r.get("time_s", 0.0) for r in self.history if r.get("kind") == "epoch")
        return TrainResult(
            run_dir=self.run_dir, epochs_done=self.epoch, steps=self.step, history=self.history, best=self.best,
            stopped=stopped, last_checkpoint=self.ckpt_dir / "last.pt",
            best_checkpoint=(self.ckpt_dir / "best.pt") if (self.ckpt_dir / "best.pt").is_file() else None,
            seconds=seconds, img_per_s=images / train_s if train_s else 0.0, notes=self.notes,
        )

    def _end_epoch(self, epoch: int) -> str | None:
        cfg = self.config
        summary = self.meters.summary()
        last = epoch + 1 == cfg.epochs
        val = None
        due_epoch = self.eval_unit == "epoch" and self.eval_n and ((epoch + 1) % self.eval_n == 0 or last)
        due_final = self.eval_unit == "step" and last and self.step % max(1, self.eval_n) != 0
        if due_epoch or due_final:
            val = self._validate()
        record = {"kind": "epoch", "epoch": epoch + 1, "step": self.step, "lr": self._lr(), **summary, "val": val}
        if self.monitor is not None:
            record["collapse"] = self.monitor.end_epoch(epoch + 1)
        learning = learning_check([r for r in self.history if r.get("kind") == "epoch"] + [record],
                                  self.meters.n_logits or None)
        if learning is not None:
            record["learning"] = learning
        self.history.append(record)
        if self.tb is not None:
            self.tb.epoch(record)
            self.tb.validation(self.step, val, self.val_scores)
        self.epoch = epoch + 1
        self.sampler.epoch, self.sampler.position = self.epoch, 0
        self.meters = _Meters()
        reason = None
        if self.select_kind == "loss":
            reason = self._select(summary["loss"], {"epoch": epoch + 1, "step": self.step})
        elif val is not None:
            reason = self._select(val.get(self.select_key), {"epoch": epoch + 1, "step": self.step})
        if self.monitor is not None and self.monitor.should_stop:
            reason = reason or self.monitor.reason or "embeddings collapsed"
        if self.is_main:
            self.method.on_epoch_end(epoch, self.run_dir)
        self._write_history()
        if (epoch + 1) % max(1, cfg.checkpoint_every) == 0 or last or reason:
            self.save("last.pt")
        if self.show_progress:
            sel = val.get(self.select_key) if val else None
            v = f" val {self.select_key} {sel:.4f}" if sel is not None else ""
            acc = f" acc {summary['train_accuracy']:.3f}" if summary["train_accuracy"] is not None else ""
            console.print(f"epoch {epoch + 1}/{cfg.epochs}: loss {summary['loss']:.4f}{acc}{v} "
                          f"lr {self._lr():.3g} {summary['img_per_s'] or 0:.0f} img/s")
        if learning is not None and learning["not_learning"] and not self._warned_not_learning and self.is_main:
            console.print(f"[bold yellow]NOT LEARNING WARNING:[/] {learning['message']}")
            self._warned_not_learning = True
        return reason


def train(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, show_progress: bool = True,
          cache_dir: Path | None = None, stop_after_steps: int | None = None, prefetch: int = 2) -> TrainResult:
    """Train (or resume) a run into `run_dir`; see the module docstring for the guarantees."""
    trainer = Trainer(config, Path(run_dir), resume=resume, show_progress=show_progress, cache_dir=cache_dir,
                      prefetch=prefetch)
    return trainer.fit(stop_after_steps=stop_after_steps)
