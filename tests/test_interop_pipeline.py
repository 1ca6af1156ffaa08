"""Interop against real fvtool outputs: a tiny trained run, its embeddings and verify results.

Checks the issue's round trips: HDF5 -> npy+keys -> import -> identical verify metrics; verify
scores -> bob file -> same EER; ONNX outputs equal PyTorch's; a .bin written from a protocol and
evaluated with insightface's rule gives the distances of the ordinary embed path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fvtool.data.cache import CacheSpec, build_cache
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import read_embeddings
from fvtool.data.transforms import Normalisation
from fvtool.embedding import embed_dataset
from fvtool.inference import embed_rows
from fvtool.interop.bin_eval import evaluate_bin, protocol_to_bin
from fvtool.interop.bob_scores import read_scores, rows_from_verify_scores, write_scores
from fvtool.interop.import_embeddings import import_embeddings
from fvtool.interop.insightface_bin import read_bin
from fvtool.protocols.generate import generate_kfold
from fvtool.protocols.model import write_protocol
from fvtool.protocols.splits import split_identities, write_split
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train
from fvtool.verification.metrics import eer
from fvtool.verification.stage import VerifyOptions, verify


@pytest.fixture(scope="module")
def world(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 1-epoch run on 24 identities, a 4-fold protocol on 12 others, embeddings and a verify output."""
    tmp = tmp_path_factory.mktemp("interop")
    images = load_image_set(embedded_data)
    split = split_identities(images.keys, images.identities, counts=(24, 0, 12), seed=1, name="interop")
    write_split(tmp / "split.json", split)
    cfg = TrainConfig(data=str(embedded_data), split=str(tmp / "split.json"), loss="softmax", input_size=16,
                      embedding_size=16, epochs=1, batch_size=32, lr=0.05, val_protocol="none", threads=1, seed=0)
    train(cfg, tmp / "run", show_progress=False, cache_dir=tmp / "cache")
    test_ids = set(split.part("test"))
    sel = [i for i, ident in enumerate(images.identities) if ident in test_ids]
    proto, _ = generate_kfold([images.keys[i] for i in sel], [images.identities[i] for i in sel], folds=4,
                              n_same=20, seed=0, name="interop-k4")
    write_protocol(tmp / "proto.json", proto)
    embed_dataset(tmp / "run", embedded_data, tmp / "emb.h5", show_progress=False, cache_dir=tmp / "cache")
    res = verify(tmp / "emb.h5", str(tmp / "proto.json"), VerifyOptions(out=tmp / "verify", show_progress=False))
    return {"tmp": tmp, "run": tmp / "run", "emb": tmp / "emb.h5", "proto": tmp / "proto.json",
            "verify": res.folder, "data": embedded_data}


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_import_round_trip_gives_identical_metrics(world: dict[str, Path]) -> None:
    es = read_embeddings(world["emb"])
    tmp = world["tmp"]
    np.save(tmp / "foreign.npy", es.embeddings)
    (tmp / "foreign.keys").write_text("\n".join(es.keys) + "\n")
    from fvtool.data.embeddings import write_embeddings

    write_embeddings(tmp / "imported.h5", import_embeddings(tmp / "foreign.npy", keys_file=tmp / "foreign.keys"))
    again = verify(tmp / "imported.h5", str(world["proto"]), VerifyOptions(out=tmp / "verify-imp", show_progress=False))
    a, b = _metrics(world["verify"]), again.metrics
    assert b["embeddings"]["attrs"]["source"] == "import:npy"
    for key in ("eer", "eer_rocch", "auc", "kfold", "operating_points", "counts"):
        assert a[key] == b[key], key


def test_bob_export_reproduces_eer(world: dict[str, Path]) -> None:
    rows = rows_from_verify_scores(world["verify"] / "scores.npz")
    write_scores(world["tmp"] / "bob5.txt", rows, columns=5)
    back = read_scores(world["tmp"] / "bob5.txt")
    imp, gen = back.split()
    m = _metrics(world["verify"])
    assert (len(gen), len(imp)) == (m["counts"]["genuine"], m["counts"]["impostor"])
    assert eer(imp, gen).value == pytest.approx(m["eer"]["value"], abs=1e-12)


def test_onnx_export_matches_pytorch(world: dict[str, Path]) -> None:
    pytest.importorskip("onnx")
    from fvtool.interop.onnx_export import export_onnx

    res = export_onnx(world["run"], world["tmp"] / "model.onnx")
    assert res.path.is_file() and res.embedding_size == 16 and res.input_size == 16
    if res.checker == "onnxruntime":
        assert res.max_abs_diff is not None and res.max_abs_diff < 1e-4
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert meta["input_size"] == "16" and len(meta["fvtool_checkpoint_sha256"]) == 64


def test_bin_written_from_protocol_evaluates_like_the_embed_path(world: dict[str, Path]) -> None:
    from fvtool.protocols.model import read_protocol

    proto = read_protocol(world["proto"])
    n = protocol_to_bin(proto, world["data"], world["tmp"] / "set.bin")
    vb = read_bin(world["tmp"] / "set.bin")
    assert n == vb.n_pairs == len(proto.same) and vb.issame == proto.same.tolist()
    res = evaluate_bin(world["tmp"] / "set.bin", world["run"], folds=4, show_progress=False)

    # the same pairs through the ordinary cache + flip-sum path
    method, config, _s, _c = load_trained_method(world["run"])
    images = load_image_set(world["data"])
    cache = build_cache(images, CacheSpec(config.input_size, config.crop, config.resample),
                        cache_dir=world["tmp"] / "cache", show_progress=False)
    idx = proto.resolve_indices(images.keys)
    emb = embed_rows(method.embedder.eval(), np.asarray(cache.array), idx, device=torch.device("cpu"),
                     normalisation=Normalisation.named(config.normalisation), tta="flip-sum")
    d = ((emb[proto.a] - emb[proto.b]) ** 2).sum(1)
    from fvtool.verification.kfold import kfold_accuracy

    ref = kfold_accuracy(d, proto.same, np.repeat(np.arange(4), len(d) // 4))
    assert res.accuracy_mean == pytest.approx(ref.to_dict()["accuracy_mean"])


def test_cli_interop_commands(world: dict[str, Path], tmp_path: Path) -> None:
    from fvtool.cli import main

    out = tmp_path / "s4.txt"
    with pytest.raises(SystemExit) as e:
        main(["interop", "bob-export", str(world["verify"]), "-o", str(out), "--columns", "4"])
    assert e.value.code == 0 and len(out.read_text().splitlines()[0].split()) == 4
    with pytest.raises(SystemExit) as e:
        main(["interop", "bob-verify", str(out)])
    assert e.value.code == 0
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(SystemExit) as e:
        main(["interop", "bin-read", str(bad)])
    assert e.value.code == 3
