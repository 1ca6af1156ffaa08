"""Multi-process (DDP) training on the CPU with gloo: 2 processes x B/2 equal 1 process x B (loss curve and
weights, for a margin classification loss and a metric loss with mining and a learnable parameter), resume
(mid-epoch, same world size; another world size refused), torchrun and `--nproc` entry points, the per-rank
batch slices (with augmentation), batch-norm modes, and the launcher's environment checks.

The 2-process runs share one spawned job (module fixture) so that process start-up (importing torch twice on
a loaded 2-core machine) is paid once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fvtool.data.dataset import load_image_set
from fvtool.data.samplers import SampledBatch
from fvtool.data.transforms import AugmentConfig, BatchTransform, Normalisation
from fvtool.errors import InputError
from fvtool.protocols.splits import split_identities, write_split
from fvtool.training.batchnorm import apply_batchnorm_mode
from fvtool.training.config import TrainConfig
from fvtool.training.data import BatchLoader
from fvtool.training.distributed import (
    RankBatchLoader,
    backend_for,
    device_for,
    env_world,
    init_distributed,
    make_trainer,
    slice_batch,
    slice_sampled,
    spawn,
)
from fvtool.training.engine import Trainer, train

pytestmark = pytest.mark.timeout(1800)  # spawned processes on a loaded 2-core machine (module fixture: ~36 s loaded)

STOP_AT = 7  # the interrupted 2-process run stops mid-epoch 1 (10 batches per epoch)


def _configs(data: Path, split: Path) -> dict[str, dict[str, object]]:
    """Tiny runs: 160 training images of 16 identities at 16 px, 2 epochs of 10 global batches of 16.
    Frozen batch norm: per-process BN statistics would (rightly) differ from the 1-process run. The
    classification run validates every epoch on the split's 6 val identities (rank 0 validates)."""
    base: dict[str, object] = dict(data=str(data), split=str(split), input_size=16, embedding_size=16, epochs=2,
                                   batch_size=16, lr=0.05, threads=1, seed=3, batchnorm="frozen",
                                   val_protocol="none", schedule="constant")
    return {
        # margin classification loss: replicated class weights, train accuracy from logits
        "cls": dict(base, loss="arcface", val_protocol="auto"),
        # metric loss with mining over the gathered global batch and a learnable beta (loss parameter)
        "met": dict(base, loss="margin", mining="semihard", pk=[4, 4], lr=0.02, augment={"flip": 0.5, "shift": 0.1}),
    }


def _ddp_jobs(root: str) -> None:
    """Runs in each of the 2 spawned processes."""
    root_p = Path(root)
    cfgs = json.loads((root_p / "configs.json").read_text())
    cache = root_p / "cache"
    for name, cfg in cfgs.items():
        make_trainer(TrainConfig(**cfg), root_p / f"{name}-2p", show_progress=False, cache_dir=cache).fit()
    met = TrainConfig(**cfgs["met"])
    make_trainer(met, root_p / "met-2p-resumed", show_progress=False, cache_dir=cache).fit(stop_after_steps=STOP_AT)
    make_trainer(met, root_p / "met-2p-resumed", resume=True, show_progress=False, cache_dir=cache).fit()


@pytest.fixture(scope="module")
def ddp(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, object]]]:
    root = tmp_path_factory.mktemp("ddp")
    images = load_image_set(embedded_data)
    split = root / "split.json"
    write_split(split, split_identities(images.keys, images.identities, counts=(16, 6, 0), seed=0, name="ddp"))
    cfgs = _configs(embedded_data, split)
    (root / "configs.json").write_text(json.dumps(cfgs))
    spawn(_ddp_jobs, 2, (str(root),), env={"OMP_NUM_THREADS": "1"})
    return root, cfgs


