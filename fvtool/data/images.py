"""Robust image decoding: any common file in, one 8-bit RGB `PIL.Image` out, or a typed error.

Why one decoder for every stage: `align` reads arbitrary user folders (JPEG, PNG, PGM, BMP, GIF,
TIFF, WebP in every colour mode), and the training cache later reads the aligned crops. If the
two decoded differently (a 16-bit PNG clipped here and scaled there, an EXIF-rotated photo
upright in one and sideways in the other) the model would see images that the detector never
did. Rules, applied in this order:

- the file is fully decoded (`Image.load`), so truncated files fail here and not later;
  `ImageFile.LOAD_TRUNCATED_IMAGES` is never set, because a truncated JPEG decoded with grey
  bottom rows looks like a valid face image and poisons training silently;
- multi-frame files (GIF, TIFF) give their first frame;
- the EXIF orientation tag is applied (phone photos are stored sideways);
- an embedded ICC profile is converted to sRGB (CMYK JPEGs from print workflows);
- 16-bit and 32-bit integer images are *scaled* to 8 bits (Pillow's own `convert("L")` clips
  everything above 255 to white); float images are scaled from [0, 1] or their own range;
- transparency (RGBA, LA, palette with a transparent index) is composited on neutral grey,
  because a transparent area stored as black or white would be an unnatural background;
- everything else (grey, bilevel, palette, CMYK, YCbCr, LAB, HSV) goes through Pillow's
  conversion to RGB.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from fvtool.errors import InputError

#: background for transparent pixels: neutral mid grey
NEUTRAL_BACKGROUND = (128, 128, 128)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class ImageReadError(InputError):
    """A file could not be decoded into an image; `reason` is short enough for a manifest column."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode `path` fully into an 8-bit RGB image (see the module docstring for the rules).

    Raises `ImageReadError` (an `InputError`) naming the file and the reason for missing,
    zero-byte, truncated, corrupt and non-image files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read file: {e.strerror or e}") from e
    return decode_rgb(data, path)


def decode_rgb(data: bytes, name: str | os.PathLike[str] = "<bytes>") -> Image.Image:
    """`load_rgb` for bytes already in memory; `name` is only used in error messages."""
    if not data:
        raise ImageReadError(name, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Large images are fine (we downscale for detection); a *real* bomb still raises.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(name, f"refused, too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise ImageReadError(name, f"truncated or incomplete file ({msg})") from None
        raise ImageReadError(name, f"corrupt image data ({msg})") from None
    try:
        return to_rgb(img)
    except (OSError, ValueError) as e:
        raise ImageReadError(name, f"cannot convert {img.mode} image to RGB ({e})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB, applying EXIF orientation and ICC profile."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = _apply_exif_orientation(img)
    img = _apply_icc_profile(img)
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _INT_MODES:
        return Image.fromarray(_int_to_uint8(np.asarray(img)), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_uint8(np.asarray(img, dtype=np.float64)), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF must not make a decodable image unreadable
        return img
    return out if out is not None else img


def _apply_icc_profile(img: Image.Image) -> Image.Image:
    """Convert to sRGB when the file carries an ICC profile; leave the image as is if that fails."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "CMYK"):
        return img
    try:
        transform = _srgb_transform(icc, img.mode)
        return ImageCms.applyTransform(img, transform)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return img.convert("RGB")


@lru_cache(maxsize=32)
def _srgb_transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), mode, "RGB")


def _int_to_uint8(a: np.ndarray) -> np.ndarray:
    """Scale integer samples to 0..255: 16-bit range when they fit in it, else their own range."""
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 65535:
        return np.rint(a / 257.0).astype(np.uint8)
    return _minmax_to_uint8(a, lo, hi)


def _float_to_uint8(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        return np.rint(a * 255.0).astype(np.uint8)
    return _minmax_to_uint8(a, lo, hi)


def _minmax_to_uint8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
