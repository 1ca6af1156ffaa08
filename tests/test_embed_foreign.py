"""`fvtool embed --model`: a fvtool run exported to ONNX, TorchScript and a plain state dict must embed
like the run itself (max |diff| <= 1e-4 after L2 normalisation); TorchScript needs --trust-model; a
wrong input size or channel count is refused with a message (exit 3); preprocessing lands in the attrs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fvtool.cli import main
from fvtool.data.embeddings import read_embeddings
from fvtool.embedding import embed_dataset, embed_with_model
from fvtool.errors import InputError
from fvtool.interop.foreign_model import Preprocess
from fvtool.interop.onnx_export import export_onnx
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16


@pytest.fixture(scope="module")
def setup(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny iresnet18 run (6 identities x 3 images at 16 px) and its native embeddings."""
    root = tmp_path_factory.mktemp("foreign")
    data = root / "data"
    for ident in sorted(p.name for p in embedded_data.iterdir() if p.is_dir())[:6]:
        (data / ident).mkdir(parents=True)
        for f in sorted((embedded_data / ident).iterdir())[:3]:
            shutil.copy(f, data / ident / f.name)
    run = root / "run"
    cfg = TrainConfig(data=str(data), backbone="iresnet18", input_size=SIZE, embedding_size=8, epochs=1,
                      batch_size=9, lr=0.01, threads=1, crop=1.0)
    train(cfg, run, show_progress=False, cache_dir=root / "cache")
    native = root / "native.h5"
    embed_dataset(run, data, native, show_progress=False, cache_dir=root / "cache")
    method, _cfg, _, _ = load_trained_method(run)
    embedder = method.embedder.eval()
    onnx_path = root / "model.onnx"
    export_onnx(run, onnx_path)
    ts_path = root / "model.ts"
    torch.jit.trace(embedder, torch.zeros(2, 3, SIZE, SIZE)).save(str(ts_path))
    weights = root / "backbone.pth"
    torch.save(embedder.state_dict(), weights)
    return {"root": root, "data": data, "run": run, "native": read_embeddings(native), "onnx": onnx_path,
            "ts": ts_path, "weights": weights, "embedder": embedder}


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


PRE = Preprocess(input_size=SIZE)  # fvtool's pm1 normalisation = (x - 127.5) / 127.5, RGB


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "backbone"])
def test_foreign_model_reproduces_native_embeddings(setup: dict, kind: str, tmp_path: Path) -> None:
    spec = {"onnx": str(setup["onnx"]), "torchscript": str(setup["ts"]),
            "backbone": f"iresnet18:weights={setup['weights']},embedding_size=8"}[kind]
    out = tmp_path / f"{kind}.h5"
    embed_with_model(spec, setup["data"], out, preprocess=PRE, trust_model=True, allow_resize=True, batch_size=5,
                     show_progress=False, cache_dir=setup["root"] / "cache")
    got, ref = read_embeddings(out), setup["native"]
    assert got.keys == ref.keys and got.identities == ref.identities
    diff = np.abs(_unit(got.embeddings) - _unit(ref.embeddings)).max()
    assert diff <= 1e-4, f"{kind}: max |diff| {diff}"
    a = got.attrs
    assert a["model_format"] == kind and a["input_size"] == SIZE and a["channel_order"] == "rgb"
    assert list(a["mean"]) == [127.5] * 3 and list(a["std"]) == [127.5] * 3 and a["tta"] == "none"
    assert "127.5" in a["preprocessing"] and a["checkpoint_sha256"]


def test_bgr_model_and_flip_tta(setup: dict, tmp_path: Path) -> None:
    """A model that takes BGR (here: one that swaps back first) with --channels bgr equals the RGB model;
    flip-sum TTA on the foreign path equals the native flip-sum."""
    class Bgr(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.flip(1))

    bgr = tmp_path / "bgr.ts"
    torch.jit.trace(Bgr(setup["embedder"]), torch.zeros(2, 3, SIZE, SIZE)).save(str(bgr))
    kw = dict(allow_resize=True, show_progress=False, cache_dir=setup["root"] / "cache")
    embed_with_model(str(bgr), setup["data"], tmp_path / "bgr.h5", trust_model=True,
                     preprocess=Preprocess(input_size=SIZE, channels="bgr"), **kw)
    np.testing.assert_allclose(_unit(read_embeddings(tmp_path / "bgr.h5").embeddings),
                               _unit(setup["native"].embeddings), atol=1e-4)
    embed_with_model(str(setup["onnx"]), setup["data"], tmp_path / "flip.h5", preprocess=PRE, tta="flip-sum", **kw)
    embed_dataset(setup["run"], setup["data"], tmp_path / "nflip.h5", tta="flip-sum", show_progress=False,
                  cache_dir=setup["root"] / "cache")
    np.testing.assert_allclose(read_embeddings(tmp_path / "flip.h5").embeddings,
                               read_embeddings(tmp_path / "nflip.h5").embeddings, atol=1e-4)


