"""ELBO terms for the autoencoder (`ae`) and variational autoencoder (`vae`) feature extractors.

Formulas (x = target image in [0, 1], x_hat = sigmoid(decoder logits), per image, P = C*H*W pixel values,
L latent dimensions):
    BCE(x, x_hat) = -sum_p [ x_p log x_hat_p + (1 - x_p) log(1 - x_hat_p) ]      (computed from the logits,
                                                                               numerically stable)
    MSE(x, x_hat) =  sum_p (x_hat_p - x_p)^2
    KL(q(z|x) || N(0, I)) = -0.5 * sum_l (1 + logvar_l - mu_l^2 - exp(logvar_l))   (nats per image)
    loss = recon + w(step) * KL            with reduction "sum"  (recon: per-image sum; both averaged
                                                                   over the batch: the negative ELBO
                                                                   per image for BCE)
    loss = recon / P + w(step) * KL / P    with reduction "mean" (per pixel value: the same objective
                                                                   scaled by 1/P, so beta keeps its meaning)
    w(step) = beta * min(1, step / kl_warmup_steps)   (linear warm-up; w = beta when kl_warmup_steps = 0)
The AE uses the reconstruction term only.

Default reduction "mean": both reductions are the same objective (up to the constant factor P), so the
choice only rescales gradients. "mean" keeps them at the scale of the other losses, so the default SGD
learning rate (0.1) trains stably; "sum" (values ~10^3 per image at 64 px) needs Adam or a ~P times smaller
learning rate, or the loss overflows within a few steps.

Note on "mean": recipes that average the reconstruction over pixels but sum the KL over latents
(`F.mse_loss(x_hat, x) + beta * KL`) weight the KL P times more than the ELBO does; reproduce them here
with `reduction="mean"` and `beta` multiplied by P (e.g. 12288 at 3x64x64).

Output activation (`output`, loss option): "sigmoid" (default) makes the image x_hat = sigmoid(logits) in
[0, 1], compared with the pixels x. "tanh" makes it tanh(logits) in [-1, 1], compared with 2x - 1 (the
pixels in [-1, 1]): study 2's VAE, whose decoder "employs a 3x3 transpose convolution followed by a Tanh
activation function to normalize the pixel values between -1 and 1", trained with
`F.mse_loss(x_hat, x, reduction='sum')` on inputs normalised to [-1, 1]; MSE only (BCE is not a likelihood
for values in [-1, 1]). Its "sum" is then the squared error in [-1, 1] units, 4x that in [0, 1] units.

The [0, 1] rule: the targets handed to the loss are pixel values in [0, 1] for both activations (BCE is
only a likelihood there; "tanh" maps them to [-1, 1] itself). The AE/VAE method builds
targets by undoing the input normalisation; targets outside [0, 1] (data normalised some other way, or
not images) raise an `InputError` instead of silently training on a meaningless loss.

Components logged per step (averaged per epoch by the engine): `recon` (the reconstruction term as it
enters the loss), `mse_pixel` (mean squared error per pixel value in [0, 1] units, comparable between BCE,
MSE and tanh runs), `kl` (nats per image, whatever the reduction) and `kl_weight` (w(step)) for the VAE.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.registry import register_loss

RECON_KINDS = ("bce", "mse")
REDUCTIONS = ("sum", "mean")
OUTPUTS = ("sigmoid", "tanh")
_RANGE_TOL = 1e-5


def check_unit_range(target: torch.Tensor, recon: str) -> None:
    """Refuse reconstruction targets outside [0, 1] with a message that says what to change."""
    lo, hi = torch.aminmax(target.detach())
    lo_f, hi_f = float(lo), float(hi)
    if lo_f < -_RANGE_TOL or hi_f > 1 + _RANGE_TOL or not (torch.isfinite(lo) and torch.isfinite(hi)):
        why = ("binary cross-entropy is a likelihood only for targets in [0, 1]" if recon == "bce"
               else "the decoder's output is a sigmoid in [0, 1]")
        raise InputError(
            f"{recon.upper()} reconstruction needs targets in [0, 1] ({why}), but the batch spans "
            f"[{lo_f:.4g}, {hi_f:.4g}]: the images are normalised differently from what the autoencoder "
            "was told; pass the normalisation's mean/std so targets are de-normalised to pixel values"
        )


def to_unit(logits: torch.Tensor, output: str = "sigmoid") -> torch.Tensor:
    """The decoder's image in [0, 1] pixel units, whichever output activation it was trained with."""
    return torch.sigmoid(logits) if output == "sigmoid" else (torch.tanh(logits) + 1) / 2


