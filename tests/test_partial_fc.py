"""Partial FC (class-sharded margin-softmax head): at sample rate 1 it is the full classifier to float rounding,
in one process and over 2 gloo processes (loss, feature gradients, weights after 3 SGD steps, for every
shardable loss); sampled rows always contain the batch's positives and have the expected count; a 2-process
training run with sampling resumes mid-epoch to the same shards (side files per rank) and refuses another
process count; what cannot be sharded is refused.

The 2-process checks share one spawned job (module fixture), with tiny C and D.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from fvtool.data.dataset import load_image_set
from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.losses.partial_fc import PartialFC, clip_grad_norm_sharded, full_rows_of, shard_range
from fvtool.losses.registry import build_loss
from fvtool.protocols.splits import split_identities, write_split
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.distributed import make_trainer, spawn
from fvtool.training.engine import train
from fvtool.training.methods import MethodContext, build_method, resolve_method

pytestmark = pytest.mark.usefixtures("one_thread")

D_IN, D, C, B = 5, 4, 10, 8
#: every shardable loss, with options that keep the logits moderate on random data
LOSSES: dict[str, dict[str, object]] = {
    "softmax": {}, "normface": {"scale": 8.0}, "cosface": {"scale": 8.0}, "arcface": {"scale": 8.0},
    "combined_margin": {"scale": 8.0, "m1": 1.2, "m2": 0.2, "m3": 0.1}, "sphereface": {"lambda_base": 5.0},
    "adaface": {"scale": 8.0, "t_alpha": 0.5}, "magface": {"scale": 8.0, "l_a": 1.0, "u_a": 20.0, "lambda_g": 2.0},
    "curricularface": {"scale": 8.0, "t_alpha": 0.5},
}
STEPS = 3
CLIP = 0.5  # gradient-norm limit (as --grad-clip), low enough to clip in these steps


def builder(name: str):
    return lambda n: build_loss(name, embedding_size=D, num_classes=n, **LOSSES[name])


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(B, D_IN, generator=g) * 3, torch.randint(0, C, (B,), generator=g)


def compare_with_full(name: str, rank: int, world: int) -> dict[str, float]:
    """3 SGD steps of backbone + full loss (the whole batch, this process alone) against backbone + Partial FC
    (this rank's slice of the batch, DDP's gradient average done by hand), gradients clipped to a joint norm
