"""Study 2 as its source ran it (issue 21): model selection on a validation loss over held-out images of
the training identities, the source's VAE (Tanh output, sum-reduced MSE, 512 x 4 x 4 map at 112 px),
the flattened average-pool embedding, and Euclidean scores on raw embeddings, each against a direct
computation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_exit import run_cli as _run

from fvtool.data.cache import CacheSpec, build_cache
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.losses.vae import ReconstructionLoss, reconstruction_terms, to_unit
from fvtool.models.registry import build_backbone
from fvtool.protocols.model import Protocol, write_protocol
from fvtool.protocols.splits import read_split, split_identities, write_split
from fvtool.recipes import load_recipe
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.data import hold_out
from fvtool.training.engine import Trainer, train
from fvtool.training.methods import MethodContext, build_method

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def split12(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 training identities x 10 images, no val identities (the hold-out is the only validation)."""
    images = load_image_set(embedded_data)
    p = tmp_path_factory.mktemp("split") / "s12.json"
    write_split(p, split_identities(images.keys, images.identities, counts=(12, 0, 4), seed=0, name="s12"))
    return p


def _config(data: Path, split: Path, **kw: object) -> TrainConfig:
    # Adam 0.01 overfits these 84 images: the held-out loss is lowest at epoch 3 while the training loss falls on
    base: dict[str, object] = dict(data=str(data), split=str(split), input_size=16, embedding_size=16, epochs=5,
                                   batch_size=16, optimizer="adam", lr=0.01, schedule="constant", threads=1, seed=3,
                                   val_holdout=0.3, select_metric="val_loss", log="none")
    base.update(kw)
    return TrainConfig(**base)


# ---- the hold-out -----------------------------------------------------------------------------------

def test_hold_out_is_seeded_image_level_and_keeps_every_identity() -> None:
    ids = [f"p{i % 7}" for i in range(60)] + ["single"]
    m = hold_out(ids, 0.25, seed=1)
    assert m.sum() == round(0.25 * len(ids))
    assert np.array_equal(m, hold_out(ids, 0.25, seed=1)) and not np.array_equal(m, hold_out(ids, 0.25, seed=2))
    kept = {ident for ident, h in zip(ids, m, strict=True) if not h}
    assert kept == set(ids)  # every identity keeps a training image; "single" is never held out
    assert hold_out(ids, 0.99, seed=0).sum() == len(ids) - len(set(ids))  # at most all but one per identity


# ---- model selection on the validation loss --------------------------------------------------------

def test_val_loss_selects_the_epoch_with_the_lowest_held_out_loss(embedded_data: Path, split12: Path,
                                                                   cache_dir: Path, tmp_path: Path) -> None:
    """best.pt is the epoch whose val_loss (cross-entropy on the held-out images, eval mode) is lowest, and
    the logged val_loss equals that loss recomputed from the checkpoint by hand."""
    cfg = _config(embedded_data, split12)
    result = train(cfg, tmp_path / "run", show_progress=False, cache_dir=cache_dir)
    epochs = [r for r in result.history if r["kind"] == "epoch"]
    val = [r["val"]["val_loss"] for r in epochs]
    assert len(val) == 5 and all(np.isfinite(val)) and all(0 <= r["val"]["val_accuracy"] <= 1 for r in epochs)
    assert result.best["metric"] == "val_loss" and result.best["epoch"] == int(np.argmin(val)) + 1
    train_loss = [r["loss"] for r in epochs]
    assert np.argmin(val) != np.argmin(train_loss), "the run must tell the two criteria apart"
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["select_metric"] == "val_loss" and resolved["data"]["holdout_images"] == 36

    # the held-out images, by hand: the training identities' images of the split, drawn like the run draws
    images = load_image_set(embedded_data)
    split = read_split(split12)
    train_keys = set(split.images["train"])
    sel = [i for i, k in enumerate(images.keys) if k in train_keys]
    held = np.asarray(sel)[hold_out([images.identities[i] for i in sel], 0.3, seed=3)]
    classes = sorted({images.identities[i] for i in sel})
    labels = torch.tensor([classes.index(images.identities[i]) for i in held])
    cache = build_cache(images.take(held), CacheSpec(16), cache_dir=cache_dir, show_progress=False)
    x = Normalisation().apply(torch.from_numpy(np.array(cache.array)).permute(0, 3, 1, 2).float() / 255)
    method, _, _, _ = load_trained_method(tmp_path / "run", prefer="best")
    method.eval()
    with torch.no_grad():
        logits = method.loss.classifier(method.embedder(x))
        ce = float(F.cross_entropy(logits, labels))
    assert ce == pytest.approx(min(val), rel=1e-4)


