"""Several validation targets during training (`--val-target`): .bin sets written by `fvtool interop bin-write`
and a protocol file, each evaluated at every evaluation point, recorded in history.jsonl, and
`--select-metric NAME/eer` choosing best.pt."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fvtool.cli import main
from fvtool.data.cache import CacheSpec
from fvtool.data.dataset import load_image_set
from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.interop.bin_eval import bin_to_rows
from fvtool.interop.insightface_bin import read_bin
from fvtool.protocols.generate import generate_kfold
from fvtool.protocols.model import write_protocol
from fvtool.protocols.splits import split_identities, write_split
from fvtool.training.checkpoint import json_field, load_checkpoint, load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train
from fvtool.training.evaluation import ValidationSet, validation_scores, verification_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("valtargets")
    images = load_image_set(embedded_data)
    split = split_identities(images.keys, images.identities, counts=(20, 6, 16), seed=2, name="vt")
    write_split(tmp / "split.json", split)
    test = sorted(split.part("test"))
    out = {"tmp": tmp, "split": tmp / "split.json", "data": embedded_data}
    for tag, ids in (("a", set(test[:8])), ("b", set(test[8:]))):
        sel = [i for i, ident in enumerate(images.identities) if ident in ids]
        proto, _ = generate_kfold([images.keys[i] for i in sel], [images.identities[i] for i in sel], folds=2,
                                  n_same=15, seed=0, name=f"vt-{tag}")
        write_protocol(tmp / f"{tag}.json", proto)
        with pytest.raises(SystemExit) as e:
            main(["interop", "bin-write", str(tmp / f"{tag}.json"), "--data", str(embedded_data),
                  "-o", str(tmp / f"{tag}.bin")])
        assert e.value.code == 0
        out[tag] = tmp / f"{tag}.bin"
    return out


def test_targets_recorded_and_select_metric_picks_best(world: dict) -> None:
    tmp = world["tmp"]
    cfg = TrainConfig(data=str(world["data"]), split=str(world["split"]), loss="softmax", input_size=16,
                      embedding_size=16, epochs=3, batch_size=32, lr=0.05, threads=1, seed=0,
                      val_targets=[f"a={world['a']}", f"b={world['b']}", f"bp={tmp / 'b.json'}"],
                      select_metric="b/eer")
    run = tmp / "run"
    train(cfg, run, show_progress=False, cache_dir=tmp / "cache")
    hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    evals = [r for r in hist if r.get("kind") == "epoch" and r.get("val")]
    assert len(evals) == 3
    for r in evals:
        v = r["val"]
        assert {"eer", "a/eer", "b/eer", "bp/eer", "a/frr@far=0.01"} <= set(v)
        # the protocol over the data and the .bin written from it are the same pairs and pixels
        assert v["bp/eer"] == pytest.approx(v["b/eer"]) and v["bp/auc"] == pytest.approx(v["b/auc"])
    best = json_field(load_checkpoint(run / "checkpoints" / "best.pt"), "best")
    assert best["metric"] == "b/eer" and best["value"] == min(r["val"]["b/eer"] for r in evals)
    # the last epoch's a/eer equals a direct evaluation of last.pt on a.bin
    method, c, _, _ = load_trained_method(run, prefer="last")
    vb = read_bin(world["a"])
    rows = bin_to_rows(vb, CacheSpec(c.input_size, c.crop, c.resample))
    n = vb.n_pairs
    from fvtool.protocols.model import Protocol

    keys = [str(i) for i in range(2 * n)]
    proto = Protocol("pairs", "a", keys, keys, a=np.arange(0, 2 * n, 2), b=np.arange(1, 2 * n, 2),
                     same=np.asarray(vb.issame), fold=np.zeros(n, np.int64))
    imp, gen = validation_scores(method.embedder, ValidationSet(proto, np.arange(2 * n)), rows,
                                 Normalisation.named(c.normalisation), torch.device("cpu"), channels_last=False)
    assert verification_metrics(imp, gen, [1e-2])["eer"] == pytest.approx(evals[-1]["val"]["a/eer"], abs=1e-6)


def test_bad_targets_are_refused(world: dict, tmp_path: Path) -> None:
    base = dict(data=str(world["data"]), split=str(world["split"]), loss="softmax", input_size=16, embedding_size=8,
                epochs=1, batch_size=32, threads=1)
    with pytest.raises(InputError, match="no validation target named 'c'"):
        train(TrainConfig(**base, val_targets=[f"a={world['a']}"], select_metric="c/eer"), tmp_path / "r1",
              show_progress=False, cache_dir=world["tmp"] / "cache")
    with pytest.raises(InputError, match="two targets are named 'a'"):
        train(TrainConfig(**base, val_targets=[f"a={world['a']}", f"a={world['b']}"]), tmp_path / "r2",
              show_progress=False, cache_dir=world["tmp"] / "cache")
    with pytest.raises(InputError, match="no such file"):
        train(TrainConfig(**base, val_targets=[f"x={tmp_path / 'missing.json'}"]), tmp_path / "r3",
              show_progress=False, cache_dir=world["tmp"] / "cache")
    assert not any((tmp_path / r / "checkpoints").exists() for r in ("r1", "r2", "r3"))
