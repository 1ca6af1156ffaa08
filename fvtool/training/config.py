"""`TrainConfig`: every choice a training run makes, in one flat dataclass.

Why one flat object: a whole experiment fits in one TOML file (`fvtool train --config exp.toml`),
command-line options override single keys, and the resolved config is saved as `config.json`
in the run folder and inside every checkpoint, so a run can be resumed, re-run or embedded
from its folder alone. Precedence: dataclass defaults < TOML file < explicit CLI options.

TOML layout: top-level keys are the field names below (`-` or `_`); the tables `[augment]`,
`[backbone_options]`, `[loss_options]`, `[mining_options]` and `[method_options]` hold
per-component options. Unknown keys are an error naming the key.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fvtool.data.transforms import AugmentConfig
from fvtool.errors import InputError
from fvtool.runtime import AMP_MODES

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")
DEVICES = ("auto", "cpu", "cuda")  # a run config names no device index (DDP ranks pick cuda:LOCAL_RANK)
BATCHNORM_MODES = ("batch", "sync", "frozen")  # see fvtool/training/batchnorm.py
LOG_MODES = ("auto", "tensorboard", "none")  # see fvtool/training/tensorboard_log.py


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # aligned folder / manifest / identity folder
    split: str | None = None  # fvtool-split JSON; training identities come from its train part
    train_pairs: str | None = None  # training-pairs file: its train part trains, val part validates (not with split)
    val_protocol: str | None = None  # fvtool-protocol JSON for periodic validation
    val_targets: list[str] = field(default_factory=list)  # extra targets, [NAME=]FILE.bin|PROTOCOL|lfw
    # fraction of the training identities' images held out (seeded) for the validation loss (select_metric val_loss)
    val_holdout: float | None = None
    input_size: int = 64
    crop: float = 1.0  # central fraction of each source image kept before resizing
    resample: str = "bilinear"
    normalisation: str = "pm1"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cap: int | None = None  # max images per identity per epoch
    # model and objective
    backbone: str = "resnet_small"
    embedding_size: int = 128
    backbone_options: dict[str, Any] = field(default_factory=dict)
    loss: str = "softmax"
    loss_options: dict[str, Any] = field(default_factory=dict)
    margin: float | None = None  # shortcut for loss_options["margin"]
    scale: float | None = None  # shortcut for loss_options["scale"]; None: the loss's default (loss_defaults.py)
    partial_fc: float | None = None  # classification losses: shard the class rows over the ranks, sample rate r
    mining: str | None = None
    mining_options: dict[str, Any] = field(default_factory=dict)
    method: str | None = None  # default: the method registered under the loss name, else "embedding"
    method_options: dict[str, Any] = field(default_factory=dict)
    recon: str | None = None  # AE/VAE: bce | mse
    beta: float | None = None  # VAE: KL weight
    kl_warmup: int | None = None  # VAE: epochs of linear KL warm-up
    # optimisation
    epochs: int = 10
    batch_size: int = 128
    pk: tuple[int, int] | None = None  # P identities x K images per batch (metric losses)
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float | None = None  # None: 1 for the fixed-scale cosine losses, else 0 (loss_defaults.py)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of the run
    gamma: float = 0.1
    plateau_patience: int = 2  # plateau: evaluations without improvement before the 10x drop
    max_drops: int = 2  # plateau: drops before stopping
    grad_clip: float | None = None
    # evaluation and selection
    eval_every: str = "1epoch"  # "N", "Nepoch(s)" or "Nstep(s)"
    select_metric: str = "eer"  # eer | balanced_accuracy | accuracy | frr@far=1e-3 | ... | loss | val_loss
    far_points: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])
    early_stop: int | None = None  # evaluations without improvement before stopping
    collapse_patience: int | None = None  # metric losses: collapsed epochs before stopping (monitor default 2)
    collapse_min_spread: float | None = None  # metric losses: mean pairwise distance below which = collapsed
    # runtime
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    batchnorm: str = "batch"  # batch | sync (SyncBatchNorm across DDP processes, CUDA) | frozen (BN in eval mode)
    threads: int | None = None
    name: str | None = None
    init_from: str | None = None
    checkpoint_every: int = 1  # epochs between last.pt saves (always at the end and on Ctrl-C)
    log: str = "auto"  # auto (tensorboard when importable) | tensorboard | none: <run>/tb/ event files
    # provenance: {"name", "sha256", "overrides"} when the run started from `--recipe` (fvtool/recipes)
    recipe: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig.from_dict(self.augment)
        if self.pk is not None:
            self.pk = (int(self.pk[0]), int(self.pk[1]))
        self.validate()

    def validate(self) -> None:
        """Errors name the key and the allowed values."""
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES, "amp": AMP_MODES,
                   "batchnorm": BATCHNORM_MODES, "log": LOG_MODES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise InputError(f"{key} = {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "input_size": self.input_size,
                    "embedding_size": self.embedding_size}
        for key, v in positive.items():
            if not isinstance(v, int) or v < 1:
                raise InputError(f"{key} must be a positive integer (got {v!r})")
        if self.lr <= 0:
            raise InputError(f"lr must be > 0 (got {self.lr})")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay must be >= 0 (got {self.weight_decay})")
        if self.recon is not None and self.recon not in ("bce", "mse"):
            raise InputError(f"recon = {self.recon!r}: choose bce or mse")
        if self.partial_fc is not None and not 0.0 < float(self.partial_fc) <= 1.0:
            raise InputError(f"partial_fc = {self.partial_fc!r}: the sample rate must be in (0, 1] (1 = no sampling)")
        if self.val_holdout is not None and not 0.0 < float(self.val_holdout) < 1.0:
            raise InputError(f"val_holdout = {self.val_holdout!r}: the held-out fraction must be in (0, 1)")
        parse_every(self.eval_every)
        parse_metric(self.select_metric)

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        d["pk"] = list(self.pk) if self.pk else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> TrainConfig:
        names = {f.name for f in fields(cls)}
        norm = {k.replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(norm) - names)
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}; see `fvtool train --help`")
        try:
            return cls(**norm)
        except TypeError as e:
            raise InputError(f"{where}: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with the explicitly given (not None) values replaced, then re-validated."""
        given = {k: v for k, v in overrides.items() if v is not None}
        out = replace(self, **given)
        return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The config keys of a TOML experiment file, or of a run's config.json (its "config" section)."""
    path = Path(path)
    if path.suffix != ".json":
        return load_toml(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read config JSON ({e})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: a config JSON holds an object of config keys (or a run's config.json)")
    return d.get("config", d)


def config_from_sources(path: str | Path | None, overrides: dict[str, Any], *,
                        base: TrainConfig | None = None) -> TrainConfig:
    """Defaults < config file (TOML, or a run's config.json) < explicit overrides (None: "not given").
    `base` (a recipe's config) replaces the defaults and the file."""
    if base is None:
        base = TrainConfig.from_dict(load_config_file(path), where=str(path)) if path else TrainConfig()
    unknown = sorted(set(overrides) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise InputError(f"unknown config key(s) {', '.join(unknown)}")
    return base.with_overrides(overrides)


#: config fields a resumed run may change (the loss curve then differs from that point on)
RESUME_MAY_CHANGE = ("epochs", "early_stop", "device", "threads", "amp", "name", "checkpoint_every", "log")


def check_resume(saved: dict[str, Any], config: TrainConfig, where: str) -> None:
    """Refuse to resume a run saved with config `saved` under `config` when they differ in a field
    outside RESUME_MAY_CHANGE: the continued run would not be the run the checkpoint started.
    Fields added to TrainConfig after the checkpoint was written count as their defaults."""
    old = {**TrainConfig().to_dict(), **saved}
    new = config.to_dict()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUME_MAY_CHANGE)
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        allowed = ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)
        raise InputError(f"--resume: the config differs from {where}'s ({shown}); a resumed run keeps its own "
                         f"config except {allowed}. Resume without the other options, or start a new run")


def parse_every(text: str) -> tuple[int, str]:
    """'2' / '2epochs' -> (2, 'epoch'); '500steps' -> (500, 'step'); '0' disables evaluation."""
    t = str(text).strip().lower()
    unit = "epoch"
    for suffix, u in (("epochs", "epoch"), ("epoch", "epoch"), ("steps", "step"), ("step", "step")):
        if t.endswith(suffix):
            t, unit = t[: -len(suffix)].strip(), u
            break
    try:
        n = int(t)
    except ValueError:
        raise InputError(f"eval_every = {text!r}: write N, Nepochs or Nsteps (e.g. 1epoch, 500steps)") from None
    if n < 0:
        raise InputError(f"eval_every = {text!r} must be >= 0")
    return n, unit


#: metric name -> True when higher is better
#: "loss" is the training loss of the epoch; "val_loss" the loss on the held-out images (val_holdout)
_METRIC_DIRECTION = {"eer": False, "balanced_accuracy": True, "accuracy": True, "loss": False, "auc": True,
                     "val_loss": False}


def parse_metric(name: str) -> tuple[str, bool, float | None]:
    """('frr@far', False, 1e-4) for 'frr@far=1e-4'; (name, higher_is_better, None) otherwise.
    `TARGET/metric` names a metric of an extra validation target (`--val-target TARGET=...`)."""
    n = name.strip().lower().rpartition("/")[2]
    if n.startswith("frr@far="):
        try:
            far = float(n.split("=", 1)[1])
        except ValueError:
            raise InputError(f"select_metric {name!r}: write e.g. frr@far=1e-4") from None
        if not 0 < far < 1:
            raise InputError(f"select_metric {name!r}: the FAR must be in (0, 1)")
        return "frr@far", False, far
    if n in _METRIC_DIRECTION:
        return n, _METRIC_DIRECTION[n], None
    raise InputError(f"select_metric {name!r} unknown; use eer, balanced_accuracy, accuracy, auc, loss, val_loss "
                     "or frr@far=<FAR>")


def metric_key(name: str) -> str:
    """The key under which a selection metric appears in validation results (`TARGET/` kept as given)."""
    kind, _, far = parse_metric(name)
    target = name.strip().rpartition("/")[0]
    key = f"frr@far={far:g}" if kind == "frr@far" else kind
    return f"{target}/{key}" if target else key
