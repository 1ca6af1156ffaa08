"""The `ae` and `vae` training methods: reconstruct faces, embed with the encoder's mu.

`fvtool train --loss vae --recon bce|mse [--beta B] [--kl-warmup EPOCHS]` (or `--loss ae`) resolves
here (fvtool/training/methods.py). What a step does:
    x (normalised as the run says) -> encoder -> mu, logvar -> z = mu + sigma * eps (VAE, training)
      -> decoder -> logits;  target = x de-normalised to pixels in [0, 1]
    loss = ELBO terms (fvtool/losses/vae.py) [+ head_weight * head(mu, labels)]
The embedding (`embedder`, used by periodic validation and `fvtool embed`) is the encoder's mu.

Why targets are de-normalised rather than demanding `--normalisation unit`: the encoder may take
inputs normalised any way the run chooses (pm1 by default, like every other backbone), while the
reconstruction is always compared in pixel space [0, 1], where BCE is defined and where MSE values are
comparable between runs. A batch whose de-normalised values still fall outside [0, 1] (the data are
not normalised the way the config says) is refused by the loss's range check.

Why eps comes from a generator seeded by (seed, step) and drawn on the CPU: the sample of a step is a
pure function of its position, so a resumed run reproduces the uninterrupted one, and CPU and CUDA runs
draw the same noise.

Network: the encoder is the backbone `conv-encoder` (fvtool/models/autoencoder.py), whatever `--backbone`
says by default (the run's config then records `conv-encoder`); its options go in `backbone_options`
(`--backbone-opt key=value`): width (512, channels of the deepest block) and depth (default from the input
size). The latent size is `--embedding-size`.

Method options (`method_options` in the config, `--method-opt key=value` on the command line):
    head (none)        a loss from the registry applied to mu, e.g. "arcface", to push identities apart
    head_weight (1.0)  its weight in the total loss (the ELBO is ~0.5 per pixel value with reduction "mean";
                       with "sum" it is ~10^3-10^4 per image at 64 px and a head needs a weight of that order)
    head_options ({})  options of the head loss (`--margin`/`--scale` go here too when a head is set)
Loss options (`loss_options`, `--loss-opt`): reduction ("mean", default, or "sum") and output ("sigmoid",
default, or "tanh": the decoder's image in [-1, 1], MSE against the pixels mapped to [-1, 1]); see
fvtool/losses/vae.py.
    grid (8)           images in the reconstruction grid written after each epoch (0: none)
    samples (16)       images decoded from the prior after each epoch (VAE only; 0: none)

Images written into the run folder after epoch e (1-based, atomically):
    images/recon_epoch{e:03d}.png    row 1: the first `grid` training images (fixed for the whole run),
                                     row 2: their reconstructions (decoded from mu, eval mode)
    images/samples_epoch{e:03d}.png  decoded z ~ N(0, I), the same z every epoch (VAE only)
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from fvtool.atomic import atomic_path
from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.registry import build_loss, get_loss_spec
from fvtool.losses.vae import to_unit
from fvtool.models.autoencoder import AutoencoderConfig, ConvAutoencoder, reparameterise
from fvtool.models.registry import get_backbone_spec
from fvtool.training.config import TrainConfig
from fvtool.training.methods import Batch, Method, MethodContext, method_options, register_method, split_decay

METHOD_OPTIONS = {"head": None, "head_weight": 1.0, "head_options": {}, "grid": 8, "samples": 16}
IMAGES_DIRNAME = "images"
#: the backbone registry's name for this method's encoder
ENCODER_BACKBONE = "conv-encoder"
_GRID_PAD = 2


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, step, stream): resumable, device-independent noise.

    Stream 0 draws the reparameterisation noise of training step `step`; stream 1 the fixed prior samples.
    """
    state = np.random.SeedSequence([int(seed), int(step), 0xAE, int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def image_grid(rows: list[torch.Tensor], pad: int = _GRID_PAD) -> np.ndarray:
    """Rows of images [n, 3, H, W] in [0, 1] -> one uint8 RGB array with `pad` white pixels between."""
    n = max(r.shape[0] for r in rows)
    _, c, h, w = rows[0].shape
    out = np.full((pad + len(rows) * (h + pad), pad + n * (w + pad), 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        pix = (row.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
        pix = pix.expand(-1, 3, -1, -1) if c == 1 else pix
        for j in range(row.shape[0]):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = pix[j].permute(1, 2, 0).numpy()
    return out


def write_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _method_options(ctx: MethodContext) -> dict[str, Any]:
    given = method_options(ctx, f"--loss {ctx.config.loss}", tuple(METHOD_OPTIONS),
                           ", ".join(f"{k} (default {v!r})" for k, v in METHOD_OPTIONS.items()))
    opts = {**METHOD_OPTIONS, **given}
    for key in ("grid", "samples"):
        if not isinstance(opts[key], int) or opts[key] < 0:
            raise InputError(f"method option {key} must be an integer >= 0, got {opts[key]!r}")
    if not isinstance(opts["head_options"], dict):
        raise InputError(f"method option head_options must be a table/dict, got {opts['head_options']!r}")
    return opts


def _build_head(name: str | None, options: dict[str, Any], latent_dim: int, num_classes: int
                ) -> tuple[nn.Module | None, str | None]:
    """The optional supervised loss on mu, built through the loss registry (classification or metric)."""
    if not name:
        return None, None
    spec = get_loss_spec(name)
    if spec.family not in ("classification", "metric"):
        raise InputError(f"method option head={name!r} is a {spec.family} loss; the head on mu must be a "
                         "classification loss (e.g. arcface) or a metric loss (e.g. triplet)")
    params = inspect.signature(spec.factory).parameters
    opts = dict(options)
    if "embedding_size" in params:
        opts["embedding_size"] = latent_dim
    if "num_classes" in params:
        opts["num_classes"] = num_classes
    return build_loss(name, **opts), spec.family


class AutoencoderMethod(Method):
    """AE or VAE with an optional supervised head on mu; see the module docstring."""

    def __init__(self, model: ConvAutoencoder, loss: nn.Module, normalisation: Any, *, seed: int = 0,
                 kl_warmup_epochs: float = 0.0, head: nn.Module | None = None, head_family: str | None = None,
                 head_weight: float = 1.0, grid: int = 8, samples: int = 16) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.head = head
        self.head_weight = float(head_weight)
        self.metric_family = head_family == "metric"
        self.sampler_kind = "pk" if head_family == "metric" else "random"
        self.seed = int(seed)
        self.kl_warmup_epochs = float(kl_warmup_epochs)
        self.n_samples = samples if model.variational else 0
        s = model.cfg.input_size
        self.register_buffer("_mean", torch.tensor(normalisation.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("_std", torch.tensor(normalisation.std, dtype=torch.float32).view(1, 3, 1, 1))
        # the grid's input images: the first `grid` images of the run's first batch, kept in the state dict
        # (fixed shape, so checkpoints load into a fresh method) so a resumed run shows the same faces
        self.register_buffer("grid_images", torch.zeros(grid, 3, s, s))
        self.register_buffer("grid_count", torch.zeros((), dtype=torch.long))

    @property
    def embedder(self) -> nn.Module:
        return self.model.encoder

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the run's normalisation: the reconstruction targets, in [0, 1] for image data."""
        return images.float() * self._std + self._mean

    def training_step(self, batch: Batch) -> LossOutput:
        target = self.to_pixels(batch.images)
        if self.training and int(self.grid_count) < self.grid_images.shape[0]:  # not from validation batches
            self._keep_for_grid(target)
        with self.autocast():
            mu, logvar = self.model.encoder.encode(batch.images)
        mu = mu.float()
        logvar = logvar.float() if logvar is not None else None
        z = reparameterise(mu, logvar, step_generator(self.seed, batch.step)) if logvar is not None else mu
        with self.autocast():
            logits = self.model.decoder(z)
        if self.kl_warmup_epochs > 0:
            self.loss.kl_warmup_steps = max(1, round(self.kl_warmup_epochs * batch.steps_per_epoch))
        out = self.loss(logits.float(), target.contiguous(), mu, logvar, step=batch.step)
        self.last_embeddings = mu.detach()
        if self.head is None:
            return out
        head_out = self.head(mu, batch.labels)
        components = dict(out.components)
        components["head"] = float(head_out.loss.detach())
        components.update({f"head_{k}": v for k, v in head_out.components.items() if k != "loss"})
        loss = out.loss + self.head_weight * head_out.loss
        components["loss"] = float(loss.detach())
        return LossOutput(loss=loss, components=components, logits=head_out.logits, stats=head_out.stats)

    def _keep_for_grid(self, pixels: torch.Tensor) -> None:
        have, want = int(self.grid_count), self.grid_images.shape[0]
        take = min(want - have, pixels.shape[0])
        self.grid_images[have:have + take] = pixels[:take].detach().clamp(0, 1).to(self.grid_images.dtype)
        self.grid_count.fill_(have + take)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        own: list[dict[str, Any]] = []
        hook = getattr(self.head, "param_groups", None)
        if callable(hook):
            own = list(hook(weight_decay))
        taken = {id(p) for g in own for p in g["params"]}
        return split_decay(self.named_parameters(), weight_decay, exclude=taken) + own

    @torch.no_grad()
    def epoch_images(self) -> dict[str, np.ndarray]:
        """The grids written after an epoch, as uint8 arrays (eval mode: reconstructions decode mu)."""
        was_training = self.training
        self.eval()
        out: dict[str, np.ndarray] = {}
        try:
            n = int(self.grid_count)
            if n:
                x = self.grid_images[:n]
                normalised = (x - self._mean) / self._std
                mu, _ = self.model.encoder.encode(normalised)
                recon = to_unit(self.model.decoder(mu.float()).float(), self.loss.output)
                out["recon"] = image_grid([x, recon])
            if self.n_samples:
                g = step_generator(self.seed, 0, stream=1)
                z = torch.randn((self.n_samples, self.model.cfg.latent_dim), generator=g)
                samples = to_unit(self.model.decoder(z.to(self._mean.device)).float(), self.loss.output)
                half = (self.n_samples + 1) // 2
                out["samples"] = image_grid([samples[:half], samples[half:]] if self.n_samples > 1 else [samples])
        finally:
            self.train(was_training)
        return out

    def on_epoch_end(self, epoch: int, run_dir: Path) -> None:
        for kind, pixels in self.epoch_images().items():
            write_png(Path(run_dir) / IMAGES_DIRNAME / f"{kind}_epoch{epoch + 1:03d}.png", pixels)


def _default_backbone() -> str:
    return next(f.default for f in fields(TrainConfig) if f.name == "backbone")  # type: ignore[return-value]


def _build(ctx: MethodContext, variational: bool) -> Method:
    cfg = ctx.config
    opts = _method_options(ctx)
    if cfg.backbone not in (ENCODER_BACKBONE, _default_backbone()):
        raise InputError(f"--loss {cfg.loss} trains its own convolutional encoder/decoder ({ENCODER_BACKBONE}); "
                         f"--backbone {cfg.backbone} does not apply (set its size with --embedding-size and "
                         "--backbone-opt width=/depth=)")
    # the run's config, config.json and checkpoints then name the network that actually ran
    cfg.backbone = ENCODER_BACKBONE
    arch = get_backbone_spec(ENCODER_BACKBONE).options()
    unknown = sorted(set(cfg.backbone_options) - set(arch))
    if unknown:
        raise InputError(f"--loss {cfg.loss}: backbone option(s) {', '.join(unknown)} unknown; {ENCODER_BACKBONE} "
                         f"takes {', '.join(f'{k} (default {v!r})' for k, v in arch.items())}")
    arch.update(cfg.backbone_options)
    model = ConvAutoencoder(AutoencoderConfig(input_size=cfg.input_size, latent_dim=cfg.embedding_size,
                                              variational=variational, depth=arch["depth"], width=arch["width"]))
    loss_opts: dict[str, Any] = {**cfg.loss_options, "recon": cfg.recon or "bce"}
    if variational:
        loss_opts["beta"] = 1.0 if cfg.beta is None else cfg.beta
    loss = build_loss(cfg.loss, **loss_opts)
    head_opts = dict(opts["head_options"])
    for key in ("margin", "scale"):  # the shortcuts belong to the head's margin loss, if there is one
        value = getattr(cfg, key)
        if value is not None:
            if not opts["head"]:
                raise InputError(f"--{key} applies to a margin loss; --loss {cfg.loss} has none unless a head is "
                                 "set (--method-option head=arcface)")
            head_opts[key] = value
    head, family = _build_head(opts["head"], head_opts, cfg.embedding_size, ctx.num_classes)
    return AutoencoderMethod(model, loss, ctx.normalisation, seed=cfg.seed,
                             kl_warmup_epochs=float(cfg.kl_warmup or 0) if variational else 0.0, head=head,
                             head_family=family, head_weight=opts["head_weight"], grid=opts["grid"],
                             samples=opts["samples"])


@register_method("vae", losses=("vae",), uses=("recon", "beta", "kl_warmup"))
def build_vae(ctx: MethodContext) -> Method:
    """Variational autoencoder: BCE/MSE reconstruction + beta * KL; mu is the embedding."""
    return _build(ctx, variational=True)


@register_method("ae", losses=("ae",), uses=("recon",))
def build_ae(ctx: MethodContext) -> Method:
    """Autoencoder: BCE/MSE reconstruction; the code is the embedding."""
    return _build(ctx, variational=False)
