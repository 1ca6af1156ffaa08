"""Training engine: config files, schedules vs torch, decay groups, bit-exact resume, learning on held-out
identities, selection logic, clear errors for unknown combinations, the `fvtool train` CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fvtool.data.cache import CacheSpec, build_cache
from fvtool.data.dataset import load_image_set
from fvtool.data.transforms import AugmentConfig, Normalisation
from fvtool.errors import CheckFailed, InputError
from fvtool.inference import embed_rows
from fvtool.protocols.splits import split_identities, write_split
from fvtool.training.checkpoint import load_checkpoint, load_trained_method
from fvtool.training.config import TrainConfig, config_from_sources, metric_key, parse_every, parse_metric
from fvtool.training.engine import Trainer, train
from fvtool.training.evaluation import verification_metrics
from fvtool.training.methods import MethodContext, build_method
from fvtool.training.schedules import LRSchedule, build_optimizer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for the module's runs (the per-test workspace would decode again)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def splits(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    images = load_image_set(embedded_data)
    folder = tmp_path_factory.mktemp("splits")
    out = {}
    for name, counts in {"tiny": (16, 6, 0), "main": (118, 0, 40)}.items():
        p = folder / f"{name}.json"
        write_split(p, split_identities(images.keys, images.identities, counts=counts, seed=0, name=name))
        out[name] = p
    return out


def tiny_config(data: Path, split: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(data=str(data), split=str(split), input_size=16, embedding_size=16, epochs=2,
                                   batch_size=16, lr=0.05, threads=1, seed=3)
    base.update(kw)
    return TrainConfig(**base)


# ---- config ------------------------------------------------------------------------------------

def test_toml_config_defaults_file_and_cli_precedence(tmp_path: Path) -> None:
    f = tmp_path / "exp.toml"
    f.write_text('loss = "arcface"\nepochs = 7\nbatch-size = 64\nmargin = 0.4\npk = [8, 4]\n'
                 '[augment]\nflip = 0.5\nshift = 0.1\n[loss_options]\nfallback = "easy"\n')
    cfg = config_from_sources(f, {"epochs": 3, "lr": None})
    assert (cfg.loss, cfg.epochs, cfg.batch_size, cfg.margin, cfg.pk) == ("arcface", 3, 64, 0.4, (8, 4))
    assert cfg.augment == AugmentConfig(flip=0.5, shift=0.1) and cfg.loss_options == {"fallback": "easy"}
    assert cfg.lr == TrainConfig().lr  # not given anywhere: the default
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    f.write_text('loss = "arcface"\nlearning_rate = 0.1\n')
    with pytest.raises(InputError, match="learning_rate"):
        config_from_sources(f, {})
    f.write_text('optimizer = "rmsprop"\n')
    with pytest.raises(InputError, match="optimizer"):
        config_from_sources(f, {})
    f.write_text("epochs = [\n")
    with pytest.raises(InputError, match="not valid TOML"):
        config_from_sources(f, {})


def test_eval_every_and_metric_spellings() -> None:
    assert parse_every("2") == (2, "epoch") and parse_every("1epoch") == (1, "epoch")
    assert parse_every("500steps") == (500, "step") and parse_every("0") == (0, "epoch")
    assert parse_metric("frr@far=1e-4") == ("frr@far", False, 1e-4) and metric_key("FRR@FAR=1e-4") == "frr@far=0.0001"
    assert parse_metric("accuracy")[1] is True and parse_metric("eer")[1] is False
    with pytest.raises(InputError):
        parse_every("every epoch")
    with pytest.raises(InputError):
        parse_metric("f1")


# ---- schedules and optimiser groups ----------------------------------------------------------------

def _torch_lrs(make: object, steps: int) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    sch = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


@pytest.mark.parametrize("kind", ["cosine", "onecycle", "step"])
def test_schedules_equal_torch_schedulers(kind: str) -> None:
    cfg = TrainConfig(schedule=kind, epochs=5, lr=0.1, milestones=[2, 4], gamma=0.1)
    ours = LRSchedule(cfg, steps_per_epoch=10)
    makers = {
        "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=50),
        "onecycle": lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=50, cycle_momentum=False),
        "step": lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[20, 40], gamma=0.1),
    }
    ref = _torch_lrs(makers[kind], 50)
    np.testing.assert_allclose([0.1 * ours.factor(t) for t in range(50)], ref, rtol=1e-9, atol=1e-15)


def test_warmup_and_plateau_factors() -> None:
    s = LRSchedule(TrainConfig(schedule="cosine", epochs=4, warmup_epochs=1), steps_per_epoch=10)
    assert [round(s.factor(t), 6) for t in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert s.factor(39) < 0.01
    p = LRSchedule(TrainConfig(schedule="plateau", epochs=4), steps_per_epoch=10)
    assert p.factor(25) == 1.0
    p.drops = 2
    assert math.isclose(p.factor(25), 0.01)


def test_weight_decay_only_on_weights_and_center_lr_group(embedded_data: Path) -> None:
    cfg = TrainConfig(loss="center", input_size=32, embedding_size=16, loss_options={"center_lr": 0.5})
    method = build_method(MethodContext(cfg, 5, Normalisation()))
    groups = method.param_groups(5e-4)
    by_name = {g["name"]: g for g in groups}
    assert all(p.ndim > 1 for p in by_name["decay"]["params"]) and by_name["decay"]["weight_decay"] == 5e-4
    assert all(p.ndim <= 1 for p in by_name["no_decay"]["params"]) and by_name["no_decay"]["weight_decay"] == 0
    centers = [g for g in groups if g["name"] not in ("decay", "no_decay")]
    assert centers and centers[0]["lr"] == 0.5
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len([p for p in method.parameters() if p.requires_grad])
    opt = build_optimizer(groups, cfg)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["nesterov"]
    assert [g["base_lr"] for g in opt.param_groups][-1] == 0.5


# ---- errors for combinations that do not fit ----------------------------------------------------------

@pytest.mark.parametrize(("kw", "match"), [
    ({"loss": "softmax", "recon": "bce"}, "--recon does not apply to --loss softmax"),
    ({"loss": "softmax", "mining": "hard"}, "--mining applies to pair/triplet losses"),
    ({"loss": "arcface", "beta": 1.0}, "--beta does not apply"),
])
def test_method_specific_options_are_refused_elsewhere(kw: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        build_method(MethodContext(TrainConfig(input_size=32, **kw), 4, Normalisation()))


def test_unknown_names_and_options_are_clear_errors() -> None:
    ctx = lambda **kw: MethodContext(TrainConfig(input_size=32, **kw), 4, Normalisation())  # noqa: E731
    with pytest.raises(InputError, match="unknown loss 'arcfce'"):
        build_method(ctx(loss="arcfce"))
    with pytest.raises(InputError, match="unknown backbone"):
        build_method(ctx(backbone="resnet7"))
    with pytest.raises(InputError, match="does not take option"):
        build_method(ctx(loss="softmax", margin=0.3))
    with pytest.raises(InputError, match="unknown miner"):
        build_method(ctx(loss="triplet", mining="hardest-ever"))


# ---- the loop ----------------------------------------------------------------------------------------

def _comparable(history: list[dict]) -> list[dict]:
    """History without wall-clock fields."""
    out = []
    for r in history:
        r = {k: v for k, v in r.items() if k not in ("time_s", "img_per_s")}
        if r.get("val"):
            r["val"] = {k: v for k, v in r["val"].items() if k != "time_s"}
        out.append(r)
    return out


@pytest.mark.parametrize("loss", ["softmax", "triplet"])
def test_resume_mid_epoch_reproduces_the_uninterrupted_run(embedded_data: Path, splits: dict, cache_dir: Path,
                                                           tmp_path: Path, loss: str) -> None:
    """Interrupted twice mid-epoch, the resumed run logs the same history and ends with the same weights,
    bit for bit: dropout (global RNG), augmentation (per-batch generators), miner state, step-based
    validation and the collapse monitor all continue exactly."""
    kw: dict = dict(loss=loss, backbone_options={"dropout": 0.3}, eval_every="4steps",
                    augment={"flip": 0.5, "shift": 0.05, "blur": 0.3})
    if loss == "triplet":
        kw.update(mining="hard", pk=(4, 4))
    cfg = tiny_config(embedded_data, splits["tiny"], **kw)
    full = train(cfg, tmp_path / "full", show_progress=False, cache_dir=cache_dir)
    part = train(cfg, tmp_path / "cut", show_progress=False, cache_dir=cache_dir, stop_after_steps=3)
    assert part.stopped == "step limit" and part.steps == 3
    part = train(cfg, tmp_path / "cut", show_progress=False, cache_dir=cache_dir, resume=True, stop_after_steps=9)
    assert part.steps == 12 and full.steps > 12
    done = train(cfg, tmp_path / "cut", show_progress=False, cache_dir=cache_dir, resume=True)
    assert done.stopped == "completed" and done.steps == full.steps
    assert _comparable(done.history) == _comparable(full.history)
    evals = [r["val"] for r in full.history if r.get("val")]
    assert any(r["kind"] == "eval" for r in full.history) and evals[-1]["n_genuine"] > 0
    if loss == "triplet":
        assert "collapse" in full.history[-1]
    else:
        assert full.history[-1]["train_accuracy"] is not None
    a = load_checkpoint(tmp_path / "full/checkpoints/last.pt")["method"]
    b = load_checkpoint(tmp_path / "cut/checkpoints/last.pt")["method"]
    tensors = [k for k in a if torch.is_tensor(a[k])]
    assert tensors and all(torch.equal(a[k], b[k]) for k in tensors)
    lines = (tmp_path / "cut/history.jsonl").read_text().splitlines()
    assert _comparable([json.loads(x) for x in lines]) == _comparable(full.history)


def test_two_epochs_beat_the_untrained_network_on_held_out_identities(embedded_data: Path, splits: dict,
                                                                     cache_dir: Path, tmp_path: Path) -> None:
    """118 training identities, 2 epochs of softmax; EER on all pairs of 40 identities never seen in training
    must drop clearly below the same network's EER at initialisation."""
    cfg = TrainConfig(data=str(embedded_data), split=str(splits["main"]), loss="softmax", input_size=32, crop=0.6,
                      epochs=2, batch_size=32, embedding_size=64, lr=0.1, val_protocol="none", seed=0, threads=2)
    train(cfg, tmp_path / "run", show_progress=False, cache_dir=cache_dir)
    images = load_image_set(embedded_data)
    held_out = set(json.loads(Path(splits["main"]).read_text())["test"])
    assert not held_out & set(json.loads(Path(splits["main"]).read_text())["train"])
    test_set = images.take(np.array([i for i, ident in enumerate(images.identities) if ident in held_out]))
    rows = np.arange(len(test_set))
    ids = np.asarray(test_set.identities)
    cache = build_cache(test_set, CacheSpec(32, 0.6), cache_dir=cache_dir, show_progress=False)

    def eer(model: torch.nn.Module) -> float:
        e = embed_rows(model.eval(), np.asarray(cache.array), rows, normalisation=Normalisation(),
                       device=torch.device("cpu"), l2_normalise=True)
        s = e @ e.T
        iu = np.triu_indices(len(rows), 1)
        same = ids[iu[0]] == ids[iu[1]]
        return verification_metrics(s[iu][~same], s[iu][same], [])["eer"]

    trained, config, _state, _ = load_trained_method(tmp_path / "run", prefer="last")
    torch.manual_seed(config.seed)
    untrained = build_method(MethodContext(config, 118, Normalisation()))
    e_trained, e_untrained = eer(trained.embedder), eer(untrained.embedder)
    assert e_trained < e_untrained - 0.04, (e_trained, e_untrained)


