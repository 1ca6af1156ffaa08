"""Image cache, batched augmentations and samplers: references, determinism, resumable state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from fvtool.data.cache import CacheSpec, build_cache, cache_paths, decode_to_array
from fvtool.data.dataset import load_image_set
from fvtool.data.samplers import PairBatchSampler, PKSampler, RandomBatchSampler
from fvtool.data.transforms import (
    AugmentConfig,
    BatchTransform,
    Normalisation,
    affine_params,
    apply_affine,
    augment_batch,
    pad_crop,
    random_affine,
    random_blur,
    random_colour,
    random_flip,
    to_float01,
)
from fvtool.errors import InputError


@pytest.fixture
def small_set(embedded_data: Path, tmp_path: Path) -> Path:
    """6 identities x 3 images copied from the embedded data (so tests may damage them)."""
    root = tmp_path / "small"
    for ident in sorted(p.name for p in embedded_data.iterdir() if p.is_dir())[:6]:
        (root / ident).mkdir(parents=True)
        for f in sorted((embedded_data / ident).iterdir())[:3]:
            shutil.copy(f, root / ident / f.name)
    return root


# ---- cache ------------------------------------------------------------------------------------

def test_cache_rows_equal_direct_decode_and_reference_geometry(small_set: Path, tmp_path: Path) -> None:
    images = load_image_set(small_set)
    spec = CacheSpec(size=40, crop=0.6)
    cache = build_cache(images, spec, cache_dir=tmp_path / "c", show_progress=False)
    assert cache.array.shape == (18, 40, 40, 3) and cache.array.dtype == np.uint8
    for i in (0, 7, 17):
        np.testing.assert_array_equal(cache.array[i], decode_to_array(images.path(i), spec)[0])
    # reference: PIL decode, crop the central 60 %, resize
    with Image.open(images.path(3)) as im:
        w, h = im.size
        ref = np.asarray(im.convert("RGB").resize((40, 40), Image.Resampling.BILINEAR,
                                                  box=(w * 0.2, h * 0.2, w * 0.8, h * 0.8)))
    np.testing.assert_array_equal(cache.array[3], ref)
    assert cache.source_sizes == {"250x250": 18}
    assert cache.keys == images.keys


def test_cache_is_reused_and_rebuilt_when_incomplete_or_data_changes(small_set: Path, tmp_path: Path) -> None:
    images = load_image_set(small_set)
    spec = CacheSpec(size=24)
    c1 = build_cache(images, spec, cache_dir=tmp_path / "c", show_progress=False)
    npy, side = cache_paths(tmp_path / "c", c1.fingerprint, spec)
    assert npy.is_file() and side.is_file() and json.loads(side.read_text())["keys"] == images.keys
    mtime = npy.stat().st_mtime_ns
    c2 = build_cache(images, spec, cache_dir=tmp_path / "c", show_progress=False)
    assert npy.stat().st_mtime_ns == mtime and c2.fingerprint == c1.fingerprint  # reused, not rebuilt
    side.unlink()  # a cache without its sidecar is incomplete
    build_cache(images, spec, cache_dir=tmp_path / "c", show_progress=False)
    assert side.is_file()
    # another size or crop is another file; changed pixels are another fingerprint
    c3 = build_cache(images, CacheSpec(size=24, crop=0.5), cache_dir=tmp_path / "c", show_progress=False)
    assert c3.path != c1.path
    img = Image.open(images.path(0)).convert("RGB")
    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images.path(0))
    c4 = build_cache(load_image_set(small_set), spec, cache_dir=tmp_path / "c", show_progress=False)
    assert c4.fingerprint != c1.fingerprint
    assert not list((tmp_path / "c").glob(".fvtool-tmp-*"))


def test_fingerprint_is_remembered_by_stat_signature(small_set: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import fvtool.data.cache as cache_mod

    images = load_image_set(small_set)
    fp = cache_mod.cached_fingerprint(images, tmp_path / "c")
    assert fp == cache_mod.dataset_fingerprint(images)

    def no_read(_images: object) -> str:
        raise AssertionError("unchanged files must not be read again")

    monkeypatch.setattr(cache_mod, "dataset_fingerprint", no_read)
    assert cache_mod.cached_fingerprint(images, tmp_path / "c") == fp
    monkeypatch.undo()
    with open(images.path(2), "ab") as f:  # same name, new bytes: a new signature, the content decides
        f.write(b"\0")
    assert cache_mod.cached_fingerprint(load_image_set(small_set), tmp_path / "c") != fp


def test_cache_names_an_undecodable_file(small_set: Path, tmp_path: Path) -> None:
    bad = small_set / sorted(p.name for p in small_set.iterdir())[0] / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(InputError, match=r"broken\.jpg"):
        build_cache(load_image_set(small_set), CacheSpec(size=24), cache_dir=tmp_path / "c", show_progress=False)
    assert not list((tmp_path / "c").glob("*.npy"))  # nothing half-written left behind


def test_cache_spec_validation() -> None:
    with pytest.raises(InputError, match="crop"):
        CacheSpec(size=64, crop=1.5)
    with pytest.raises(InputError, match="resample"):
        CacheSpec(size=64, resample="nearest-ish")


# ---- transforms --------------------------------------------------------------------------------

def _batch(seed: int = 0, b: int = 6, s: int = 20) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, s, s, 3), generator=g, dtype=torch.uint8)


def test_normalisations_match_their_formulas() -> None:
    u8 = _batch()
    x01 = u8.permute(0, 3, 1, 2).double() / 255
    pm1 = BatchTransform(Normalisation.named("pm1"), channels_last=False)(u8)
    torch.testing.assert_close(pm1.double(), (u8.permute(0, 3, 1, 2).double() - 127.5) / 127.5, rtol=0, atol=1e-6)
    unit = BatchTransform(Normalisation.named("unit"))(u8)
    torch.testing.assert_close(unit.double(), x01, rtol=0, atol=1e-6)
    assert unit.is_contiguous(memory_format=torch.channels_last)
    imnet = Normalisation.named("imagenet")
    torch.testing.assert_close(BatchTransform(imnet)(u8), TF.normalize(x01.float(), list(imnet.mean), list(imnet.std)))
    with pytest.raises(InputError, match="normalisation"):
        Normalisation.named("zscore")


def test_each_augmentation_against_a_reference() -> None:
    x = to_float01(_batch(1))
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_flip(x, 1.0, g), x.flip(-1))
    assert torch.equal(random_flip(x, 0.0, g), x)
    assert torch.equal(pad_crop(x, 0, g), x)
    # pad + crop: every output is a shifted window of the zero-padded input
    out = pad_crop(x, 3, torch.Generator().manual_seed(5))
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    for i in range(len(x)):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + 20, dx:dx + 20]) for dy in range(7) for dx in range(7))
    # blur with a fixed sigma equals torchvision's gaussian_blur (reflect padding, same kernel size)
    sigma = 0.9
    radius = max(1, int(np.ceil(2.5 * sigma)))
    ours = random_blur(x, 1.0, (sigma, sigma), g)
    ref = TF.gaussian_blur(x, [2 * radius + 1] * 2, [sigma, sigma])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    assert torch.equal(random_blur(x, 0.0, (sigma, sigma), g), x)
    # brightness/contrast: ((x - grey) * c + grey) * b, clamped
    gen = torch.Generator().manual_seed(3)
    out = random_colour(x, 0.3, 0.4, gen)
    gen = torch.Generator().manual_seed(3)
    b = torch.rand(len(x), generator=gen) * 0.6 + 0.7
    c = torch.rand(len(x), generator=gen) * 0.8 + 0.6
    grey = x.mean(dim=(1, 2, 3), keepdim=True)
    ref = (((x - grey) * c.view(-1, 1, 1, 1) + grey) * b.view(-1, 1, 1, 1)).clamp(0, 1)
    torch.testing.assert_close(out, ref)


def test_affine_matches_torchvision_affine() -> None:
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(9))
    cfg = AugmentConfig(flip=0, rotate=30, shift=0.15, scale=(0.8, 1.25))
    ang, zoom, tx, ty = affine_params(4, cfg, torch.Generator().manual_seed(5))
    assert float(ang.abs().max()) <= 30 and 0.8 <= float(zoom.min()) <= float(zoom.max()) <= 1.25
    assert float(tx.abs().max()) <= 0.3 and float(ty.abs().max()) <= 0.3
    out = apply_affine(x, ang, zoom, tx, ty)
    torch.testing.assert_close(out, random_affine(x, cfg, torch.Generator().manual_seed(5)))
    for i in range(4):
        # torchvision's affine angles are clockwise. Ours samples the input at M p + t (M = rotation / zoom);
        # torchvision's output translation tau
        # gives M (p - tau), so tau = -M^-1 t = -zoom R(-angle) t, in pixels (grid unit = 12 px)
        c, s = np.cos(np.radians(float(ang[i]))), np.sin(np.radians(float(ang[i])))
        t = np.array([float(tx[i]), float(ty[i])]) * 12
        tau = -float(zoom[i]) * np.array([c * t[0] + s * t[1], -s * t[0] + c * t[1]])
        ref = TF.affine(x[i], angle=-float(ang[i]), translate=tau.tolist(), scale=float(zoom[i]), shear=[0.0, 0.0],
                        interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(out[i][:, 6:-6, 6:-6], ref[:, 6:-6, 6:-6], rtol=0, atol=1e-4)
    # zero ranges: the identity (bilinear sampling exactly at pixel centres)
    torch.testing.assert_close(random_affine(x, AugmentConfig(flip=0), torch.Generator()), x, rtol=0, atol=1e-5)


def test_augmentation_is_a_function_of_the_generator_seed() -> None:
    cfg = AugmentConfig.parse("flip,shift=0.1,scale=0.9:1.1,rotate=10,pad=2,blur=0.5,brightness=0.2,contrast=0.2")
    x = to_float01(_batch(4))
    a = augment_batch(x, cfg, torch.Generator().manual_seed(11))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(11))
    c = augment_batch(x, cfg, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    with pytest.raises(ValueError, match="Generator"):
        BatchTransform(augment=cfg)(_batch())


def test_augment_spec_parsing_and_errors() -> None:
    assert AugmentConfig.parse("none") == AugmentConfig(flip=0.0)
    c = AugmentConfig.parse("flip,rotate=5,scale=0.8:1.2")
    assert (c.flip, c.rotate, c.scale, c.shift) == (0.5, 5.0, (0.8, 1.2), 0.0)
    assert AugmentConfig.from_dict(c.to_dict()) == c
    with pytest.raises(InputError, match="unknown augmentation 'twirl'"):
        AugmentConfig.parse("flip,twirl")
    with pytest.raises(InputError, match="rotate"):
        AugmentConfig.parse("rotate=400")


# ---- samplers ----------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(12), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 40])


def test_random_sampler_covers_every_image_once_and_is_seeded() -> None:
    s = RandomBatchSampler(LABELS, 16, seed=3)
    plan = s.plan(0)
    rows = np.concatenate([b.indices for b in plan])
    assert len(plan) == len(LABELS) // 16 and len(np.unique(rows)) == len(rows)
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(plan, RandomBatchSampler(LABELS, 16, 3).plan(0),
                                                                    strict=True))
    assert not np.array_equal(plan[0].indices, s.plan(1)[0].indices)
    assert not np.array_equal(plan[0].indices, RandomBatchSampler(LABELS, 16, 4).plan(0)[0].indices)


def test_cap_limits_images_per_identity_per_epoch() -> None:
    s = RandomBatchSampler(LABELS, 4, seed=0, cap=5, drop_last=False)
    for epoch in (0, 1):
        rows = np.concatenate([b.indices for b in s.plan(epoch)])
        counts = np.bincount(LABELS[rows])
        assert counts.max() == 5 and counts[0] == 2
    big = np.flatnonzero(LABELS == 11)
    seen = {int(r) for e in range(6) for b in s.plan(e) for r in b.indices if LABELS[r] == 11}
    assert len(seen) > 5 and seen <= set(big.tolist())  # fresh subsets: more than 5 distinct over epochs


def test_pk_batches_have_p_distinct_identities_with_k_images() -> None:
    s = PKSampler(LABELS, p=4, k=3, seed=1)
    plan = s.plan(0)
    assert plan
    for b in plan:
        labs = LABELS[b.indices]
        ids, counts = np.unique(labs, return_counts=True)
        assert len(b.indices) == 12 and len(ids) == 4 and (counts == 3).all()
    # identities with fewer than K images are filled from themselves (with replacement); no foreign images
    with pytest.raises(InputError, match="P x K"):
        PKSampler(LABELS, p=1, k=3, seed=0)


def test_pair_sampler_labels_are_true() -> None:
    s = PairBatchSampler(LABELS, pairs_per_batch=10, seed=2, positive_fraction=0.5)
    plan = s.plan(0)
    for b in plan:
        left, right = b.indices[:10], b.indices[10:]
        assert b.same.sum() == 5
        np.testing.assert_array_equal(LABELS[left] == LABELS[right], b.same)
        assert not np.any((left == right) & b.same)


def test_sampler_state_round_trip_resumes_mid_epoch() -> None:
    s = PKSampler(LABELS, p=3, k=2, seed=7)
    it = s.iter_epoch(2)
    first = [next(it) for _ in range(3)]
    state = s.state_dict()
    rest = list(it)
    t = PKSampler(LABELS, p=3, k=2, seed=7)
    t.load_state_dict(json.loads(json.dumps(state)))
    resumed = list(t.iter_epoch(2))
    assert len(first) + len(rest) == len(s.plan(2))
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(rest, resumed, strict=True))
    with pytest.raises(InputError, match="same config"):
        PKSampler(LABELS, p=3, k=2, seed=8).load_state_dict(state)
