"""Batched, seeded augmentations on image tensors, and the normalisation every stage shares.

Why batched tensor ops: per-image PIL transforms would cost more than the training step on a
2-core CPU. Here a whole batch goes through a few vectorised ops (one `grid_sample` for
shift/scale/rotation, one grouped convolution for blur) on whatever device trains.

Why an explicit generator: every random draw comes from a `torch.Generator` the caller seeds
(the engine seeds one per batch from (seed, epoch, batch index)), so a batch's augmentation
is a pure function of its position: resuming mid-run reproduces it exactly, and disabling one
augmentation never changes where the others' randomness comes from in another run.
Random parameters are drawn on the CPU and moved to the data's device, so CPU and CUDA runs
draw the same parameters.

Pipeline order: uint8 NHWC -> float NCHW in [0, 1] -> pad+crop -> affine (shift, scale,
rotation) -> horizontal flip -> blur -> brightness/contrast -> normalise -> channels_last.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F

from fvtool.errors import InputError

#: named normalisations: (mean, std) applied to pixels scaled to [0, 1]
NORMALISATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "pm1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # [-1, 1]: (x - 127.5) / 127.5, insightface/facenet
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # [0, 1]: needed by BCE reconstruction
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Normalisation:
    """x_normalised = (x / 255 - mean) / std, per RGB channel; recorded in configs and HDF5 files."""

    name: str = "pm1"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def named(cls, name: str) -> Normalisation:
        if name not in NORMALISATIONS:
            raise InputError(f"unknown normalisation {name!r}; choose one of {', '.join(NORMALISATIONS)}")
        mean, std = NORMALISATIONS[name]
        return cls(name, mean, std)

    def describe(self) -> str:
        return f"{self.name}: (x/255 - {list(self.mean)}) / {list(self.std)}"

    def apply(self, x01: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        return (x01 - mean) / std


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations run and how strongly; all off except `flip` by default.

    flip        probability of a horizontal flip
    shift       max translation, fraction of the image side (random crop/shift)
    scale       (min, max) zoom factor; (1, 1) is off
    rotate      max rotation in degrees (uniform in [-rotate, rotate])
    pad         pixels of zero padding before a random crop back to the original size
    blur        probability of a Gaussian blur with sigma uniform in `blur_sigma` (pixels)
    brightness  max relative brightness change: factor uniform in [1 - b, 1 + b]
    contrast    max relative contrast change around the image's mean grey
    """

    flip: float = 0.5
    shift: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0
    pad: int = 0
    blur: float = 0.0
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    brightness: float = 0.0
    contrast: float = 0.0

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.flip <= 1, "flip must be a probability in [0, 1]"),
            (0 <= self.shift < 0.5, "shift must be in [0, 0.5)"),
            (0.2 <= self.scale[0] <= self.scale[1] <= 5, "scale must be (min, max) with 0.2 <= min <= max <= 5"),
            (0 <= self.rotate <= 180, "rotate must be in [0, 180] degrees"),
            (0 <= self.pad <= 64, "pad must be in 0..64 pixels"),
            (0 <= self.blur <= 1, "blur must be a probability in [0, 1]"),
            (0 < self.blur_sigma[0] <= self.blur_sigma[1] <= 10, "blur_sigma must be (min, max) in (0, 10]"),
            (0 <= self.brightness < 1, "brightness must be in [0, 1)"),
            (0 <= self.contrast < 1, "contrast must be in [0, 1)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"augmentation: {msg} (got {self})")

    @property
    def affine(self) -> bool:
        return self.shift > 0 or self.rotate > 0 or self.scale != (1.0, 1.0)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown augmentation option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        kw = {k: (tuple(float(x) for x in v) if isinstance(v, list | tuple) else v) for k, v in d.items()}
        if "pad" in kw:
            kw["pad"] = int(kw["pad"])
        return cls(**kw)

    @classmethod
    def parse(cls, text: str) -> AugmentConfig:
        """Parse the CLI spelling, e.g. `flip,shift=0.1,scale=0.9:1.1,rotate=10,blur=0.2` or `none`.

        A bare name switches it on at a sensible default strength; `none` turns everything off.
        """
        defaults = {"flip": 0.5, "shift": 0.08, "scale": (0.9, 1.1), "rotate": 10.0, "pad": 4, "blur": 0.2,
                    "brightness": 0.2, "contrast": 0.2}
        d: dict[str, Any] = {"flip": 0.0}
        text = text.strip()
        if text in ("", "none", "off"):
            return cls(**d)
        for part in text.split(","):
            name, _, value = part.strip().partition("=")
            if name not in defaults and name != "blur_sigma":
                raise InputError(f"--augment: unknown augmentation {name!r}; known: {', '.join(defaults)}, blur_sigma")
            try:
                if not value:
                    d[name] = defaults[name]
                elif name in ("scale", "blur_sigma"):
                    lo, _, hi = value.partition(":")
                    d[name] = (float(lo), float(hi or lo))
                elif name == "pad":
                    d[name] = int(value)
                else:
                    d[name] = float(value)
            except (ValueError, KeyError):
                raise InputError(f"--augment: cannot read {part!r} "
                                 "(examples: shift=0.1, scale=0.9:1.1, pad=4)") from None
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def to_float01(batch_u8_nhwc: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [0, 1] (contiguous NCHW)."""
    return batch_u8_nhwc.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


@dataclass
class BatchTransform:
    """uint8 NHWC batch -> normalised float NCHW (channels_last), with optional augmentation."""

    normalisation: Normalisation = field(default_factory=Normalisation)
    augment: AugmentConfig | None = None
    channels_last: bool = True

    def __call__(self, batch_u8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_float01(batch_u8)
        a = self.augment
        if a is not None:
            if generator is None:
                raise ValueError("augmentation needs an explicit torch.Generator (seeded by the caller)")
            x = augment_batch(x, a, generator)
        x = self.normalisation.apply(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def pad_crop(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` pixels, then crop back to the original size at a random offset per image."""
    b, _c, h, w = x.shape
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # [B, H]
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # [B, W]
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()


def affine_params(b: int, a: AugmentConfig, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Per-image (angle in degrees, zoom, tx, ty); tx/ty in grid units (the image side spans 2)."""
    ang = _uniform(g, b, -a.rotate, a.rotate)
    # log-uniform zoom, so 0.9..1.1 zooms in and out equally often
    zoom = torch.exp(_uniform(g, b, math.log(a.scale[0]), math.log(a.scale[1])))
    tx = _uniform(g, b, -a.shift, a.shift) * 2.0
    ty = _uniform(g, b, -a.shift, a.shift) * 2.0
    return ang, zoom, tx, ty


def apply_affine(x: torch.Tensor, ang: torch.Tensor, zoom: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor
                 ) -> torch.Tensor:
    """Rotate by `ang` degrees (counter-clockwise) and zoom in by `zoom` about the centre, then shift
    the sampling window by (tx, ty); one grid_sample (bilinear, zeros outside). Output pixel p samples
    the input at R(ang) p / zoom + t: torchvision's `affine(angle=-ang, scale=zoom,
    translate=-zoom R(-ang) t)` (its angles are clockwise; tested)."""
    rad = ang * (math.pi / 180.0)
    cos, sin = torch.cos(rad) / zoom, torch.sin(rad) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # [B, 2, 3]
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(x: torch.Tensor, a: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Shift, zoom and rotate each image about its centre (random crop/shift and scale)."""
    return apply_affine(x, *affine_params(x.shape[0], a, g))


def random_flip(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(x.shape[0], generator=g) < p).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def random_blur(x: torch.Tensor, p: float, sigma: tuple[float, float], g: torch.Generator) -> torch.Tensor:
    """Gaussian blur on a random subset: per-image separable kernels in one grouped convolution."""
    b, c, h, w = x.shape
    on = torch.rand(b, generator=g) < p
    s = _uniform(g, b, sigma[0], sigma[1])
    radius = max(1, math.ceil(2.5 * sigma[1]))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None, :] / s[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)
    delta = (t == 0).float()[None, :].expand(b, -1)
    k = torch.where(on[:, None], k, delta).to(x.device, x.dtype)  # [B, K]
    kk = k.repeat_interleave(c, 0)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kk[:, None, None, :], groups=b * c)
    y = F.conv2d(y, kk[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def random_colour(x: torch.Tensor, brightness: float, contrast: float, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    bf = _uniform(g, b, 1 - brightness, 1 + brightness).to(x.device, x.dtype).view(b, 1, 1, 1)
    cf = _uniform(g, b, 1 - contrast, 1 + contrast).to(x.device, x.dtype).view(b, 1, 1, 1)
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - grey) * cf + grey).mul(bf).clamp_(0.0, 1.0)


def augment_batch(x: torch.Tensor, a: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Apply the enabled augmentations to a float [B, 3, H, W] batch in [0, 1]."""
    if a.pad > 0:
        x = pad_crop(x, a.pad, g)
    if a.affine:
        x = random_affine(x, a, g)
    if a.flip > 0:
        x = random_flip(x, a.flip, g)
    if a.blur > 0:
        x = random_blur(x, a.blur, a.blur_sigma, g)
    if a.brightness > 0 or a.contrast > 0:
        x = random_colour(x, a.brightness, a.contrast, g)
    return x