def test_init_from_copies_the_embedder_and_refuses_another_architecture(embedded_data: Path, splits: dict,
                                                                       cache_dir: Path, tmp_path: Path) -> None:
    src = train(tiny_config(embedded_data, splits["tiny"], epochs=1), tmp_path / "src", show_progress=False,
                cache_dir=cache_dir)
    cfg = tiny_config(embedded_data, splits["tiny"], loss="triplet", pk=(4, 4), init_from=str(src.run_dir), epochs=1)
    t = Trainer(cfg, tmp_path / "ft", show_progress=False, cache_dir=cache_dir)
    want = load_checkpoint(src.run_dir / "checkpoints/best.pt")["embedder"]
    got = t.method.embedder.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    bad = tiny_config(embedded_data, splits["tiny"], embedding_size=32, init_from=str(src.run_dir))
    with pytest.raises(InputError, match="does not fit"):
        Trainer(bad, tmp_path / "ft2", show_progress=False, cache_dir=cache_dir)


def test_leakage_between_training_and_validation_is_refused(embedded_data: Path, splits: dict, cache_dir: Path,
                                                            tmp_path: Path) -> None:
    from fvtool.protocols.allpairs import allpairs_protocol
    from fvtool.protocols.model import write_protocol

    images = load_image_set(embedded_data)
    train_ids = json.loads(Path(splits["tiny"]).read_text())["train"][:3]
    sel = [i for i, x in enumerate(images.identities) if x in train_ids]
    proto = tmp_path / "val.json"
    write_protocol(proto, allpairs_protocol([images.keys[i] for i in sel], [images.identities[i] for i in sel],
                                            name="leaky", source="test"))
    with pytest.raises(CheckFailed, match="leakage"):
        Trainer(tiny_config(embedded_data, splits["tiny"], val_protocol=str(proto)), tmp_path / "r",
                show_progress=False, cache_dir=cache_dir)