def reconstruction_terms(logits: torch.Tensor, target: torch.Tensor, recon: str,
                         output: str = "sigmoid") -> torch.Tensor:
    """Per-image reconstruction loss [B] (summed over pixels); `logits` are the decoder's pre-activation
    output, `target` pixels in [0, 1] (compared as 2 * target - 1 with the tanh output)."""
    if output == "tanh":
        if recon != "mse":
            raise InputError(f"output tanh needs recon mse (got {recon!r}): BCE is not a likelihood for [-1, 1]")
        per = (torch.tanh(logits) - (2 * target - 1)).square()
    elif recon == "bce":
        per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif recon == "mse":
        per = (torch.sigmoid(logits) - target).square()
    else:
        raise InputError(f"unknown reconstruction loss {recon!r}; choose one of {', '.join(RECON_KINDS)}")
    return per.flatten(1).sum(1)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per image [B], in nats."""
    return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)


def kl_weight(beta: float, step: int, warmup_steps: int) -> float:
    """Linear KL warm-up: 0 at step 0, beta from step `warmup_steps` on (beta throughout when 0)."""
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0, step) / warmup_steps)


class ReconstructionLoss(nn.Module):
    """Negative ELBO (VAE) or reconstruction loss (AE); see the module docstring for the formulas."""

    def __init__(
        self,
        recon: str = "bce",
        reduction: str = "mean",
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        variational: bool = True,
        output: str = "sigmoid",
    ) -> None:
        super().__init__()
        if recon not in RECON_KINDS:
            raise InputError(f"unknown reconstruction loss {recon!r}; choose one of {', '.join(RECON_KINDS)}")
        if reduction not in REDUCTIONS:
            raise InputError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        if output not in OUTPUTS:
            raise InputError(f"unknown output activation {output!r}; choose one of {', '.join(OUTPUTS)}")
        if output == "tanh" and recon != "mse":
            raise InputError(f"output tanh needs --recon mse (got {recon}): BCE is not a likelihood for [-1, 1] images")
        self.output = output
        if beta < 0 or kl_warmup_steps < 0:
            raise InputError(f"beta and kl_warmup_steps must be >= 0, got {beta}, {kl_warmup_steps}")
        self.recon, self.reduction, self.beta = recon, reduction, float(beta)
        self.kl_warmup_steps, self.variational = int(kl_warmup_steps), variational

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        mu: torch.Tensor | None = None,
        logvar: torch.Tensor | None = None,
        step: int = 0,
    ) -> LossOutput:
        if logits.shape != target.shape:
            raise InputError(f"reconstruction shape {list(logits.shape)} != target shape {list(target.shape)}")
        check_unit_range(target, self.recon)
        n_values = target[0].numel()
        scale = 1.0 if self.reduction == "sum" else 1.0 / n_values
        recon = reconstruction_terms(logits, target, self.recon, self.output).mean() * scale
        with torch.no_grad():
            mse_pixel = float((to_unit(logits, self.output) - target).square().mean())
        components = {"recon": float(recon.detach()), "mse_pixel": mse_pixel}
        loss = recon
        if self.variational:
            if mu is None or logvar is None:
                raise InputError("the VAE loss needs mu and logvar from the encoder")
            kl = kl_divergence(mu, logvar).mean()
            w = kl_weight(self.beta, step, self.kl_warmup_steps)
            loss = loss + w * scale * kl
            components.update(kl=float(kl.detach()), kl_weight=w)
        components["loss"] = float(loss.detach())
        return LossOutput(loss=loss, components=components)


@register_loss("vae", family="reconstruction")
def vae_loss(recon: str = "bce", reduction: str = "mean", beta: float = 1.0,
             kl_warmup_steps: int = 0, output: str = "sigmoid") -> ReconstructionLoss:
    """VAE negative ELBO: BCE or MSE reconstruction + beta * KL (optional linear warm-up); sigmoid or tanh output."""
    return ReconstructionLoss(recon, reduction, beta, kl_warmup_steps, variational=True, output=output)


@register_loss("ae", family="reconstruction")
def ae_loss(recon: str = "bce", reduction: str = "mean", output: str = "sigmoid") -> ReconstructionLoss:
    """Autoencoder reconstruction loss: BCE or MSE between the input and its reconstruction."""
    return ReconstructionLoss(recon, reduction, variational=False, output=output)
