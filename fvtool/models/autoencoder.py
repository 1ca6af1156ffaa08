"""Convolutional autoencoder (AE) and variational autoencoder (VAE) for face crops.

Why these exist: two of the studies fvtool serves ask whether the latent code of an AE or a VAE,
trained only to reconstruct faces, can serve as a face embedding. The encoder's mean `mu` is that
embedding; `embed`, `verify` and `report` then treat it like any other backbone.

Architecture (the usual DCGAN/VAE shape, mirrored):
    encoder: `depth` blocks of [3x3 conv stride 2, pad 1 -> BatchNorm -> LeakyReLU(0.2)], each halving
             the side, down to a `width x m x m` map (m = input_size / 2**depth, e.g. 512 x 4 x 4 at 64 px),
             flattened, then a linear layer to `mu` (and one to `logvar` for the VAE).
    decoder: linear latent -> width x m x m, then `depth` blocks of [3x3 transposed conv stride 2, pad 1,
             output_padding 1 -> BatchNorm -> LeakyReLU(0.2)] doubling the side back, and a final 3x3 conv to
             3 channels. The decoder returns *logits*: the image is `sigmoid(logits)` in [0, 1] pixel space,
             so BCE (with logits, numerically stable) and MSE compare against the same targets.
Channel widths: the deepest block has `width` channels, each shallower one half as many (at least 16),
e.g. depth 4, width 512 -> 64, 128, 256, 512.

Supported input sizes: each stride-2 conv (3x3, pad 1) maps a side n to ceil(n / 2); the final map
side m must be between 2 and 8. With the default depth (the largest that halves the side exactly and
leaves m >= 3): 32 -> 4x4 (depth 3), 64 -> 4x4 (4), 96 -> 3x3 (5), 112 -> 7x7 (4), 128 -> 4x4 (5),
160 -> 5x5 (5). An explicit depth may also round up an odd side: 112 with depth 5 is
112 -> 56 -> 28 -> 14 -> 7 -> 4, the 512 x 4 x 4 map of study 2's VAE; the decoder then mirrors the
encoder's sides exactly (output_padding 0 where the encoder rounded up: 4 -> 7 -> 14 -> ... -> 112).
Other sizes are refused with an error naming the sizes that work.

The encoder alone is also the backbone `conv-encoder` (registry name; options `width`, `depth`), so a
classification or metric loss can train the very same architecture as the AE/VAE for a fair comparison,
and the AE/VAE runs record `conv-encoder` as their backbone.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from fvtool.errors import InputError
from fvtool.models.registry import register_backbone

#: the sizes the docs and tests promise; `check_geometry` accepts any size meeting the rule above.
SUPPORTED_INPUT_SIZES: tuple[int, ...] = (32, 64, 96, 112, 128)
MIN_MAP, MAX_MAP, MIN_WIDTH = 2, 8, 16


def default_depth(input_size: int) -> int:
    """The largest number of stride-2 stages that leaves an integer final map of side >= 3."""
    depth = 0
    side = input_size
    while side % 2 == 0 and side // 2 >= 3:
        side //= 2
        depth += 1
    return depth


def encoder_sides(input_size: int, depth: int) -> list[int]:
    """Map sides after each encoder block, input first: a 3x3 stride-2 pad-1 conv maps n to ceil(n / 2)."""
    sides = [input_size]
    for _ in range(depth):
        sides.append((sides[-1] + 1) // 2)
    return sides


def check_geometry(input_size: int, depth: int | None) -> tuple[int, int]:
    """Return (depth, final map side) or raise a clear error for unsupported sizes."""
    chosen = "" if depth is None else f" with depth {depth}"
    if depth is None:
        depth = default_depth(input_size)
        exact = input_size / 2**depth
        side: float = exact if exact == int(exact) else 0  # the default depth halves exactly
    else:
        side = encoder_sides(input_size, depth)[-1] if depth >= 1 and input_size >= 1 else 0
    if depth < 1 and chosen:
        raise InputError(f"autoencoder depth must be >= 1, got {depth}")
    if depth < 1 or side != int(side) or not MIN_MAP <= side <= MAX_MAP:
        raise InputError(
            f"autoencoder input size {input_size}{chosen} is not supported: the stride-2 blocks must "
            f"leave a final map of {MIN_MAP}..{MAX_MAP} pixels (the default depth halves the side exactly) "
            f"(supported e.g. {', '.join(map(str, SUPPORTED_INPUT_SIZES))} with the default depth)"
        )
    return depth, int(side)


def channel_widths(depth: int, width: int) -> list[int]:
    """Per-block channels, shallow to deep: the deepest has `width`, each earlier one half (>= 16)."""
    return [max(MIN_WIDTH, width // 2 ** (depth - 1 - i)) for i in range(depth)]


@dataclass(frozen=True)
class AutoencoderConfig:
    """Everything needed to rebuild the model from a run's config.json."""

    input_size: int = 64
    latent_dim: int = 128
    variational: bool = True
    depth: int | None = None  # None: default_depth(input_size)
    width: int = 512
    in_channels: int = 3

    def resolved(self) -> AutoencoderConfig:
        depth, _ = check_geometry(self.input_size, self.depth)
        if self.latent_dim < 1 or self.width < 1:
            raise InputError(f"latent_dim and width must be positive, got {self.latent_dim}, {self.width}")
        return AutoencoderConfig(**{**asdict(self), "depth": depth})

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2)
    )


