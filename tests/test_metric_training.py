"""Metric losses, miners, the siamese verifier, fine-tuning and the collapse alarm through the real
training engine and CLI, on the embedded LFW subset at 32 px (a few seconds per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_exit import run_cli as cli

from fvtool.errors import EXIT_CHECK_FAILED, InputError
from fvtool.losses.margin import MarginLoss
from fvtool.mining.registry import resolve_miner_name
from fvtool.settings import EMBEDDED_DATA
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train
from fvtool.training.methods import build_backbone_for

pytestmark = pytest.mark.slow

TINY = dict(data=str(EMBEDDED_DATA), input_size=32, embedding_size=16, epochs=1, cap=2, pk=(8, 2), batch_size=16,
            eval_every="0", val_protocol="none", threads=1, seed=0, lr=0.01)
CLI_TINY = ["--data", str(EMBEDDED_DATA), "--input-size", "32", "--embedding-size", "16", "--epochs", "1",
            "--cap", "2", "--pk", "8", "2", "--val-protocol", "none", "--threads", "1", "--lr", "0.01", "--quiet",
            "--eval-every", "0"]


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace for the CLI tests, whose image cache the library runs share (decoded once)."""
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def cache_dir(cli_workspace: Path) -> Path:
    return cli_workspace / "cache"


def run(tmp_path: Path, cache_dir: Path, name: str, **kw: object):
    cfg = TrainConfig(**{**TINY, **kw})
    return train(cfg, tmp_path / name, show_progress=False, cache_dir=cache_dir)


# hard-margin and circle share these code paths (margin's, contrastive's); their formulas are unit-tested
@pytest.mark.parametrize("loss,mining", [("triplet", "random"), ("contrastive", "all"), ("margin", None),
                                         ("npair", None), ("supcon", None)])
def test_metric_loss_trains_through_the_engine(tmp_path: Path, cache_dir: Path, loss: str, mining: str | None) -> None:
    r = run(tmp_path, cache_dir, loss, loss=loss, mining=mining)
    epoch = [h for h in r.history if h["kind"] == "epoch"][-1]
    assert r.stopped == "completed" and r.steps > 0
    assert torch.isfinite(torch.tensor(epoch["loss"]))
    assert 0.0 <= epoch["stats"]["active_fraction"] <= 1.0
    col = epoch["collapse"]
    assert col["collapsed"] is False and col["spread"] > 0.3  # the monitor ran and saw a spread-out embedding
    method = load_trained_method(r.run_dir, prefer="last")[0]
    if mining is not None:
        assert method.loss.miner.name == resolve_miner_name(mining)
    if loss == "margin":  # beta is a learned parameter: the optimiser moved it
        assert isinstance(method.loss, MarginLoss)
        assert float(method.loss.beta.detach()[0]) != pytest.approx(1.2, abs=1e-7)


def test_cli_triplet_with_hard_mining(monkeypatch: pytest.MonkeyPatch, cli_workspace: Path) -> None:
    monkeypatch.setenv("FVTOOL_WORKSPACE", str(cli_workspace))
    assert cli("train", "--loss", "triplet", "--mining", "hard", "--name", "trip", *CLI_TINY) == 0
    run_dir = cli_workspace / "runs" / "trip"
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg = cfg.get("config", cfg)
    assert cfg["loss"] == "triplet" and cfg["mining"] == "hard"
    hist = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert any("collapse" in h for h in hist)
    # --mining on a loss that builds its own tuples: a clear input error
    assert cli("train", "--loss", "supcon", "--mining", "hard", "--name", "bad", *CLI_TINY) == 3