def _history(run: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def _state(run: Path) -> dict[str, object]:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def _max_weight_diff(a: dict[str, object], b: dict[str, object]) -> float:
    ma, mb = a["method"], b["method"]
    assert isinstance(ma, dict) and isinstance(mb, dict) and ma.keys() == mb.keys()
    return max(float((ma[k].double() - mb[k].double()).abs().max()) for k in ma
               if torch.is_tensor(ma[k]) and ma[k].dtype.is_floating_point)


@pytest.mark.parametrize("name", ["cls", "met"])
def test_two_processes_equal_one_process_with_the_same_global_batch(ddp, name: str) -> None:
    root, cfgs = ddp
    torch.set_num_threads(1)
    one = train(TrainConfig(**cfgs[name]), root / f"{name}-1p", show_progress=False, cache_dir=root / "cache")
    two = root / f"{name}-2p"
    h1 = [r for r in one.history if r["kind"] == "epoch"]
    h2 = [r for r in _history(two) if r["kind"] == "epoch"]
    assert len(h1) == len(h2) == 2
    for a, b in zip(h1, h2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a["loss"], b["loss"])
        assert a["components"].keys() == b["components"].keys()
        for k in a["components"]:
            assert b["components"][k] == pytest.approx(a["components"][k], rel=1e-4)
        assert b["images"] == a["images"]  # img/s counts the images of both processes
        assert b["train_accuracy"] == a["train_accuracy"]  # global counts (None for the metric loss)
        assert (a["val"] is None) == (b["val"] is None) == (name == "met")
    if name == "met":  # the gathered global batch: the miner saw what the 1-process miner saw
        for k in ("n_pairs", "n_pos_pairs", "n_neg_pairs"):
            assert [r["stats"][k] for r in h2] == [r["stats"][k] for r in h1]
    s1, s2 = _state(root / f"{name}-1p"), _state(two)
    assert _max_weight_diff(s1, s2) < 1e-3
    if name == "cls":  # rank 0's validation record = validating the final 2-process weights in one process
        check = Trainer(TrainConfig(**cfgs[name]), root / "cls-check", show_progress=False, cache_dir=root / "cache")
        check.method.load_state_dict(s2["method"])
        val = check._validate()
        assert val is not None and val["n_genuine"] > 0 and (two / "checkpoints" / "best.pt").is_file()
        assert {k: v for k, v in val.items() if k != "time_s"} == {k: v for k, v in h2[-1]["val"].items()
                                                                  if k != "time_s"}
    if name == "met":  # the loss's own parameter: its gradient is not multiplied by the world size
        b1, b2 = float(s1["method"]["loss.beta"]), float(s2["method"]["loss.beta"])
        assert b1 != pytest.approx(1.2, abs=1e-3) and b2 == pytest.approx(b1, abs=1e-5)
    assert s2["world_size"] == 2 and s1["world_size"] == 1
    resolved = json.loads((two / "config.json").read_text())["resolved"]
    assert resolved["world_size"] == 2


def test_resumed_two_process_run_equals_the_uninterrupted_one(ddp) -> None:
    root, cfgs = ddp
    full, resumed = root / "met-2p", root / "met-2p-resumed"
    untimed = [[{k: v for k, v in r.items() if k not in ("time_s", "img_per_s")} for r in _history(run)]
               for run in (full, resumed)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2
    assert _max_weight_diff(_state(full), _state(resumed)) == 0.0
    # one process cannot continue a 2-process run
    with pytest.raises(InputError, match="2 process"):
        Trainer(TrainConfig(**cfgs["met"]), resumed, resume=True, show_progress=False, cache_dir=root / "cache")


def _train_cli(data: Path, split: Path, run: Path, epochs: int) -> list[str]:
    return ["train", "--data", str(data), "--split", str(split), "--loss", "arcface", "--input-size", "16",
            "--embedding-size", "16", "--batch-size", "16", "--lr", "0.05", "--threads", "1", "--seed", "3",
            "--batchnorm", "frozen", "--val-protocol", "none", "--schedule", "constant", "--epochs", str(epochs),
            "-o", str(run), "--quiet"]


def test_torchrun_then_nproc_resume_continue_the_same_run(ddp, tmp_path: Path, capsys) -> None:
    """`torchrun -m fvtool train` for epoch 1, then `fvtool train --nproc 2 --resume --epochs 2`: the same
    curve and weights as the library's uninterrupted 2-process run of 2 epochs (constant lr)."""
    from fvtool.cli import main

    root, cfgs = ddp
    run = tmp_path / "cli-run"
    data, split = Path(str(cfgs["cls"]["data"])), Path(str(cfgs["cls"]["split"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FVTOOL_WORKSPACE": str(tmp_path / "fvwork")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fvtool",
           *_train_cli(data, split, run, 1)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)  # 65 s at load average 12
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("training summary") == 1  # rank 0 alone speaks
    assert _state(run)["world_size"] == 2 and len(_history(run)) == 1

    with pytest.raises(SystemExit) as e:
        main(["train", "--nproc", "2", "--resume", "-o", str(run), "--epochs", "2", "--quiet"])
    assert e.value.code == 0
    h, ref = _history(run), _history(root / "cls-2p")
    assert [r["loss"] for r in h] == pytest.approx([r["loss"] for r in ref], rel=1e-6)
    assert _max_weight_diff(_state(run), _state(root / "cls-2p")) < 1e-5

    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # one process cannot continue it
        main(["train", "--resume", "-o", str(run), "--epochs", "3", "--quiet"])
    assert e.value.code == 3
    assert "2 process" in capsys.readouterr().err


# ---- pieces, without processes --------------------------------------------------------------

def test_rank_slices_cover_the_global_batch_exactly() -> None:
    idx = np.arange(100, 116)
    parts = [slice_sampled(SampledBatch(idx), r, 4).indices for r in range(4)]
    assert np.array_equal(np.concatenate(parts), idx)
    pairs = SampledBatch(np.arange(8), np.array([True, False, True, False]))  # left 0-3, right 4-7
    p0, p1 = slice_sampled(pairs, 0, 2), slice_sampled(pairs, 1, 2)
    assert p0.indices.tolist() == [0, 1, 4, 5] and p1.indices.tolist() == [2, 3, 6, 7]
    assert p0.same.tolist() == [True, False] and p1.same.tolist() == [True, False]
    with pytest.raises(InputError, match="divisible by 3"):
        slice_sampled(SampledBatch(idx), 0, 3)


def test_rank_loaders_reproduce_the_augmented_global_batch() -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    rows, labels = np.arange(40), np.repeat(np.arange(10), 4)
    tf = BatchTransform(Normalisation.named("pm1"), AugmentConfig(flip=0.5, shift=0.1, brightness=0.2))
    full = BatchLoader(array, rows, labels, tf, torch.device("cpu"), seed=5, prefetch=0)
    sb = SampledBatch(rng.permutation(40)[:12])
    want = full.make(sb, epoch=1, index=3)
    got = [RankBatchLoader(full, r, 3).make(sb, epoch=1, index=3) for r in range(3)]
    assert torch.equal(torch.cat([g.images for g in got]), want.images)
    assert torch.equal(torch.cat([g.labels for g in got]), want.labels)
    plain = BatchLoader(array, rows, labels, BatchTransform(Normalisation.named("pm1"), None), torch.device("cpu"),
                        seed=5, prefetch=0)
    pairs = SampledBatch(np.arange(8), np.array([True, True, False, False]))
    want = plain.make(pairs, 0, 0)
    got = [RankBatchLoader(plain, r, 2).make(pairs, 0, 0) for r in range(2)]  # no augmentation: slice first
    assert torch.equal(got[1].images, torch.cat([want.images[2:4], want.images[6:8]]))
    assert torch.equal(slice_batch(want, 1, 2).images, got[1].images) and got[1].same.tolist() == [False, False]


def test_batchnorm_modes() -> None:
    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 14 * 14, 8),
                             nn.BatchNorm1d(8))

    frozen = apply_batchnorm_mode(net(), "frozen", torch.device("cpu"))
    keys = list(net().state_dict())
    frozen.train()
    assert frozen.training and not frozen[1].training and not frozen[4].training
    before = frozen[1].running_mean.clone()
    y = frozen(torch.randn(5, 3, 16, 16))
    assert torch.equal(frozen[1].running_mean, before)  # running statistics are not updated
    y.sum().backward()
    assert frozen[1].weight.grad is not None and list(frozen.state_dict()) == keys
    with pytest.raises(InputError, match="needs CUDA"):
        apply_batchnorm_mode(net(), "sync", torch.device("cpu"))
    plain = net()
    params = [id(p) for p in plain.parameters()]
    synced = apply_batchnorm_mode(plain, "sync", torch.device("cuda"))  # conversion only; no kernel runs
    assert isinstance(synced[1], nn.SyncBatchNorm) and isinstance(synced[4], nn.SyncBatchNorm)
    assert [id(p) for p in synced.parameters()] == params and list(synced.state_dict()) == keys
    with pytest.raises(InputError, match="batchnorm"):
        TrainConfig(batchnorm="group")


def test_environment_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    assert env_world() is None and init_distributed("cpu") is None
    assert env_world({"RANK": "3", "WORLD_SIZE": "4"}) == (3, 4, 3)
    assert env_world({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == (1, 4, 0)
    for bad, msg in (({"RANK": "0"}, "together"), ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK < WORLD_SIZE"),
                     ({"RANK": "x", "WORLD_SIZE": "2"}, "not an integer")):
        with pytest.raises(InputError, match=msg):
            env_world(bad)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu") is None  # a job of one process runs as without torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="MASTER_ADDR, MASTER_PORT"):
        init_distributed("cpu")
    assert device_for("cpu", 1) == torch.device("cpu") and backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == "nccl"
    if not torch.cuda.is_available():
        assert device_for("auto", 0) == torch.device("cpu")
        with pytest.raises(InputError, match="no CUDA device"):
            device_for("cuda", 0)
