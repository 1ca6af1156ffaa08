"""Methods: what a training run optimises. The engine only knows this interface.

A method binds an embedder (the network `embed` and periodic validation run) to its objective:

    method.training_step(batch) -> LossOutput    forward + loss for one batch (no backward)
    method.embedder                              nn.Module: images [B, 3, H, W] -> embeddings [B, D]
    method.param_groups(weight_decay)            optimiser groups (decay excluded from norms/biases)
    method.on_epoch_end(epoch, run_dir)          hook, e.g. reconstruction grids for the VAE
    method.sampler_kind                          "random" | "pk" | "pairs" | "triplets": the batches it needs
    method.metric_family                         True -> the engine runs the collapse monitor

Why methods and not "a loss": classification and metric losses share one method (backbone +
loss, optionally a miner), but the siamese BCE verifier (a pair head on two embeddings) and the
AE/VAE extractors (decoder, reconstruction targets) train differently. New families register a
builder here from their own module (`METHOD_MODULES`), and the loop never changes.

Resolution of `--loss NAME`: `config.method` when given, else (with `--train-pairs`, for contrastive
and triplet) "siamese", which trains them on the listed pairs, else the method that lists NAME in its
`losses`, else "embedding" (backbone + NAME from the loss registry).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.partial_fc import PartialFC
from fvtool.losses.registry import build_loss, get_loss_spec
from fvtool.models.registry import build_backbone
from fvtool.registry import LazyRegistry, summary_of
from fvtool.training.config import TrainConfig

#: modules that register methods (imported on first use); add yours here, one per line
METHOD_MODULES: tuple[str, ...] = (
    "fvtool.training.siamese",
    "fvtool.training.autoencoder",
    "fvtool.training.joint",
)

#: config fields only some methods use; giving one to a method that does not list it is an error
METHOD_SPECIFIC_FIELDS = {"recon": "--recon", "beta": "--beta", "kl_warmup": "--kl-warmup", "mining": "--mining",
                          "partial_fc": "--partial-fc"}


@dataclass
class Batch:
    """One training batch on the training device.

    For pair batches (`sampler_kind == "pairs"`) `images` holds the B left images then the B
    right images, `labels` their identities and `same` [B] whether each pair is genuine.
    """

    images: torch.Tensor  # [N, 3, H, W] float, normalised as the run's config says
    labels: torch.Tensor  # [N] int64 class ids 0..C-1
    same: torch.Tensor | None = None  # [N // 2] bool, pair batches only
    epoch: int = 0
    step: int = 0  # global optimisation step (0-based) of this batch
    steps_per_epoch: int = 1


@dataclass
class MethodContext:
    """What a method builder gets: the config and the facts derived from the training data."""

    config: TrainConfig
    num_classes: int
    normalisation: Normalisation
    class_counts: list[int] = field(default_factory=list)  # images per class in the training set


class Method(nn.Module):
    """Base class; subclasses implement `training_step` and `embedder`."""

    sampler_kind: str = "random"
    metric_family: bool = False
    #: embeddings of the last training batch (detached), for the collapse monitor; methods may set it
    last_embeddings: torch.Tensor | None = None

    def __init__(self) -> None:
        super().__init__()
        # the engine replaces this with an autocast context factory when mixed precision is on
        self.autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext

    def training_step(self, batch: Batch) -> LossOutput:
        raise NotImplementedError

    @property
    def embedder(self) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Two groups over all parameters: weights with decay, norms/biases/PReLU slopes without."""
        return split_decay(self.named_parameters(), weight_decay)

    def on_epoch_end(self, epoch: int, run_dir: Path) -> None:
        """Called after each epoch (0-based) with the run folder; default: nothing."""


def method_options(ctx: MethodContext, owner: str, allowed: Sequence[str], takes: str | None = None) -> dict[str, Any]:
    """The run's `--method-opt` values; a key the method does not take is an error naming what it takes
    (`takes`, default the allowed keys)."""
    given = dict(ctx.config.method_options)
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise InputError(f"{owner}: unknown method option(s) {', '.join(unknown)}; it takes "
                         f"{takes or ', '.join(allowed)}")
    return given


def split_decay(named: Any, weight_decay: float, exclude: set[int] | None = None) -> list[dict[str, Any]]:
    """Weight decay on matrices/kernels only: decaying BN/LN scales, biases and PReLU slopes hurts
    (they set scale/offset, not capacity); the standard practice (timm, insightface) excludes them."""
    decay, no_decay = [], []
    for _, p in named:
        if not p.requires_grad or (exclude and id(p) in exclude):
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "name": "decay"})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


# ---- registry --------------------------------------------------------------------------

@dataclass(frozen=True)
class MethodSpec:
    name: str
    builder: Callable[[MethodContext], Method]
    losses: tuple[str, ...]  # --loss names this method owns (e.g. "vae", "ae", "siamese-bce")
    uses: tuple[str, ...]  # method-specific config fields it accepts (see METHOD_SPECIFIC_FIELDS)
    summary: str