def test_collapse_alarm_stops_the_run_with_exit_code_5(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       cli_workspace: Path) -> None:
    """Wiring test: a spread threshold no embedding can reach marks every epoch as collapsed; the run
    stops after `collapse_patience` epochs with the monitor's message, and the CLI exits with 5."""
    monkeypatch.setenv("FVTOOL_WORKSPACE", str(cli_workspace))
    (tmp_path / "exp.toml").write_text("collapse_min_spread = 10.0\ncollapse_patience = 1\n")
    code = cli("train", "--loss", "triplet", "--config", str(tmp_path / "exp.toml"), "--name", "c",
               *CLI_TINY[:CLI_TINY.index("--epochs")], "--epochs", "3", *CLI_TINY[CLI_TINY.index("--epochs") + 2:])
    assert code == EXIT_CHECK_FAILED
    hist = [json.loads(line) for line in (cli_workspace / "runs" / "c" / "history.jsonl").read_text().splitlines()]
    epochs = [h for h in hist if h.get("kind") == "epoch"]
    assert len(epochs) == 1 and epochs[0]["collapse"]["stop"]
    assert "Stopped after 1 collapsed epoch" in epochs[0]["collapse"]["message"]


def test_siamese_bce_verifier_trains_on_pair_batches(tmp_path: Path, cache_dir: Path) -> None:
    r = run(tmp_path, cache_dir, "siamese", loss="siamese-bce", pk=None, batch_size=32, epochs=2, lr=0.05,
            method_options={"head": "linear"})
    epochs = [h for h in r.history if h["kind"] == "epoch"]
    assert len(epochs) == 2 and epochs[0]["stats"]["n_pairs"] == 16
    assert 0.0 <= epochs[-1]["stats"]["pair_accuracy"] <= 1.0
    method, cfg, _, _ = load_trained_method(r.run_dir, prefer="last")
    assert method.sampler_kind == "pairs" and cfg.loss == "siamese-bce"
    e = torch.nn.functional.normalize(torch.randn(6, 16), dim=1)
    p = method.head_scores(e, e.flip(0))
    same = method.head_scores(e, e)
    assert p.shape == (6,) and bool(torch.all((p >= 0) & (p <= 1)))
    assert bool(torch.all(same >= p))  # identical embeddings: |e1 - e2| = 0, the most "same" input
    with pytest.raises(InputError, match="does not apply"):
        run(tmp_path, cache_dir, "bad", loss="siamese-bce", mining="hard", pk=None)


def test_fine_tuning_a_softmax_model_with_triplet_loss(tmp_path: Path, cache_dir: Path) -> None:
    """--init-from: the triplet run starts from the softmax run's embedder (at a tiny lr it stays there)."""
    base = run(tmp_path, cache_dir, "softmax", loss="softmax", pk=None, batch_size=32, lr=0.1)
    tuned = run(tmp_path, cache_dir, "tuned", loss="triplet", mining="semihard", init_from=str(base.run_dir),
                lr=1e-9, weight_decay=0.0)
    assert any("initialised the embedder from" in n for n in tuned.notes)
    a = load_trained_method(base.run_dir, prefer="last")[0].embedder.state_dict()
    b = load_trained_method(tuned.run_dir, prefer="last")[0].embedder.state_dict()
    torch.manual_seed(0)  # the engine's seed: what the triplet run would have started from without --init-from
    c = build_backbone_for(TrainConfig(**{**TINY, "loss": "triplet"})).state_dict()
    weights = [k for k, v in a.items() if v.dtype.is_floating_point and v.ndim > 1]
    assert weights
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in weights)
    assert not all(torch.allclose(a[k], c[k], atol=1e-6) for k in weights)


def test_resume_mid_epoch_draws_the_same_random_tuples(tmp_path: Path, cache_dir: Path) -> None:
    """The distance-weighted miner's generator state is saved in the checkpoint, so an interrupted and
    resumed run ends with exactly the weights of the uninterrupted one."""
    cfg = TrainConfig(**{**TINY, "loss": "margin", "epochs": 1})
    whole = train(cfg, tmp_path / "whole", show_progress=False, cache_dir=cache_dir)
    part = train(cfg, tmp_path / "part", show_progress=False, cache_dir=cache_dir, stop_after_steps=7)
    assert part.stopped == "step limit"
    resumed = train(cfg, tmp_path / "part", resume=True, show_progress=False, cache_dir=cache_dir)
    assert resumed.steps == whole.steps
    a = load_trained_method(whole.run_dir, prefer="last")[0].state_dict()
    b = load_trained_method(resumed.run_dir, prefer="last")[0].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
