"""Study 1's pieces: training from a pairs file (`train --train-pairs`), the listed-pair and triplet
batches, contrastive/triplet on listed tuples, the random split's test part for `verify`, the
~190K-parameter siamese CNN and the study 1 recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fvtool.cli import main
from fvtool.data.samplers import ListedPairSampler, TripletBatchSampler
from fvtool.losses.registry import build_loss
from fvtool.mining.listed import ListedTuples
from fvtool.models.registry import build_backbone
from fvtool.protocols.model import read_protocol
from fvtool.protocols.training import random_pair_split, random_split_test_part
from fvtool.recipes import load_recipe, recipe_names
from fvtool.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SUBSET = Path(__file__).parents[1] / "data" / "lfw-subset"


def _cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as e:
        main(args)
    return int(e.value.code or 0)


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random 72/18/10 pair split of the embedded subset and its test part, as `pairs train-pairs` writes them."""
    base = tmp_path_factory.mktemp("pairs")
    path, test = base / "random.json", base / "random-test.json"
    code = _cli(["--workspace", str(base / "ws"), "pairs", "train-pairs", str(SUBSET), "--random-split",
                 "--pairs", "300", "--seed", "0", "-o", str(path), "--test-output", str(test), "--test-folds", "5"])
    assert code == 0
    return path, test


# ---- the network ------------------------------------------------------------------------------

def test_siamese_cnn_has_the_sources_parameter_count() -> None:
    """"approximately 190K trainable parameters": Keras counts BatchNorm's moving statistics as parameters;
    the reading (keras.io's siamese network at 128 x 128 x 3) gives 163,408 trainable + 26,918 moving
    statistics = 190,326 for the embedding network, and 190,332 with the merge (BN(1) 4 + Dense(1) 2)."""
    net = build_backbone("siamese_cnn", embedding_size=10, input_size=128)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    moving = sum(b.numel() for n, b in net.named_buffers() if n.endswith(("running_mean", "running_var")))
    flat = 16 * 29 * 29  # 128 -> conv5 124 -> pool 62 -> conv5 58 -> pool 29
    assert trainable == 3 * 2 + (5 * 5 * 3 * 4 + 4) + (5 * 5 * 4 * 16 + 16) + 2 * flat + (flat * 10 + 10)
    assert (trainable, moving, trainable + moving) == (163_408, 26_918, 190_326)
    assert trainable + moving + 4 + 2 == 190_332 and abs(190_332 - 190_000) / 190_000 < 0.01
    out = net.eval()(torch.rand(2, 3, 128, 128))
    assert out.shape == (2, 10) and out.abs().max() <= 1.0  # tanh embedding
    assert build_backbone("siamese_cnn", embedding_size=10, input_size=32)(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# ---- samplers and listed tuples -----------------------------------------------------------------

def test_listed_pair_batches_hold_exactly_the_listed_pairs() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    left, right = np.array([0, 2, 4, 6, 0, 1, 3]), np.array([1, 3, 5, 7, 2, 4, 6])
    same = labels[left] == labels[right]
    s = ListedPairSampler(labels, left, right, same, layout="pairs", per_batch=2, seed=0)
    plan = s.plan(0)
    assert len(plan) == 3  # 7 pairs, batches of 2, the last incomplete batch dropped
    seen = set()
    for b in plan:
        lft, rgt = b.indices[:2], b.indices[2:]
        assert (labels[lft] == labels[rgt]).tolist() == b.same.tolist()
        seen |= set(zip(lft.tolist(), rgt.tolist(), strict=True))
    assert len(seen) == 6 and seen <= set(zip(left.tolist(), right.tolist(), strict=True))
    assert [b.indices.tolist() for b in s.plan(0)] == [b.indices.tolist() for b in plan]  # seeded
    t = ListedPairSampler(labels, left, right, same, layout="triplets", per_batch=2, seed=0)
    for b in t.plan(1):
        a, p, n = b.indices[:2], b.indices[2:4], b.indices[4:]
        assert set(zip(a.tolist(), p.tolist(), strict=True)) <= {(0, 1), (2, 3), (4, 5), (6, 7)}
        assert (labels[a] != labels[n]).all() and np.isin(n, np.union1d(left, right)).all()
    free = TripletBatchSampler(labels, 3, seed=0)
    for b in free.plan(0):
        a, p, n = b.indices[:3], b.indices[3:6], b.indices[6:]
        assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()


def test_contrastive_and_triplet_on_listed_tuples_match_their_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(8, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 4, 2, 5])  # pairs (i, 4 + i): genuine, impostor, genuine, impostor
    loss = build_loss("contrastive", miner=ListedTuples(), margin=1.0, normalize=False, reduction="mean")
    d = (emb[:4] - emb[4:]).norm(dim=1)
    y = (labels[:4] == labels[4:]).float()
    want = (y * d ** 2 + (1 - y) * torch.clamp(1.0 - d, min=0) ** 2).mean()
    assert torch.allclose(loss(emb, labels).loss, want, atol=1e-6)
    emb3 = torch.randn(6, 5, generator=g)
    lab3 = torch.tensor([0, 1, 0, 1, 2, 3])
    tri = build_loss("triplet", miner=ListedTuples(), margin=0.5, normalize=False, reduction="mean")
    dap = (emb3[:2] - emb3[2:4]).pow(2).sum(1)
    dan = (emb3[:2] - emb3[4:]).pow(2).sum(1)
    assert torch.allclose(tri(emb3, lab3).loss, torch.relu(dap - dan + 0.5).mean(), atol=1e-5)