def test_report_draws_training_and_validation_loss_together() -> None:
    """The source's "Train vs. Validation Loss" figure: one panel with both curves of a --val-holdout run."""
    from fvtool.reporting import figures as fig_mod
    from fvtool.reporting.loading import flatten_history
    from fvtool.reporting.records import RunData
    from fvtool.reporting.stage import _component_panels

    hist = flatten_history([{"kind": "epoch", "epoch": e, "step": 5 * e, "loss": 3.0 / e,
                             "val": {"val_loss": 2.0 + abs(e - 2), "val_accuracy": 0.1}} for e in (1, 2, 3)])
    panel = next(p for p in _component_panels(RunData(label="r", history=hist)) if "val/val_loss" in p.keys)
    assert panel.keys == ("loss", "val/val_loss")
    fig = fig_mod.training_curves_figure([("r", 0, hist)], [panel])
    assert [list(line.get_ydata()) for line in fig.axes[0].get_lines()] == [[3.0, 1.5, 1.0], [3.0, 2.0, 3.0]]


def test_val_loss_needs_a_hold_out_and_a_plain_batch_method(embedded_data: Path, split12: Path,
                                                            cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--val-holdout"):
        Trainer(_config(embedded_data, split12, val_holdout=None), tmp_path / "a", show_progress=False,
                cache_dir=cache_dir)
    with pytest.raises(InputError, match="eer"):
        Trainer(_config(embedded_data, split12, loss="triplet", mining="hard", pk=(4, 4)), tmp_path / "b",
                show_progress=False, cache_dir=cache_dir)
    with pytest.raises(InputError, match="val_holdout"):
        TrainConfig(val_holdout=1.0)


# ---- the source's VAE ------------------------------------------------------------------------------

def test_tanh_output_and_sum_reduction_equal_a_direct_computation() -> None:
    """loss = [F.mse_loss(tanh(logits), 2x - 1, reduction='sum') + KLD] / B with KLD summed over the batch,
    the source's loss per image; the image is in [-1, 1] (in [0, 1] units after `to_unit`)."""
    g = torch.Generator().manual_seed(0)
    b = 4
    logits = torch.randn(b, 3, 8, 8, generator=g, dtype=torch.float64) * 3
    x = torch.rand(b, 3, 8, 8, generator=g, dtype=torch.float64)
    mu = torch.randn(b, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(b, 5, generator=g, dtype=torch.float64) * 0.5
    out = ReconstructionLoss("mse", "sum", output="tanh")(logits, x, mu, logvar)
    mse = F.mse_loss(torch.tanh(logits), 2 * x - 1, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    assert float(out.loss) == pytest.approx(float(mse + kld) / b, rel=1e-12)
    assert out.components["mse_pixel"] == pytest.approx(float(((torch.tanh(logits) + 1) / 2 - x).square().mean()))
    img = torch.tanh(logits)
    assert img.min() >= -1 and img.max() <= 1 and img.min() < -0.9 and img.max() > 0.9
    unit = to_unit(logits, "tanh")
    assert unit.min() >= 0 and unit.max() <= 1
    # the tanh image matches black and white pixels at the ends of its range, grey in the middle
    t = torch.tensor([[[[0.0, 0.5, 1.0]]]])
    assert float(reconstruction_terms(torch.tensor([[[[-30.0, 0.0, 30.0]]]]), t, "mse", "tanh")) == 0.0
    with pytest.raises(InputError, match="mse"):
        ReconstructionLoss("bce", "sum", output="tanh")


def test_faithful_vae_recipe_builds_the_sources_network() -> None:
    """study2-vae-faithful at 112 px: five stride-2 blocks to a 512 x 4 x 4 map, a 512-d mu, a decoder that
    mirrors the encoder's sides back to 112 x 112, Tanh/sum-MSE loss, Adam 1e-5, StepLR(10, 0.1), batch 32."""
    recipe = load_recipe("study2-vae-faithful")
    cfg = TrainConfig.from_dict(recipe.config)
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.optimizer, cfg.epochs) == (1e-5, 1e-5, 32, "adam", 30)
    assert (cfg.schedule, cfg.milestones, cfg.gamma) == ("step", [10.0, 20.0], 0.1)
    method = build_method(MethodContext(cfg, 10, Normalisation.named(cfg.normalisation)))
    assert method.loss.output == "tanh" and method.loss.reduction == "sum" and method.loss.recon == "mse"
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        fmap = method.model.encoder.features(x)
        mu, logvar = method.model.encoder.encode(x)
        logits = method.model.decoder(mu)
    assert fmap.shape == (2, 512, 4, 4) and mu.shape == logvar.shape == (2, 512)
    assert logits.shape == (2, 3, 112, 112)
    # the schedule: lr x 0.1 after epoch 10 and again after 20, per epoch (not per batch)
    from fvtool.training.schedules import LRSchedule

    sched = LRSchedule(cfg, steps_per_epoch=5)
    assert [sched.factor(e * 5) for e in (0, 9, 10, 19, 20, 29)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


# ---- the flattened average-pool embedding ----------------------------------------------------------

def test_avgpool_head_is_the_flattened_average_pool_of_the_trunk() -> None:
    torch.manual_seed(0)
    net = build_backbone("resnet18", embedding_size=512, input_size=64, stem="imagenet", head="avgpool").eval()
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        fmap = net.trunk(x)
        emb = net(x)
    assert emb.shape == (3, 512) and torch.allclose(emb, fmap.mean(dim=(2, 3)), atol=1e-6)
    assert (emb >= 0).all()  # after the trunk's last ReLU, nothing learned or normalised on top
    assert not any(isinstance(m, torch.nn.Linear | torch.nn.BatchNorm1d) for m in net.head.modules())
    with pytest.raises(InputError, match="--embedding-size 512"):
        build_backbone("resnet18", embedding_size=128, input_size=64, head="avgpool")


# ---- Euclidean distance on raw embeddings ----------------------------------------------------------


def test_raw_euclidean_scores_equal_numpy_distances(tmp_path: Path) -> None:
    """`verify --metric euclidean --raw`: score = -||a - b|| on the embeddings as stored (norms 1-40 here, so
    normalising would change every distance), recorded as such in metrics.json."""
    rng = np.random.default_rng(0)
    n_ids, per, dim = 12, 4, 16
    lab = np.repeat(np.arange(n_ids), per)
    x = (rng.normal(size=(n_ids, dim))[lab] + 0.5 * rng.normal(size=(len(lab), dim)))
    x *= rng.uniform(1, 40, size=(len(lab), 1))
    x = x.astype(np.float32)
    keys = [f"id{v:02d}/img{i}.jpg" for i, v in enumerate(lab)]
    emb = tmp_path / "emb.h5"
    write_embeddings(emb, EmbeddingSet(x, keys, [f"id{v:02d}" for v in lab], ["ok"] * len(keys)))
    a, b, same = [], [], []
    for i in range(len(lab)):
        for j in (i + 1, (i + 7) % len(lab)):
            if j < len(lab) and j != i:
                a.append(i), b.append(j), same.append(lab[i] == lab[j])
    proto = tmp_path / "p.json"
    write_protocol(proto, Protocol(kind="pairs", name="p", images=keys, identities=[f"id{v:02d}" for v in lab],
                                   a=np.array(a), b=np.array(b), same=np.array(same, bool),
                                   fold=np.arange(len(a)) * 4 // len(a)))
    assert _run("verify", emb, "--protocol", proto, "--metric", "euclidean", "--raw", "-o", tmp_path / "v", "-q") == 0
    m = json.loads((tmp_path / "v" / "metrics.json").read_text())
    assert m["scoring"] == {"metric": "euclidean", "normalised": False, "score": "similarity = -euclidean distance"}
    with open(tmp_path / "v" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    idx = {k: i for i, k in enumerate(keys)}
    want = [-np.linalg.norm(x[idx[r["key_a"]]].astype(np.float64) - x[idx[r["key_b"]]].astype(np.float64))
            for r in rows]
    assert np.allclose([float(r["score"]) for r in rows], want, rtol=1e-6, atol=1e-5)
    assert len(rows) == len(a) and min(want) < -20  # raw scale, not the [-2, 0] of unit vectors
    # the k-fold rule on the raw distances (study 2: "threshold by 10-fold cross-validation" on them): each
    # fold's threshold reaches the best training-fold accuracy any raw-distance threshold reaches (brute
    # force), and the fold's accuracy is the test-fold accuracy at that threshold
    kf = m["kfold"]["on_scores"]
    d = -np.array([float(r["score"]) for r in rows])
    same_r = np.array([r["label"] == "1" for r in rows])
    fold_r = np.array([int(r["fold"]) for r in rows])
    assert same_r.sum() == sum(same) and len(kf["fold_accuracy"]) == 4
    for f, (acc, t) in enumerate(zip(kf["fold_accuracy"], kf["fold_threshold"], strict=True)):
        tr, te = fold_r != f, fold_r == f
        best = max(np.mean((d[tr] < c) == same_r[tr]) for c in [*d[tr], np.inf])
        assert np.mean((d[tr] < t) == same_r[tr]) == pytest.approx(best)
        assert acc == pytest.approx(np.mean((d[te] < t) == same_r[te]))
    assert max(kf["fold_threshold"]) > 2  # raw scale: no normalised distance exceeds 2
    assert _run("verify", emb, "--protocol", proto, "--metric", "euclidean", "-o", tmp_path / "n", "-q") == 0
    assert "on_scores" not in json.loads((tmp_path / "n" / "metrics.json").read_text())["kfold"]