of CLIP as `--grad-clip` does; max relative differences."""
    torch.manual_seed(0)
    backbone = nn.Linear(D_IN, D)
    full = builder(name)(C)
    pfc = PartialFC(builder(name), num_classes=C, embedding_size=D, rank=rank, world=world)
    with torch.no_grad():
        for k, v in full_rows_of(full, pfc.lo, pfc.hi).items():
            pfc.shard[k].copy_(v)
    backbone2 = copy.deepcopy(backbone)
    opt_full = torch.optim.SGD([*backbone.parameters(), *full.parameters()], lr=0.05, momentum=0.9)
    opt_pfc = torch.optim.SGD([*backbone2.parameters(), *pfc.parameters()], lr=0.05, momentum=0.9)
    worst = {"loss": 0.0, "feature_grad": 0.0, "backbone": 0.0, "rows": 0.0, "buffers": 0.0, "grad_norm": 0.0}
    clipped = 0

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach().double(), b.detach().double()
        return float((a - b).abs().max() / (b.abs().max() + 1e-12))

    part = slice(rank * B // world, (rank + 1) * B // world)
    for step in range(STEPS):
        x, y = data(step)
        emb = backbone(x)
        emb.retain_grad()
        out = full(emb, y)
        opt_full.zero_grad()
        out.loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_([*backbone.parameters(), *full.parameters()], CLIP))
        clipped += norm > CLIP
        opt_full.step()
        emb2 = backbone2(x[part])
        emb2.retain_grad()
        out2 = pfc(emb2, y[part])
        opt_pfc.zero_grad()
        out2.loss.backward()
        if world > 1:
            for p in backbone2.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        norm2 = clip_grad_norm_sharded(list(backbone2.parameters()), list(pfc.parameters()), CLIP, world)
        worst["grad_norm"] = max(worst["grad_norm"], abs(norm2 - norm) / norm)
        opt_pfc.step()
        value = out2.loss.detach().clone()
        if world > 1:  # the logged loss of a DDP step: the mean over ranks (MagFace's g is per rank)
            dist.all_reduce(value)
            value /= world
        worst["loss"] = max(worst["loss"], rel(value, out.loss))
        full_correct = int((out.logits.argmax(1) == y).sum())
        assert out2.counts == (full_correct, B, C), (name, out2.counts, full_correct)  # global train accuracy
        worst["feature_grad"] = max(worst["feature_grad"], rel(emb2.grad / world, emb.grad[part]))
        worst["backbone"] = max(worst["backbone"], max(rel(a, b) for a, b in zip(backbone2.parameters(),
                                                                                  backbone.parameters(), strict=True)))
        rows = full_rows_of(full, pfc.lo, pfc.hi)
        worst["rows"] = max(worst["rows"], max(rel(pfc.shard[k], rows[k]) for k in rows))
        for k, v in full.named_buffers():
            diff = (dict(pfc.inner.named_buffers())[k].double() - v.double()).abs().max()
            worst["buffers"] = max(worst["buffers"], float(diff / max(1.0, float(v.double().abs().max()))))
    assert clipped, f"{name}: --grad-clip {CLIP} never clipped; lower CLIP so the test covers clipping"
    return worst


def check_sampling(rank: int, world: int) -> dict[str, object]:
    """r = 0.5 over 40 classes: the kept rows of each step, the shard's positives, the expected count."""
    n_classes, out = 40, []
    pfc = PartialFC(builder("arcface"), num_classes=n_classes, embedding_size=D, sample_rate=0.5, seed=7,
                    rank=rank, world=world)
    for step in range(4):
        g = torch.Generator().manual_seed(step)
        y = torch.randint(0, n_classes, (B,), generator=g)
        part = slice(rank * B // world, (rank + 1) * B // world)
        pfc(torch.randn(B // world, D, generator=g), y[part])
        mine = sorted({int(v) - pfc.lo for v in y if pfc.lo <= v < pfc.hi})
        out.append({"rows": pfc.last_rows.tolist(), "positives": mine, "n_local": pfc.hi - pfc.lo})
    return {"rank": rank, "steps": out}


def _engine_config(data_dir: str, split: str, **kw: object) -> dict[str, object]:
    base: dict[str, object] = dict(data=data_dir, split=split, input_size=16, embedding_size=8, epochs=1,
                                   batch_size=16, lr=0.05, threads=1, seed=3, batchnorm="frozen", val_protocol="none",
                                   schedule="constant", loss="adaface", scale=8.0, partial_fc=0.9, log="none",
                                   grad_clip=1.0)
    return base | kw


def _job(root: str, data_dir: str, split: str) -> None:
    """Runs in each of the 2 spawned processes."""
    torch.set_num_threads(1)
    from fvtool.training.distributed import init_distributed

    init_distributed("cpu")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"compare": {name: compare_with_full(name, rank, world) for name in LOSSES},
              "sampling": check_sampling(rank, world)}
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(result))
    cfg = TrainConfig(**_engine_config(data_dir, split))
    make_trainer(cfg, Path(root) / "full", show_progress=False, cache_dir=Path(root) / "cache").fit()
    make_trainer(cfg, Path(root) / "cut", show_progress=False, cache_dir=Path(root) / "cache").fit(stop_after_steps=4)
    make_trainer(cfg, Path(root) / "cut", show_progress=False, cache_dir=Path(root) / "cache", resume=True).fit()


@pytest.fixture(scope="module")
def job(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("pfc")
    images = load_image_set(embedded_data)
    split = root / "split.json"
    write_split(split, split_identities(images.keys, images.identities, counts=(16, 6, 0), seed=0, name="pfc"))
    spawn(_job, 2, (str(root), str(embedded_data), str(split)), env={"OMP_NUM_THREADS": "1"})
    return root, split, embedded_data


# ---- one process -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(LOSSES))
def test_one_process_at_rate_one_is_the_full_classifier(name: str) -> None:
    worst = compare_with_full(name, 0, 1)
    assert max(worst.values()) < 1e-5, worst


def test_shard_ranges_cover_the_classes() -> None:
    for c, n in [(10, 2), (11, 3), (1_000_003, 8)]:
        ranges = [shard_range(c, k, n) for k in range(n)]
        assert ranges[0][0] == 0 and ranges[-1][1] == c
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        assert max(h - lo for lo, h in ranges) - min(h - lo for lo, h in ranges) <= 1


def test_a_shard_without_positives_keeps_one_row() -> None:
    pfc = PartialFC(builder("arcface"), num_classes=40, embedding_size=D, sample_rate=0.01, rank=1, world=2)
    rows = pfc.sample_rows(torch.tensor([0, 3, 7]), step=5)  # all in rank 0's shard
    assert rows.numel() == 1 and 0 <= int(rows[0]) < 20
    assert torch.equal(rows, pfc.sample_rows(torch.tensor([0, 3, 7]), step=5))  # a function of (seed, rank, step)


def test_what_cannot_be_sharded_is_refused() -> None:
    with pytest.raises(InputError, match="cannot be sharded"):
        PartialFC(lambda n: build_loss("center", embedding_size=D, num_classes=n), num_classes=C, embedding_size=D)
    with pytest.raises(InputError, match="label smoothing"):
        PartialFC(lambda n: build_loss("softmax", embedding_size=D, num_classes=n, label_smoothing=0.1),
                  num_classes=C, embedding_size=D)
    with pytest.raises(InputError, match="at least 2 per process"):
        PartialFC(builder("arcface"), num_classes=5, embedding_size=D, rank=2, world=4)
    with pytest.raises(InputError, match="sample rate"):
        TrainConfig(loss="arcface", partial_fc=1.5)
    with pytest.raises(InputError, match="classification losses"):
        build_method(MethodContext(TrainConfig(loss="triplet", partial_fc=1.0), C, Normalisation.named("pm1")))
    with pytest.raises(InputError, match="--partial-fc does not apply"):
        resolve_method(TrainConfig(loss="vae", partial_fc=1.0))


# ---- two processes -----------------------------------------------------------------------------------------

def test_two_ranks_equal_the_full_classifier(job) -> None:
    root = job[0]
    for rank in (0, 1):
        result = json.loads((root / f"rank{rank}.json").read_text())["compare"]
        assert set(result) == set(LOSSES)
        for name, worst in result.items():
            assert max(worst.values()) < 1e-5, (rank, name, worst)


def test_sampled_rows_keep_the_positives_and_the_expected_count(job) -> None:
    root = job[0]
    draws = []
    for rank in (0, 1):
        for s in json.loads((root / f"rank{rank}.json").read_text())["sampling"]["steps"]:
            rows, positives = s["rows"], s["positives"]
            assert rows == sorted(set(rows)) and all(0 <= r < s["n_local"] for r in rows)
            assert set(positives) <= set(rows)
            assert len(rows) == max(int(0.5 * s["n_local"]), len(positives))
            draws.append(tuple(rows))
    assert len(set(draws)) > 2  # different per step and rank


def test_sharded_run_resumes_to_the_same_shards_and_refuses_another_process_count(job) -> None:
    root, split, data_dir = job
    ckpts = root / "full" / "checkpoints"
    for rank in (0, 1):
        a = torch.load(ckpts / f"last.fc-rank{rank}-of-2.pt", weights_only=True)
        b = torch.load(root / "cut" / "checkpoints" / f"last.fc-rank{rank}-of-2.pt", weights_only=True)
        assert a["rows"] == list(shard_range(16, rank, 2)) and a["step"] == b["step"] == 10
        assert a["loss"].keys() == b["loss"].keys() and "shard.weight" in a["loss"]
        for k in a["loss"]:
            assert torch.equal(a["loss"][k], b["loss"][k]), (rank, k)
    w0 = torch.load(ckpts / "last.fc-rank0-of-2.pt", weights_only=True)["loss"]["shard.weight"]
    w1 = torch.load(ckpts / "last.fc-rank1-of-2.pt", weights_only=True)["loss"]["shard.weight"]
    assert w0.shape == w1.shape == (8, 8) and not torch.equal(w0, w1)
    main_a = torch.load(ckpts / "last.pt", weights_only=True)["embedder"]
    main_b = torch.load(root / "cut" / "checkpoints" / "last.pt", weights_only=True)["embedder"]
    assert all(torch.equal(main_a[k], main_b[k]) for k in main_a)
    hist = [json.loads(x) for x in (root / "full" / "history.jsonl").read_text().splitlines()]
    assert hist[-1]["stats"]["fc_rows"] == pytest.approx(7.0, abs=1.0)  # ~int(0.9 * 8) rows per rank
    assert 0.0 <= hist[-1]["train_accuracy"] <= 1.0  # counted over the sharded classes
    with pytest.raises(InputError, match="2 process"):
        train(TrainConfig(**_engine_config(str(data_dir), str(split))), root / "full", resume=True,
              show_progress=False, cache_dir=root / "cache")
    method, config, _, _ = load_trained_method(root / "full", prefer="last")  # embed needs no class rows
    assert config.partial_fc == 0.9 and torch.equal(method.embedder.state_dict()[next(iter(main_a))],
                                                      main_a[next(iter(main_a))])
