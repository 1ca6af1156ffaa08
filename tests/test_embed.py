"""`fvtool embed`: HDF5 round trip against a direct forward, flip TTA formulas, resumable writes,
refusal of mismatched geometry/input size, alignment status carried from the manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fvtool.atomic import sha256_file
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import read_embeddings
from fvtool.data.manifest import ManifestRow, write_manifest
from fvtool.data.transforms import BatchTransform, Normalisation
from fvtool.embedding import embed_dataset
from fvtool.errors import InputError
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train


@pytest.fixture(scope="module")
def small_data(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 identities x 4 images, as a manifest-described folder with one `fallback` image."""
    root = tmp_path_factory.mktemp("data") / "aligned"
    rows = []
    for ident in sorted(p.name for p in embedded_data.iterdir() if p.is_dir())[:10]:
        (root / ident).mkdir(parents=True)
        for f in sorted((embedded_data / ident).iterdir())[:4]:
            shutil.copy(f, root / ident / f.name)
            rows.append(ManifestRow(identity=ident, src=f"{ident}/{f.name}", key=f"{ident}/{f.name}", status="ok"))
    rows[5].status = "fallback"
    rows.append(ManifestRow(identity=rows[0].identity, src="x/missing.jpg", status="no_face", reason="test"))
    write_manifest(root / "manifest.csv", rows)
    return root


