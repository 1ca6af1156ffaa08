"""The collapse alarm fires on a model driven to collapse and stays quiet on a healthy run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from fvtool.losses.base import LossOutput
from fvtool.losses.registry import build_loss
from fvtool.training.collapse import CollapseMonitor, embedding_spread


def clusters(seed: int, separation: float, n_classes: int = 8, per_class: int = 8,
             dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian identities; `separation` is the spread of the class centres relative to the noise."""
    g = torch.Generator().manual_seed(seed)
    centres = separation * torch.randn(n_classes, dim, generator=g)
    x = centres.repeat_interleave(per_class, 0) + torch.randn(n_classes * per_class, dim, generator=g)
    return x, torch.arange(n_classes).repeat_interleave(per_class)


def run(loss_name: str, epochs: int, lr: float, monitor: CollapseMonitor, separation: float, adam: bool = False,
        **loss_opts: object) -> list[dict]:
    """A small but real training loop: linear+ReLU+linear embedder, 4 steps of 32 images per epoch."""
    torch.manual_seed(0)
    x, y = clusters(0, separation)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    loss_fn = build_loss(loss_name, **loss_opts)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.Adam(params, lr=lr) if adam else torch.optim.SGD(params, lr=lr)
    records = []
    for _ in range(epochs):
        for step in range(4):
            idx = torch.arange(step * 16, step * 16 + 16)  # 4 identities x 8 images per batch
            idx = torch.cat([idx, (idx + 32) % 64])
            emb = model(x[idx])
            out = loss_fn(emb, y[idx])
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            monitor.update(emb.detach(), out)
        records.append(monitor.end_epoch())
        if monitor.should_stop:
            break
    return records


def test_spread_statistics() -> None:
    same = torch.ones(10, 4)
    spread, dim_std, norm = embedding_spread(same)
    assert spread == pytest.approx(0.0, abs=1e-6) and dim_std == pytest.approx(0.0, abs=1e-6)
    assert norm == pytest.approx(2.0)
    ortho = torch.eye(6)
    assert embedding_spread(ortho)[0] == pytest.approx(math.sqrt(2))


def test_alarm_fires_and_stops_on_a_model_driven_to_collapse(capsys: pytest.CaptureFixture[str]) -> None:
    """FaceNet's warning reproduced: hardest-triplet (batch-hard) mining on barely separable identities
    with a high learning rate drives every embedding into one small cap (loss stuck near the margin)."""
    monitor = CollapseMonitor(patience=2)
    records = run("triplet", epochs=30, lr=0.05, adam=True, monitor=monitor, separation=0.3, miner="hard")
    assert monitor.should_stop, records[-1]
    collapsed = [r for r in records if r["collapsed"]]
    assert len(collapsed) == 2 and records[-1]["stop"] and records[-2]["collapsed"] and not records[-2]["stop"]
    assert records[0]["collapsed"] is False  # a fresh network is spread out
    assert "collapsed" in monitor.reason and "--lr" in monitor.reason
    assert "COLLAPSE WARNING" in capsys.readouterr().err


def test_alarm_fires_on_a_constant_output_model() -> None:
    """A network that ignores its input: all embeddings equal, every triplet active (loss = margin)."""
    monitor = CollapseMonitor(patience=1)
    loss_fn = build_loss("triplet", miner="hard")
    for _ in range(3):
        emb = torch.randn(1, 8).expand(16, 8)
        monitor.update(emb, loss_fn(emb, torch.arange(4).repeat_interleave(4)))
    rec = monitor.end_epoch(1)
    assert rec["collapsed"] and rec["stop"] and rec["active_fraction"] == 1.0 and rec["spread"] < 1e-3


def test_alarm_stays_quiet_on_a_healthy_run(capsys: pytest.CaptureFixture[str]) -> None:
    monitor = CollapseMonitor(patience=1)
    records = run("contrastive", epochs=12, lr=0.1, monitor=monitor, separation=3.0, margin=1.0)
    assert not monitor.should_stop and not any(r["collapsed"] for r in records)
    assert min(r["spread"] for r in records) > 0.5
    assert records[-1]["active_fraction"] < records[0]["active_fraction"]  # it learned
    assert "COLLAPSE" not in capsys.readouterr().err


def test_vanishing_outputs_count_as_collapse_and_state_survives_resume() -> None:
    m = CollapseMonitor(patience=2, quiet=True)
    m.update(torch.randn(8, 4) * 1e-9, {"active_fraction": 1.0})
    assert m.end_epoch(1)["collapsed"]
    m2 = CollapseMonitor(patience=2, quiet=True)
    m2.load_state_dict(m.state_dict())
    m2.update(torch.randn(8, 4) * 1e-9, None)
    assert m2.end_epoch(2)["stop"] and m2.should_stop


def test_no_active_tuple_is_reported_but_not_a_collapse() -> None:
    m = CollapseMonitor(quiet=True)
    m.update(torch.randn(8, 4), LossOutput(torch.tensor(0.0), stats={"active_fraction": 0.0}))
    rec = m.end_epoch(1)
    assert not rec["collapsed"] and "no active" in rec["message"]
