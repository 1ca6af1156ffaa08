"""fvtool.data.images: every odd input type is decoded into the right 8-bit RGB pixels, and bad
files fail with a typed error that names the file and the reason.

Inputs are generated with PIL from a real LFW face, so each check compares against the pixels
the file was made from (exact for lossless formats, a small tolerance for lossy ones)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from fvtool.data.images import NEUTRAL_BACKGROUND, ImageReadError, decode_rgb, load_rgb
from fvtool.errors import InputError


@pytest.fixture(scope="module")
def face(embedded_data: Path) -> Image.Image:
    """A real 250x250 RGB LFW face."""
    img = Image.open(embedded_data / "Abdullah_Gul" / "Abdullah_Gul_0001.jpg")
    img.load()
    assert img.mode == "RGB"
    return img


def _rgb(a: Image.Image) -> np.ndarray:
    assert a.mode == "RGB"
    return np.asarray(a, dtype=np.int16)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize(
    ("ext", "save_kw"),
    [("png", {}), ("bmp", {}), ("tif", {}), ("webp", {"lossless": True}), ("ppm", {})],
)
def test_lossless_rgb_formats_roundtrip_exactly(face: Image.Image, tmp_path: Path, ext: str, save_kw: dict) -> None:
    p = tmp_path / f"face.{ext}"
    face.save(p, **save_kw)
    out = load_rgb(p)
    assert out.size == face.size
    assert np.array_equal(_rgb(out), _rgb(face))


def test_jpeg_and_lossy_webp_are_close(face: Image.Image, tmp_path: Path) -> None:
    for ext, kw in (("jpg", {"quality": 95}), ("webp", {"quality": 90})):
        p = tmp_path / f"face.{ext}"
        face.save(p, **kw)
        assert _mad(_rgb(load_rgb(p)), _rgb(face)) < 3.0, ext


def test_grayscale_pgm_and_png_become_equal_channels(face: Image.Image, tmp_path: Path) -> None:
    grey = face.convert("L")
    for ext in ("pgm", "png"):
        p = tmp_path / f"grey.{ext}"
        grey.save(p)
        out = _rgb(load_rgb(p))
        for c in range(3):
            assert np.array_equal(out[..., c], np.asarray(grey)), ext


def test_16bit_is_scaled_not_clipped(face: Image.Image, tmp_path: Path) -> None:
    grey8 = np.asarray(face.convert("L"), dtype=np.uint16)
    grey16 = grey8 * 257  # the exact 16-bit encoding of each 8-bit level
    for ext in ("png", "tif"):
        p = tmp_path / f"g16.{ext}"
        Image.fromarray(grey16).save(p)
        reopened = Image.open(p)
        assert reopened.mode.startswith("I"), reopened.mode  # really a 16-bit file
        out = _rgb(load_rgb(p))
        assert np.array_equal(out[..., 0], grey8), ext
        # Pillow's own conversion clips: everything above level 0 would be white
        assert np.asarray(reopened.convert("L")).min() >= 255 or grey8.min() == 0


def test_32bit_int_and_float_tiff(face: Image.Image, tmp_path: Path) -> None:
    grey8 = np.asarray(face.convert("L"))
    p = tmp_path / "i32.tif"
    Image.fromarray(grey8.astype(np.int32) * 257, mode="I").save(p)
    assert np.array_equal(_rgb(load_rgb(p))[..., 1], grey8)
    p = tmp_path / "f32.tif"
    Image.fromarray(grey8.astype(np.float32) / 255.0, mode="F").save(p)
    assert np.array_equal(_rgb(load_rgb(p))[..., 2], grey8)


def test_rgba_and_la_composite_on_neutral_grey(face: Image.Image, tmp_path: Path) -> None:
    rgba = face.convert("RGBA")
    alpha = np.full(face.size[::-1], 255, dtype=np.uint8)
    alpha[:, :100] = 0  # left part fully transparent
    alpha[:, 100:150] = 128  # a half-transparent band
    rgba.putalpha(Image.fromarray(alpha))
    p = tmp_path / "rgba.png"
    rgba.save(p)
    out = _rgb(load_rgb(p))
    src = _rgb(face)
    assert (out[:, :100] == np.array(NEUTRAL_BACKGROUND)).all()
    assert np.array_equal(out[:, 150:], src[:, 150:])
    expected_band = (src[:, 100:150] * 128 + np.array(NEUTRAL_BACKGROUND) * 127) / 255.0
    assert np.abs(out[:, 100:150] - expected_band).max() <= 1.0

    la = face.convert("LA")
    la.putalpha(Image.fromarray(alpha))
    p = tmp_path / "la.png"
    la.save(p)
    out = _rgb(load_rgb(p))
    assert (out[:, :100] == NEUTRAL_BACKGROUND[0]).all()
    assert np.array_equal(out[:, 150:, 0], np.asarray(face.convert("L"))[:, 150:])


def test_palette_with_transparency_gif(face: Image.Image, tmp_path: Path) -> None:
    pal = face.quantize(colors=255)
    arr = np.asarray(pal).copy()
    arr[:40, :] = 255  # index 255 = transparent
    pimg = Image.fromarray(arr, mode="P")
    pimg.putpalette(pal.getpalette())
    p = tmp_path / "pal.gif"
    pimg.save(p, transparency=255)
    out = _rgb(load_rgb(p))
    assert (out[:40] == np.array(NEUTRAL_BACKGROUND)).all()
    assert _mad(out[40:], _rgb(face)[40:]) < 6.0  # 255-colour quantisation error only


def test_palette_without_transparency_and_multiframe_gif(face: Image.Image, tmp_path: Path) -> None:
    first = face.quantize(colors=256)
    second = face.transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(colors=256)
    p = tmp_path / "anim.gif"
    first.save(p, save_all=True, append_images=[second])
    assert Image.open(p).n_frames == 2
    out = _rgb(load_rgb(p))
    assert np.array_equal(out, _rgb(first.convert("RGB")))


def test_cmyk_jpeg(face: Image.Image, tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    face.convert("CMYK").save(p, quality=95)
    assert Image.open(p).mode == "CMYK"
    assert _mad(_rgb(load_rgb(p)), _rgb(face)) < 4.0


def test_exif_orientation_is_applied(face: Image.Image, tmp_path: Path) -> None:
    """Stored rotated 90 degrees counter-clockwise with orientation 6 ("rotate 90 CW to view")."""
    stored = face.crop((0, 0, 250, 200)).transpose(Image.Transpose.ROTATE_90)  # 200x250 on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rotated.jpg"
    stored.save(p, quality=95, exif=exif)
    out = load_rgb(p)
    assert out.size == (250, 200)
    assert _mad(_rgb(out), _rgb(face.crop((0, 0, 250, 200)))) < 3.0


def test_bilevel_image(tmp_path: Path) -> None:
    a = np.zeros((20, 30), dtype=bool)
    a[5:10, 5:25] = True
    p = tmp_path / "b.png"
    Image.fromarray(a).convert("1").save(p)
    out = _rgb(load_rgb(p))
    assert (out[5:10, 5:25] == 255).all() and (out[:5] == 0).all()


# ---- bad files ------------------------------------------------------------------------------

def _expect_error(path: Path, reason_part: str) -> ImageReadError:
    with pytest.raises(ImageReadError) as ei:
        load_rgb(path)
    err = ei.value
    assert isinstance(err, InputError)  # the CLI maps it to exit code 3 when it escapes
    assert reason_part in err.reason, err.reason
    assert str(path) in str(err)
    return err


def test_zero_byte_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    _expect_error(p, "0 bytes")


@pytest.mark.parametrize("cut", ["half", "eoi"])
def test_truncated_jpeg_is_detected(face: Image.Image, tmp_path: Path, cut: str) -> None:
    full = tmp_path / "full.jpg"
    face.save(full, quality=95)
    data = full.read_bytes()
    p = tmp_path / "trunc.jpg"
    p.write_bytes(data[: len(data) // 2] if cut == "half" else data[:-2])  # "eoi": only the end marker missing
    _expect_error(p, "truncated")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on globally


def test_truncated_png_and_header_only(face: Image.Image, tmp_path: Path) -> None:
    full = tmp_path / "full.png"
    face.save(full)
    data = full.read_bytes()
    p = tmp_path / "trunc.png"
    p.write_bytes(data[: len(data) * 2 // 3])
    _expect_error(p, "truncated")
    p = tmp_path / "header.png"
    p.write_bytes(data[:40])
    with pytest.raises(ImageReadError):
        load_rgb(p)


def test_corrupt_jpeg_body(face: Image.Image, tmp_path: Path) -> None:
    full = tmp_path / "full.jpg"
    face.save(full, quality=95)
    data = bytearray(full.read_bytes())
    data[2:200] = bytes(198)  # destroy the quantisation / huffman tables
    p = tmp_path / "corrupt.jpg"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageReadError):
        load_rgb(p)


def test_non_image_missing_and_directory(tmp_path: Path) -> None:
    p = tmp_path / "notes.jpg"
    p.write_text("this is not an image\n")
    _expect_error(p, "not an image")
    _expect_error(tmp_path / "missing.png", "not found")
    d = tmp_path / "folder.png"
    d.mkdir()
    _expect_error(d, "directory")
    with pytest.raises(ImageReadError, match=r"random\.bin"):
        decode_rgb(np.random.default_rng(0).bytes(5000), "random.bin")
