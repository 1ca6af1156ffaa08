"""Train-run resolution as a library function: `resolve_train_run(overrides, ...) -> TrainRun`.

Why: `fvtool train`, a torchrun rank, a `--nproc` rank and the demo resolve runs by these rules, so
they are tested here once, without the CLI and without training (each case resolves in
milliseconds): workspace defaults, `--split none`, absolute paths, the run folder, and resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fvtool.errors import InputError
from fvtool.protocols.splits import split_identities, write_split
from fvtool.settings import EMBEDDED_DATA
from fvtool.training.config import TrainConfig, check_resume
from fvtool.training.stage import resolve_train_run
from fvtool.workspace import Workspace


def test_new_run_defaults_paths_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.current()
    run = resolve_train_run({"loss": "arcface", "epochs": 3})
    assert run.config.data == str(EMBEDDED_DATA.resolve()) and run.config.split is None and not run.resume
    assert run.run_dir.parent == ws.dir("train") and run.run_dir.name.startswith("arcface-resnet_small-")

    from fvtool.data.dataset import load_image_set

    images = load_image_set(EMBEDDED_DATA)
    split = split_identities(images.keys, images.identities, fractions=(0.8, 0.1, 0.1), seed=0, name="s")
    write_split(tmp_path / "s.json", split)
    ws.record("split", tmp_path / "s.json")
    run = resolve_train_run({"name": "n"})
    assert run.config.split == str((tmp_path / "s.json").resolve()) and run.run_dir == ws.dir("train") / "n"
    assert any("latest split" in n for n in run.notes)
    assert resolve_train_run({"split": "none", "name": "n"}).config.split is None  # the workspace's is not used

    monkeypatch.chdir(tmp_path)
    run = resolve_train_run({"data": str(EMBEDDED_DATA), "split": "s.json"}, out=Path("here"))
    assert run.config.split == str((tmp_path / "s.json").resolve()) and run.run_dir == Path("here")

    with pytest.raises(InputError, match="unknown loss 'arcfase'"):  # before anything is announced
        resolve_train_run({"loss": "arcfase"})
    (tmp_path / "here" / "checkpoints").mkdir(parents=True)
    (tmp_path / "here" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(InputError, match="already holds checkpoints"):
        resolve_train_run({}, out=Path("here"))


def test_config_file_then_options(tmp_path: Path) -> None:
    (tmp_path / "exp.toml").write_text('loss = "cosface"\nepochs = 7\n[loss_options]\nmargin = 0.3\n')
    run = resolve_train_run({"epochs": 2, "split": "none"}, config_file=tmp_path / "exp.toml", out=tmp_path / "r")
    assert (run.config.loss, run.config.epochs, run.config.loss_options) == ("cosface", 2, {"margin": 0.3})


def test_resume_uses_the_runs_own_config(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    saved = TrainConfig(loss="triplet", epochs=2, data=str(EMBEDDED_DATA.resolve()))
    (run_dir / "config.json").write_text(json.dumps({"format": "fvtool-run", "config": saved.to_dict()}))
    run = resolve_train_run({"epochs": 4, "data": str(EMBEDDED_DATA)}, resume=True, out=run_dir)
    assert run.resume and run.config.loss == "triplet" and run.config.epochs == 4
    check_resume(saved.to_dict(), run.config, "last.pt")  # the same data path given again is no change
    with pytest.raises(InputError, match=r"config differs from last.pt's \(lr: 0.1 -> 0.5\)"):
        check_resume(saved.to_dict(), resolve_train_run({"lr": 0.5}, resume=True, out=run_dir).config, "last.pt")
    with pytest.raises(InputError, match="drop --config"):
        resolve_train_run({}, resume=True, out=run_dir, config_file=tmp_path / "x.toml")
    with pytest.raises(InputError, match=r"is .* a run folder"):
        resolve_train_run({}, resume=True, out=tmp_path / "nothing")