@pytest.fixture(scope="module")
def run_dir(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = TrainConfig(data=str(small_data), input_size=16, embedding_size=8, epochs=1, batch_size=8, lr=0.05,
                      threads=1, crop=0.8)
    train(cfg, out, show_progress=False, cache_dir=out.parent / "cache")
    return out


def _direct(run_dir: Path, data: Path, flip: bool = False) -> np.ndarray:
    """Reference: decode each file with PIL the cache's way, normalise, forward one by one."""
    from fvtool.data.cache import CacheSpec, decode_to_array

    method, cfg, _, _ = load_trained_method(run_dir)
    model = method.embedder.eval()
    images = load_image_set(data)
    tf = BatchTransform(Normalisation.named(cfg.normalisation), channels_last=False)
    spec = CacheSpec(cfg.input_size, cfg.crop, cfg.resample)
    out = []
    with torch.no_grad():
        for i in range(len(images)):
            x = tf(torch.from_numpy(decode_to_array(images.path(i), spec)[0][None]))
            e = model(x)
            if flip:
                e = F.normalize(e + model(x.flip(-1)), dim=1)
            out.append(e[0].numpy())
    return np.stack(out)


def test_embed_round_trip_equals_a_direct_forward(run_dir: Path, small_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb.h5"
    res = embed_dataset(run_dir, small_data, out, batch_size=7, chunk=16, show_progress=False,
                        cache_dir=tmp_path / "c")
    es = read_embeddings(out)
    images = load_image_set(small_data)
    assert es.keys == images.keys and es.identities == images.identities and len(es.keys) == 40
    assert es.status.count("fallback") == 1 and es.status[5] == "fallback"
    np.testing.assert_allclose(es.embeddings, _direct(run_dir, small_data), rtol=1e-4, atol=1e-5)
    a = es.attrs
    ckpt = run_dir / "checkpoints" / "best.pt"
    assert a["checkpoint_sha256"] == sha256_file(ckpt) and a["backbone"] == "resnet_small"
    assert a["input_size"] == 16 and a["tta"] == "none" and a["normalisation"].startswith("pm1")
    assert a["source"] == "embed" and a["data_root"] == str(small_data.resolve()) and a["embedding_size"] == 8
    assert "manifest" in a["align_mode"] and "center0.8" in a["align_mode"]
    assert res.n == 40 and not out.with_name(out.name + ".partial").exists()
    with h5py.File(out) as f:
        assert f["embeddings"].chunks is not None and f["embeddings"].dtype == np.float32


def test_flip_tta_sum_and_concat(run_dir: Path, small_data: Path, tmp_path: Path) -> None:
    embed_dataset(run_dir, small_data, tmp_path / "s.h5", tta="flip-sum", show_progress=False,
                  cache_dir=tmp_path / "c")
    s = read_embeddings(tmp_path / "s.h5")
    np.testing.assert_allclose(s.embeddings, _direct(run_dir, small_data, flip=True), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(s.embeddings, axis=1), 1.0, rtol=1e-5)
    embed_dataset(run_dir, small_data, tmp_path / "c.h5", tta="flip-concat", show_progress=False,
                  cache_dir=tmp_path / "c")
    c = read_embeddings(tmp_path / "c.h5")
    assert c.dim == 16 and c.attrs["tta"] == "flip-concat"
    plain = _direct(run_dir, small_data)
    np.testing.assert_allclose(c.embeddings[:, :8], plain / np.linalg.norm(plain, axis=1, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="tta"):
        embed_dataset(run_dir, small_data, tmp_path / "x.h5", tta="five-crop", show_progress=False)


def test_interrupted_embed_resumes_to_the_same_file(run_dir: Path, small_data: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.h5"
    embed_dataset(run_dir, small_data, full, chunk=12, show_progress=False, cache_dir=tmp_path / "c")
    out = tmp_path / "cut.h5"
    part = embed_dataset(run_dir, small_data, out, chunk=12, show_progress=False, cache_dir=tmp_path / "c",
                         stop_after_chunks=2)
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and partial.exists() and part.n == 24
    with pytest.raises(InputError):
        read_embeddings(partial)  # a partial file is never mistaken for an embeddings file
    res = embed_dataset(run_dir, small_data, out, chunk=12, show_progress=False, cache_dir=tmp_path / "c")
    assert res.resumed_at == 24 and not partial.exists()
    a, b = read_embeddings(full), read_embeddings(out)
    assert np.array_equal(a.embeddings, b.embeddings) and a.keys == b.keys
    # a partial file of another job (other TTA) is not reused
    embed_dataset(run_dir, small_data, out, chunk=12, show_progress=False, cache_dir=tmp_path / "c",
                  stop_after_chunks=1)
    res = embed_dataset(run_dir, small_data, out, chunk=12, tta="flip-sum", show_progress=False,
                        cache_dir=tmp_path / "c")
    assert res.resumed_at == 0


def test_mismatched_geometry_and_input_size_are_refused(run_dir: Path, small_data: Path, tmp_path: Path) -> None:
    other = tmp_path / "crops112"
    for ident in sorted(p.name for p in small_data.iterdir() if p.is_dir())[:3]:
        (other / ident).mkdir(parents=True)
        for f in sorted((small_data / ident).iterdir())[:2]:
            Image.open(f).resize((112, 112)).save(other / ident / f.name)
    with pytest.raises(InputError, match=r"250x250 source images.*112x112.*--allow-resize"):
        embed_dataset(run_dir, other, tmp_path / "o.h5", show_progress=False, cache_dir=tmp_path / "c")
    res = embed_dataset(run_dir, other, tmp_path / "o.h5", allow_resize=True, show_progress=False,
                        cache_dir=tmp_path / "c")
    assert res.n == 6
    with pytest.raises(InputError, match="trained at 16x16"):
        embed_dataset(run_dir, small_data, tmp_path / "p.h5", input_size=112, show_progress=False)


def test_cli_embed_uses_workspace_defaults(run_dir: Path, small_data: Path, tmp_path: Path) -> None:
    from fvtool.cli import main
    from fvtool.workspace import Workspace

    ws = Workspace.current()
    ws.record("train", run_dir)
    with pytest.raises(SystemExit) as e:
        main(["embed", "-q", "--tta", "flip-sum"])
    assert e.value.code in (0, None)
    out = ws.dir("embed") / f"{run_dir.name}.h5"
    assert ws.latest("embed") == out.resolve() and read_embeddings(out).attrs["tta"] == "flip-sum"
    with pytest.raises(SystemExit) as e:
        main(["embed", str(tmp_path / "nothing-here"), "-q"])
    assert e.value.code == 3
