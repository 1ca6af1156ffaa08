"""`--log tensorboard`: the event files of a tiny run, read back with tensorboard's own EventAccumulator,
carry the same numbers as history.jsonl (loss components, lr, train accuracy, img/s, every validation
metric) and the validation DET figure; `--log none` writes nothing; resume purges and continues."""

from __future__ import annotations

from pathlib import Path

import pytest

from fvtool.data.dataset import load_image_set
from fvtool.errors import InputError
from fvtool.protocols.splits import split_identities, write_split
from fvtool.training import tensorboard_log
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


@pytest.fixture(scope="module")
def split(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = load_image_set(embedded_data)
    p = tmp_path_factory.mktemp("split") / "tiny.json"
    write_split(p, split_identities(images.keys, images.identities, counts=(16, 6, 0), seed=0, name="tiny"))
    return p


def config(data: Path, split: Path, **kw: object) -> TrainConfig:
    base: dict = dict(data=str(data), split=str(split), input_size=16, embedding_size=16, epochs=2, batch_size=16,
                      lr=0.05, threads=1, seed=3, loss="magface", scale=16.0, eval_every="1epoch")
    return TrainConfig(**(base | kw))


def read_events(folder: Path):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0,
                                                                        event_accumulator.IMAGES: 0})
    acc.Reload()
    return acc


def test_events_match_history(embedded_data: Path, split: Path, tmp_path: Path) -> None:
    result = train(config(embedded_data, split, log="tensorboard"), tmp_path / "run", show_progress=False,
                   cache_dir=tmp_path / "cache")
    acc = read_events(tmp_path / "run" / "tb")
    tags = set(acc.Tags()["scalars"])
    epochs = [r for r in result.history if r["kind"] == "epoch"]
    assert {"train/loss", "train/ce", "train/g", "train/lr", "train/accuracy", "train/img_per_s", "step/loss",
            "step/lr", "stats/target_angle_deg"} <= tags
    val_keys = {k for k, v in epochs[-1]["val"].items() if isinstance(v, int | float)}
    assert {"accuracy", "eer", "auc", "frr@far=0.01"} <= val_keys and {f"val/{k}" for k in val_keys} <= tags

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert series("train/loss") == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in epochs]
    assert series("train/g") == [(r["step"], pytest.approx(r["components"]["g"], rel=1e-6)) for r in epochs]
    assert series("val/eer") == [(r["step"], pytest.approx(r["val"]["eer"], rel=1e-6)) for r in epochs]
    assert series("train/accuracy") == [(r["step"], pytest.approx(r["train_accuracy"], rel=1e-6)) for r in epochs]
    assert [s for s, _ in series("step/loss")] == list(range(1, result.steps + 1))
    images = acc.Images("val/det")
    assert [i.step for i in images] == [r["step"] for r in epochs]
    assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[0].width > 100

    # resume with more epochs: the events continue from the checkpoint's step (purge_step), no fork
    more = train(config(embedded_data, split, log="tensorboard", epochs=3), tmp_path / "run", resume=True,
                 show_progress=False, cache_dir=tmp_path / "cache")
    steps = [s for s, _ in series_of(read_events(tmp_path / "run" / "tb"), "train/loss")]
    assert steps == [r["step"] for r in more.history if r["kind"] == "epoch"]


def series_of(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_log_none_and_auto_without_the_package(embedded_data: Path, split: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    train(config(embedded_data, split, log="none", epochs=1), tmp_path / "off", show_progress=False,
          cache_dir=tmp_path / "cache")
    assert (tmp_path / "off" / "history.jsonl").is_file() and not (tmp_path / "off" / "tb").exists()
    monkeypatch.setenv("FVTOOL_AUTO_TENSORBOARD", "1")
    assert tensorboard_log.wants_tensorboard("auto")
    monkeypatch.setattr(tensorboard_log, "tensorboard_available", lambda: False)
    assert not tensorboard_log.wants_tensorboard("auto")
    with pytest.raises(InputError, match="tensorboard package is not installed"):
        tensorboard_log.wants_tensorboard("tensorboard")
    with pytest.raises(InputError, match="log"):
        config(embedded_data, split, log="wandb")
