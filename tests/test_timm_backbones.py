"""`--backbone timm:<name>`: timm's trunk (pretrained=False) with fvtool's embedding head, built and
run with every network connection refused, deterministic under a seed, unknown names refused."""

from __future__ import annotations

import socket

import pytest
import torch

from fvtool.errors import InputError
from fvtool.models.registry import build_backbone, get_backbone_spec

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection (a weights download) fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", ["timm:seresnet18", "timm:convnext_atto"])
def test_build_forward_no_network(no_network: None, name: str) -> None:
    import timm

    torch.manual_seed(0)
    net = build_backbone(name, embedding_size=32, input_size=64)
    ref = timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=0, global_pool="")
    n_trunk = sum(p.numel() for p in ref.parameters())
    c = ref.num_features
    assert sum(p.numel() for p in net.parameters()) == n_trunk + c * 32 + 2 * 32  # trunk + FC(no bias) + BN1d
    net.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 32) and torch.isfinite(y).all()
    # deterministic under a seed: the same seed builds the same weights
    torch.manual_seed(0)
    again = build_backbone(name, embedding_size=32, input_size=64).eval()
    with torch.no_grad():
        assert torch.equal(again(x), y)


def test_spec_options_and_summary() -> None:
    spec = get_backbone_spec("timm:seresnet18")
    assert spec.options() == {"head": "pool", "dropout": 0.0, "drop_path_rate": 0.0}
    assert "pretrained=False" in spec.summary


def test_unknown_timm_name_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"not a timm model.*seresnet18"):
        get_backbone_spec("timm:seresnet18x")
    with pytest.raises(InputError, match="does not take option"):
        build_backbone("timm:seresnet18", embedding_size=8, input_size=64, stem="small")