def _up(cin: int, cout: int, output_padding: int = 1) -> nn.Sequential:
    """Doubles the side (output_padding 1) or maps n to 2n - 1 (0), the inverse of a rounded-up halving."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=output_padding, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.2),
    )


class ConvEncoder(nn.Module):
    """Image [B, C, s, s] -> (mu [B, L], logvar [B, L] or None). Also the `ae`/`vae` embedding backbone."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        assert cfg.depth is not None
        self.cfg = cfg
        _, side = check_geometry(cfg.input_size, cfg.depth)
        widths = channel_widths(cfg.depth, cfg.width)
        chans = [cfg.in_channels, *widths]
        self.features = nn.Sequential(*[_down(a, b) for a, b in itertools.pairwise(chans)])
        flat = widths[-1] * side * side
        self.fc_mu = nn.Linear(flat, cfg.latent_dim)
        self.fc_logvar = nn.Linear(flat, cfg.latent_dim) if cfg.variational else None

    def _check_input(self, x: torch.Tensor) -> None:
        s, c = self.cfg.input_size, self.cfg.in_channels
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] != s or x.shape[3] != s:
            raise InputError(
                f"autoencoder built for [B, {c}, {s}, {s}] images got a batch of shape {list(x.shape)}; "
                f"resize the crops to {s}x{s} or train a model at this size"
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._check_input(x)
        h = self.features(x).flatten(1)
        return self.fc_mu(h), (self.fc_logvar(h) if self.fc_logvar is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding: mu (the posterior mean for the VAE, the code for the AE); no sampling."""
        return self.encode(x)[0]


class ConvDecoder(nn.Module):
    """Latent [B, L] -> image logits [B, C, s, s] (apply sigmoid for pixels in [0, 1])."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        cfg = cfg.resolved()
        assert cfg.depth is not None
        self.side = check_geometry(cfg.input_size, cfg.depth)[1]
        widths = channel_widths(cfg.depth, cfg.width)[::-1]  # deep to shallow
        self.width = widths[0]
        self.fc = nn.Linear(cfg.latent_dim, widths[0] * self.side * self.side)
        outs = [*widths[1:], widths[-1]]  # mirror of the encoder; the last block keeps its width
        sides = encoder_sides(cfg.input_size, cfg.depth)[::-1]  # deep to shallow: the sides to rebuild
        pads = [big - (2 * small - 1) for small, big in itertools.pairwise(sides)]  # 1 when doubled exactly
        self.blocks = nn.Sequential(*[_up(a, b, p) for a, b, p in zip(widths, outs, pads, strict=True)])
        self.to_image = nn.Conv2d(outs[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(z.shape[0], self.width, self.side, self.side)
        return self.to_image(self.blocks(h))


def reparameterise(
    mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) drawn from `generator` (seeded runs repeat exactly).

    eps is drawn on the generator's device and moved to mu's, so a CPU generator gives the same noise
    whether the model runs on the CPU or a GPU.
    """
    dev = generator.device if generator is not None else mu.device
    eps = torch.randn(mu.shape, generator=generator, device=dev, dtype=mu.dtype).to(mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


@dataclass
class AutoencoderOutput:
    logits: torch.Tensor  # decoder output before the sigmoid, [B, C, s, s]
    mu: torch.Tensor  # [B, L]
    logvar: torch.Tensor | None  # [B, L] for the VAE, None for the AE
    z: torch.Tensor  # the code that was decoded (a sample for the VAE in training, mu otherwise)


class ConvAutoencoder(nn.Module):
    """Encoder + decoder. In training mode the VAE decodes a reparameterised sample; in eval mode mu."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.cfg = cfg.resolved()
        self.encoder = ConvEncoder(self.cfg)
        self.decoder = ConvDecoder(self.cfg)

    @property
    def variational(self) -> bool:
        return self.cfg.variational

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> AutoencoderOutput:
        mu, logvar = self.encoder.encode(x)
        z = reparameterise(mu, logvar, generator) if (logvar is not None and self.training) else mu
        return AutoencoderOutput(self.decoder(z), mu, logvar, z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [0, 1] decoded from z ~ N(0, I) (meaningful for the VAE, whose prior that is); for the
        default sigmoid output (a model trained with output=tanh: `fvtool.losses.vae.to_unit(logits, "tanh")`)."""
        p = next(self.parameters())
        z = torch.randn((n, self.cfg.latent_dim), generator=generator, device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction in [0, 1]: decodes mu (no sampling); sigmoid output, as `sample`."""
        mu, _ = self.encoder.encode(x)
        return torch.sigmoid(self.decoder(mu))


@register_backbone("conv-encoder", min_input_size=16, input_sizes=SUPPORTED_INPUT_SIZES)
def conv_encoder(*, embedding_size: int, input_size: int, width: int = 512, depth: int | None = None) -> ConvEncoder:
    """The AE/VAE encoder (stride-2 3x3 conv + BN + LeakyReLU blocks, linear to the code); no pooling."""
    return ConvEncoder(AutoencoderConfig(input_size=input_size, latent_dim=embedding_size, variational=False,
                                         depth=depth, width=width))