def test_unmeasurable_selection_far_is_refused(embedded_data: Path, splits: dict, cache_dir: Path,
                                               tmp_path: Path) -> None:
    cfg = tiny_config(embedded_data, splits["tiny"], select_metric="frr@far=1e-6")
    with pytest.raises(InputError, match="not measurable"):
        Trainer(cfg, tmp_path / "r", show_progress=False, cache_dir=cache_dir)


def _selector(**cfg: object) -> Trainer:
    """A Trainer with only the selection state (no data): `_select` is pure bookkeeping plus saves."""
    t = Trainer.__new__(Trainer)
    t.config = TrainConfig(**cfg)
    t.best, t.bad_evals, t.higher_better, t.select_key = None, 0, False, "eer"
    t.schedule = SimpleNamespace(drops=0)
    t.saved, t.restarts = [], []
    t.save = lambda name: t.saved.append(name)
    t._restart_from_best = lambda: (t.restarts.append(1), setattr(t.schedule, "drops", t.schedule.drops + 1),
                                    setattr(t, "bad_evals", 0))
    return t


def test_best_checkpoint_early_stop_and_plateau_restart_logic() -> None:
    t = _selector(early_stop=2)
    where = {"epoch": 1, "step": 1}
    assert t._select(0.30, where) is None and t.saved == ["best.pt"]
    assert t._select(0.25, where) is None and t.best["value"] == 0.25 and len(t.saved) == 2
    assert t._select(0.26, where) is None
    assert "early stop" in t._select(0.27, where)
    p = _selector(schedule="plateau", plateau_patience=2, max_drops=1)
    p._select(0.3, where)
    assert p._select(0.4, where) is None and p._select(0.4, where) is None and p.restarts == [1]
    assert p._select(0.4, where) is None
    assert "plateau after 1" in p._select(0.4, where)
    acc = _selector()
    acc.higher_better, acc.select_key = True, "accuracy"
    acc._select(0.8, where)
    acc._select(0.9, where)
    assert acc.best["value"] == 0.9