_METHODS: LazyRegistry[MethodSpec] = LazyRegistry("method", lambda: METHOD_MODULES)


def register_method(name: str, *, losses: tuple[str, ...] = (), uses: tuple[str, ...] = ()
                    ) -> Callable[[Callable[[MethodContext], Method]], Callable[[MethodContext], Method]]:
    """Decorator for a builder `f(ctx: MethodContext) -> Method`."""
    def deco(builder: Callable[[MethodContext], Method]) -> Callable[[MethodContext], Method]:
        unknown = set(uses) - set(METHOD_SPECIFIC_FIELDS)
        if unknown:
            raise ValueError(f"method {name!r}: unknown method-specific fields {sorted(unknown)}")
        _METHODS.add(name, MethodSpec(name, builder, tuple(losses), tuple(uses), summary_of(builder)))
        return builder

    return deco


def method_specs() -> dict[str, MethodSpec]:
    return _METHODS.specs()


def resolve_method(config: TrainConfig) -> MethodSpec:
    """The method for this config; method-specific options it does not use are an error."""
    specs = method_specs()
    if config.method is not None:
        if config.method not in specs:
            raise InputError(f"unknown method {config.method!r}; available: {', '.join(specs)}")
        spec = specs[config.method]
    elif config.train_pairs is not None and config.loss in ("contrastive", "triplet"):
        spec = specs["siamese"]  # a pairs file: the listed pairs train (fvtool/training/siamese.py)
    else:
        owners = [s for s in specs.values() if config.loss in s.losses]
        spec = owners[0] if owners else specs["embedding"]
    for fld, option in METHOD_SPECIFIC_FIELDS.items():
        if getattr(config, fld) is not None and fld not in spec.uses:
            users = [s.name if not s.losses else "/".join(s.losses) for s in specs.values() if fld in s.uses]
            hint = f"it applies to --loss {', '.join(users)}" if users else "no available method uses it"
            raise InputError(f"{option} does not apply to --loss {config.loss} (method {spec.name}); {hint}")
    return spec


def build_method(ctx: MethodContext) -> Method:
    return resolve_method(ctx.config).builder(ctx)


# ---- the embedding + loss method ---------------------------------------------------------

def build_backbone_for(config: TrainConfig) -> nn.Module:
    return build_backbone(config.backbone, embedding_size=config.embedding_size, input_size=config.input_size,
                          **config.backbone_options)


class EmbeddingLossMethod(Method):
    """Backbone -> embeddings -> loss (classification family or metric family with a miner).

    The backbone runs under autocast (mixed precision), the loss in float32: margin-based
    logits and distance matrices lose too much precision in bf16/fp16.
    """

    def __init__(self, backbone: nn.Module, loss: nn.Module, family: str, sampler_kind: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.loss = loss
        self.family = family
        self.sampler_kind = sampler_kind
        self.metric_family = family == "metric"

    @property
    def embedder(self) -> nn.Module:
        return self.backbone

    def training_step(self, batch: Batch) -> LossOutput:
        with self.autocast():
            emb = self.backbone(batch.images)
        self.last_embeddings = emb.detach()  # read by the engine's collapse monitor
        return self.loss(emb.float(), batch.labels)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Backbone and loss parameters with the decay split; a loss may add its own groups
        (center loss: centers with their own learning rate) via `param_groups(weight_decay)`."""
        own: list[dict[str, Any]] = []
        hook = getattr(self.loss, "param_groups", None)
        if callable(hook):
            own = list(hook(weight_decay))
        taken = {id(p) for g in own for p in g["params"]}
        return split_decay(self.named_parameters(), weight_decay, exclude=taken) + own


@register_method("embedding", uses=("mining", "partial_fc"))
def _build_embedding(ctx: MethodContext) -> Method:
    """Backbone + a classification or metric loss (optionally with a miner)."""
    cfg = ctx.config
    family = get_loss_spec(cfg.loss).family
    if family not in ("classification", "metric"):
        raise InputError(f"loss {cfg.loss!r} is a {family} loss; it needs its own method (none is registered "
                         f"for it), not backbone + loss")
    options = {**cfg.loss_options, **{k: v for k, v in (("margin", cfg.margin), ("scale", cfg.scale)) if v is not None}}
    seed = options.pop("seed", cfg.seed)

    def make(num_classes: int) -> nn.Module:
        return build_loss(cfg.loss, embedding_size=cfg.embedding_size, num_classes=num_classes, seed=seed,
                          miner=cfg.mining, miner_options=cfg.mining_options, **options)

    if cfg.partial_fc is None:
        loss = make(ctx.num_classes)
    elif family != "classification":
        raise InputError(f"--partial-fc shards the class rows of classification losses; loss {cfg.loss!r} "
                         f"is a {family} loss")
    else:
        loss = PartialFC(make, num_classes=ctx.num_classes, embedding_size=cfg.embedding_size,
                         sample_rate=cfg.partial_fc, seed=cfg.seed)
    sampler = "pk" if (family == "metric" or cfg.pk is not None) else "random"
    return EmbeddingLossMethod(build_backbone_for(cfg), loss, family, sampler)