def test_torchscript_needs_trust(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"runs code stored in the file.*--trust-model"):
        embed_with_model(str(setup["ts"]), setup["data"], tmp_path / "x.h5", preprocess=PRE, allow_resize=True,
                         show_progress=False)
    assert not (tmp_path / "x.h5").exists()


def test_wrong_input_size_and_channels_are_refused(setup: dict, tmp_path: Path) -> None:
    kw = dict(allow_resize=True, show_progress=False)
    with pytest.raises(InputError, match=r"takes 16x16 input.*not --input-size 32"):
        embed_with_model(str(setup["onnx"]), setup["data"], tmp_path / "a.h5", preprocess=Preprocess(32), **kw)
    with pytest.raises(InputError, match=r"does not take a \[B, 3, 32, 32\] batch"):
        embed_with_model(str(setup["ts"]), setup["data"], tmp_path / "b.h5", preprocess=Preprocess(32),
                         trust_model=True, **kw)
    grey = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    onnx1 = tmp_path / "grey.onnx"
    torch.onnx.export(grey, (torch.zeros(1, 1, SIZE, SIZE),), str(onnx1), dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b"}})
    with pytest.raises(InputError, match="takes 1-channel input"):
        embed_with_model(str(onnx1), setup["data"], tmp_path / "c.h5", preprocess=PRE, **kw)
    with pytest.raises(InputError, match=r"neither an \.onnx file nor a TorchScript"):
        embed_with_model(str(setup["weights"]), setup["data"], tmp_path / "d.h5", preprocess=PRE, **kw)
    with pytest.raises(InputError, match="does not fit this network"):
        embed_with_model(f"iresnet34:weights={setup['weights']},embedding_size=8", setup["data"],
                         tmp_path / "e.h5", preprocess=PRE, **kw)
    with pytest.raises(InputError, match="takes 16x16 inputs"):  # 250x250 sources without --allow-resize
        embed_with_model(str(setup["onnx"]), setup["data"], tmp_path / "f.h5", preprocess=PRE, show_progress=False)
    assert not list(tmp_path.glob("*.h5"))


def test_cli_model_option(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "cli.h5"
    with pytest.raises(SystemExit) as e:
        main(["embed", "--model", str(setup["onnx"]), "--data", str(setup["data"]), "--allow-resize", "-q",
              "--input-size", "32", "-o", str(out)])
    assert e.value.code == 3 and not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["embed", "--model", str(setup["ts"]), "--data", str(setup["data"]), "--allow-resize", "-q",
              "-o", str(out)])
    assert e.value.code == 3 and not out.exists()
    with pytest.raises(SystemExit) as e:  # input size from the ONNX graph; scale = 1/std
        main(["embed", "--model", str(setup["onnx"]), "--data", str(setup["data"]), "--allow-resize", "-q",
              "--scale", str(1 / 127.5), "-o", str(out)])
    assert e.value.code == 0
    np.testing.assert_allclose(_unit(read_embeddings(out).embeddings), _unit(setup["native"].embeddings), atol=1e-4)


@pytest.mark.parametrize("name", ["timm:resnet10t", "resnet_small"])
def test_backbone_spec_with_colon_and_without_own_weights_option(name: str, tmp_path: Path) -> None:
    """`timm:<model>:weights=F` names the timm backbone (the name holds a colon), and a backbone whose
    factory takes no `weights` option (timm, resnet_small) loads F as a plain state dict of the module
    as fvtool builds it: the foreign model then embeds exactly like that module."""
    from fvtool.interop.foreign_model import _parse_backbone, load_foreign_model
    from fvtool.models.registry import build_backbone

    if name.startswith("timm:"):
        pytest.importorskip("timm")
    assert _parse_backbone(f"{name}:weights=w.pth,embedding_size=8") == (
        name, {"weights": "w.pth", "embedding_size": 8})
    assert _parse_backbone("timm:") is None and _parse_backbone("model.onnx") is None
    torch.manual_seed(0)
    net = build_backbone(name, embedding_size=8, input_size=32).eval()
    weights = tmp_path / "w.pth"
    torch.save(net.state_dict(), weights)
    pre = Preprocess(input_size=32)
    fm = load_foreign_model(f"{name}:weights={weights},embedding_size=8", pre, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fm.module(x), net(x), atol=1e-5)
    torch.save({"nope": torch.zeros(1)}, weights)
    with pytest.raises(InputError, match="does not fit"):
        load_foreign_model(f"{name}:weights={weights},embedding_size=8", pre, torch.device("cpu"))
