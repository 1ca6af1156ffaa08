"""`--method joint`: classification loss + weight x metric loss on the same batch (study 3's joint
objective): the loss equals the two losses recomputed separately, bad options are clear errors,
and a tiny run trains with it and logs both components."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fvtool.cli import main
from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.losses.registry import build_loss
from fvtool.training.config import TrainConfig
from fvtool.training.methods import Batch, MethodContext, build_method

pytestmark = pytest.mark.usefixtures("one_thread")
SUBSET = Path(__file__).parents[1] / "data" / "lfw-subset"


def _ctx(**cfg: object) -> MethodContext:
    config = TrainConfig(backbone="resnet_small", embedding_size=8, input_size=32,
                         backbone_options={"widths": [8, 8, 8], "blocks": [1, 1, 1]}, **cfg)
    return MethodContext(config, num_classes=4, normalisation=Normalisation.named("pm1"))


def test_joint_loss_is_cls_plus_weight_times_metric() -> None:
    torch.manual_seed(0)
    method = build_method(_ctx(loss="softmax", method="joint", mining="batch-all",
                               method_options={"metric": "triplet", "weight": 0.5,
                                               "metric_options": {"margin": 0.3}}))
    assert method.sampler_kind == "pk" and method.metric_family
    images = torch.randn(8, 3, 32, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    method.eval()  # BN running statistics: the same embeddings in both computations
    out = method.training_step(Batch(images, labels))
    emb = method.backbone(images).float()
    cls = method.loss.classification(emb, labels).loss
    tri = build_loss("triplet", margin=0.3, miner="batch-all")(emb, labels).loss
    assert out.loss.item() == pytest.approx((cls + 0.5 * tri).item(), rel=1e-6)
    assert {"ce", "triplet"} <= set(out.components) and out.logits is not None


@pytest.mark.parametrize(("cfg", "match"), [
    ({"loss": "softmax", "method": "joint"}, "name the metric loss"),
    ({"loss": "triplet", "method": "joint", "method_options": {"metric": "triplet"}}, "is a metric loss"),
    ({"loss": "softmax", "method": "joint", "method_options": {"metric": "arcface"}}, "is a classification loss"),
    ({"loss": "softmax", "method": "joint", "method_options": {"metric": "triplet", "w": 1}}, "unknown method option"),
])
def test_joint_option_errors(cfg: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        build_method(_ctx(**cfg))


def test_joint_run_trains_and_logs_both_terms(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["--workspace", str(tmp_path / "ws"), "train", "--data", str(SUBSET), "--split", "none",
              "--val-protocol", "none", "--epochs", "1", "--input-size", "32", "--crop", "0.5", "--cap", "2",
              "--loss", "arcface", "--method", "joint", "--method-opt", "metric=triplet", "--mining", "semihard",
              "--pk", "16", "2", "--batch-size", "32", "--embedding-size", "16", "--backbone-opt", "widths=[8,16,16]",
              "--backbone-opt", "blocks=[1,1,1]", "--threads", "1", "-q", "-o", str(run)])
    assert e.value.code == 0
    epoch = next(r for r in map(json.loads, (run / "history.jsonl").read_text().splitlines()) if r["kind"] == "epoch")
    assert "triplet" in json.dumps(epoch) and "ce" in json.dumps(epoch)
    assert json.loads((run / "config.json").read_text())["resolved"]["method"] == "joint"