# ---- pairs files: the test part and training ---------------------------------------------------

def test_random_split_test_part_is_an_evaluation_protocol(pair_files: tuple[Path, Path]) -> None:
    path, test = pair_files
    full, part = read_protocol(path), read_protocol(test)
    assert part.n_folds == 5 and "purpose" not in part.extra and part.extra["part"] == "test"
    assert part.extra["warning"] and part.extra["identity_disjoint"] is False
    in_test = full.fold == full.extra["fold_names"].index("test")
    assert len(part.a) == int(in_test.sum()) and int(part.same.sum()) == int(full.same[in_test].sum())
    proto, _ = random_pair_split([f"i{k}/{j}.jpg" for k in range(4) for j in range(3)],
                                 [f"i{k}" for k in range(4) for _ in range(3)], n_pairs=20, seed=0)
    with pytest.raises(Exception, match="too few for 10 folds"):
        random_split_test_part(proto, folds=10)


@pytest.mark.parametrize("loss", ["bce", "contrastive", "triplet"])
def test_train_from_a_pairs_file(loss: str, pair_files: tuple[Path, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The study 1 faithful recipe on the listed pairs: the siamese method, the file's val part
    validating (verification metrics and the loss on its listed pairs/triplets), the leakage warning
    repeated, and config.json naming the pairs file."""
    path, _ = pair_files
    run = tmp_path / "run"
    code = _cli(["train", "--recipe", f"study1-{loss}-faithful", "--data", str(SUBSET), "--train-pairs", str(path),
                 "--input-size", "32", "--epochs", "1", "--batch-size", "48", "--threads", "1", "-o", str(run)])
    said = " ".join(capsys.readouterr().err.split())
    assert code == 0, said[-2000:]
    assert "IDENTITY LEAKAGE in --train-pairs random.json" in said and "method siamese" in said and "val loss" in said
    assert "validation lfw-subset-random-pair-split-s0-val" in said  # the file's val part
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["train_pairs"] == str(path.resolve()) and cfg["split"] is None and cfg["backbone"] == "siamese_cnn"
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    epoch = next(h for h in history if h["kind"] == "epoch")
    n_train = int((read_protocol(path).fold == 0).sum())
    per_batch = 16 if loss == "triplet" else 24
    val = epoch["val"]
    in_val = read_protocol(path).fold == 1
    assert val["n_genuine"] + val["n_impostor"] == int(in_val.sum())
    # the source's "validation loss": the training loss on the listed val pairs (triplets: its genuine pairs)
    assert val["val_loss"] > 0 and val.get("val_triplets" if loss == "triplet" else "val_pairs") == (
        int(read_protocol(path).same[in_val].sum()) if loss == "triplet" else int(in_val.sum()))
    assert ("val_pair_accuracy" in val) == (loss == "bce")  # the head's p(same) > 0.5 on the val pairs
    if loss != "triplet":  # every listed pair once per epoch, whole batches only
        assert epoch["images"] == n_train // per_batch * per_batch * 2


def test_bad_pairs_files_exit_3_naming_the_file(pair_files: tuple[Path, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path, test = pair_files
    base = ["train", "--data", str(SUBSET), "--loss", "contrastive", "--epochs", "1", "--threads", "1",
            "-o", str(tmp_path / "run")]
    missing = tmp_path / "nope.json"
    assert _cli([*base, "--train-pairs", str(missing)]) == 3
    assert f"--train-pairs {missing}: no such file" in " ".join(capsys.readouterr().err.split())
    assert _cli([*base, "--train-pairs", str(test)]) == 3  # an evaluation protocol, not training pairs
    err = " ".join(capsys.readouterr().err.split())
    assert "random-test.json" in err and "not a training-pairs file" in err
    broken = tmp_path / "broken.json"
    broken.write_text(path.read_text()[:-40])
    assert _cli([*base, "--train-pairs", str(broken)]) == 3
    assert "broken.json" in capsys.readouterr().err
    split = tmp_path / "split.json"
    assert _cli(["pairs", "split", str(SUBSET), "-o", str(split)]) == 0
    assert _cli([*base, "--train-pairs", str(path), "--split", str(split)]) == 3
    assert "give one of them" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_study1_recipes() -> None:
    names = set(recipe_names())
    for model in ("bce", "contrastive", "triplet", "vae-bce", "vae-mse"):
        for family in ("faithful", "tuned"):
            r = load_recipe(f"study1-{model}-{family}")
            assert r.study == 1 and r.source == "000_88edffef819ad7fa.txt" and r.departures
            assert f"study1-{model}-{family}" in names
    for model in ("bce", "contrastive", "triplet"):
        cfg = TrainConfig.from_dict(load_recipe(f"study1-{model}-faithful").config)
        # "resized to 128 x 128 x 3, normalized to [0, 1]", "20 epochs", the ~190K-parameter shared CNN
        assert (cfg.input_size, cfg.normalisation, cfg.epochs, cfg.backbone) == (128, "unit", 20, "siamese_cnn")
    for recon in ("bce", "mse"):
        cfg = TrainConfig.from_dict(load_recipe(f"study1-vae-{recon}-faithful").config)
        assert (cfg.recon, cfg.epochs, cfg.normalisation, cfg.loss_options) == (recon, 10, "unit", {"reduction": "sum"})