# ---- CLI ---------------------------------------------------------------------------------------------

def test_cli_train_resume_and_errors(embedded_data: Path, splits: dict, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fvtool.cli import main
    from fvtool.workspace import Workspace

    run = tmp_path / "cli-run"
    args = ["train", "--data", str(embedded_data), "--split", str(splits["tiny"]), "--input-size", "16",
            "--embedding-size", "16", "--batch-size", "16", "--epochs", "1", "--threads", "1", "-o", str(run), "-q",
            "--loss", "softmax", "--augment", "flip,shift=0.05"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["augment"]["shift"] == 0.05 and cfg["resolved"]["method"] == "embedding"
    assert cfg["resolved"]["data"]["num_classes"] == 16
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist if h["kind"] == "epoch"] == [1] and hist[-1]["val"]["eer"] is not None
    assert Workspace.current().latest("train") == run.resolve()
    # a second run into the same folder without --resume is refused; --resume may extend --epochs
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 3
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", "--epochs", "2", "-q"])
    assert e.value.code in (0, None)
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist if h["kind"] == "epoch"] == [1, 2]
    with pytest.raises(SystemExit) as e:
        main(["train", "--resume", "--lr", "0.5", "-q"])
    assert e.value.code == 3
    with pytest.raises(SystemExit) as e:
        main(["train", "--loss", "softmax", "--recon", "bce", "--data", str(embedded_data), "-q"])
    assert e.value.code == 3
