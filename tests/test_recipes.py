"""Recipes (`fvtool train --recipe NAME`, fvtool/recipes/*.toml): every shipped recipe is a valid
config with its source and departures; command-line options override recipe fields; the run's
config.json records the recipe's name, sha256 and the overrides; bad recipes are clear errors."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import pytest

from fvtool.cli import main
from fvtool.errors import InputError
from fvtool.recipes import load_recipe, recipe_names, recipes
from fvtool.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCES = Path(__file__).parents[2] / "shared" / "sources"
SUBSET = Path(__file__).parents[1] / "data" / "lfw-subset"


def test_shipped_recipes_are_valid_and_paired() -> None:
    names = recipe_names()
    assert names, "no recipe shipped"
    for r in recipes():
        TrainConfig.from_dict(r.config, where=r.path)  # raises on an unknown key or a bad value
        assert r.study in (1, 2, 3, 4, 5) and r.summary
        assert r.source.endswith(".txt") and len(r.source) > 10
        if SOURCES.is_dir():
            assert (SOURCES / r.source).is_file(), r.source
        family = r.name.rpartition("-")[2]
        assert family in ("faithful", "tuned"), r.name
        assert r.departures, f"{r.name}: every recipe states how it departs from the source"
        if family == "faithful":  # each faithful recipe has its tuned sibling
            assert r.name.replace("-faithful", "-tuned") in names
        raw = (resources.files("fvtool.recipes") / f"{r.name}.toml").read_bytes()
        assert r.sha256 == hashlib.sha256(raw).hexdigest()


def test_faithful_values_quote_the_source() -> None:
    """Spot checks against the source sentences quoted in the files (docs/recipes.md)."""
    ce = TrainConfig.from_dict(load_recipe("study5-ce-faithful").config)
    assert (ce.weight_decay, ce.batch_size, ce.lr, ce.schedule, ce.max_drops) == (5e-5, 256, 0.1, "plateau", 2)
    tri = TrainConfig.from_dict(load_recipe("study5-triplet-faithful").config)
    assert tri.mining == "semihard" and tri.batch_size == 96
    s2 = TrainConfig.from_dict(load_recipe("study2-ce-faithful").config)
    assert (s2.optimizer, s2.lr, s2.epochs) == ("adam", 1e-4, 30)
    # study 4: 96 px, ResNet18 without the average pool + 2 FC, flip; "a batch with 1600 identities and 4
    # images per identity" for the distance-weighted runs; random triplets
    for name in ("center", "softmax", "triplet", "margin", "hard-margin"):
        s4 = TrainConfig.from_dict(load_recipe(f"study4-{name}-faithful").config)
        assert (s4.backbone, s4.input_size, s4.augment.flip) == ("resnet18_fc2", 96, 0.5), name
    for name in ("margin", "hard-margin"):
        s4 = TrainConfig.from_dict(load_recipe(f"study4-{name}-faithful").config)
        assert (s4.loss, s4.mining, s4.pk, s4.batch_size) == (name, "distance-weighted", (1600, 4), 6400)
    assert TrainConfig.from_dict(load_recipe("study4-triplet-faithful").config).mining == "random"
    # study 5 fine-tuning: "set this hyperparameter to 0.001", the rest copied from the triplet run
    ft = TrainConfig.from_dict(load_recipe("study5-ft-triplet-faithful").config)
    assert ft.lr == 1e-3 and (ft.mining, ft.pk, ft.weight_decay, ft.schedule) == ("semihard", (32, 3), 5e-5, "plateau")


def test_bad_recipes_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown recipe 'nope'.*study2-ce-faithful"):
        load_recipe("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('loss = "softmax"\n')
    with pytest.raises(InputError, match=r"needs a \[recipe\] table"):
        load_recipe(str(bad))
    bad.write_text('loss = "softmax"\n[recipe]\nstudy = 2\ncolour = "red"\n')
    with pytest.raises(InputError, match=r"unknown \[recipe\] key.*colour"):
        load_recipe(str(bad))
    bad.write_text('loss = "softmax\n')
    with pytest.raises(InputError, match="not valid TOML"):
        load_recipe(str(bad))


def test_list_recipes_shows_departures(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--list-recipes"])
    assert e.value.code == 0
    out = capsys.readouterr()
    text = out.out + out.err
    for name in recipe_names():
        assert name in text
    assert "FaceNet" in text  # a departure of study5-triplet-faithful


def test_recipe_and_config_together_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text('loss = "softmax"\n')
    with pytest.raises(SystemExit) as e:
        main(["train", "--recipe", "study2-ce-faithful", "--config", str(cfg)])
    assert e.value.code == 3
    assert "give one of them" in capsys.readouterr().err


def test_recipe_run_records_name_hash_and_overrides(tmp_path: Path) -> None:
    """A real (tiny) run from a recipe: the options given win over the recipe's fields, everything
    else is the recipe's, and config.json says which recipe text and which overrides made the run."""
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["--workspace", str(tmp_path / "ws"), "train", "--recipe", "study2-ce-faithful", "--data", str(SUBSET),
              "--split", "none", "--val-protocol", "none", "--epochs", "1", "--input-size", "32", "--crop", "0.5",
              "--backbone", "resnet_small", "--backbone-opt", "widths=[8,16,16]", "--backbone-opt", "blocks=[1,1,1]",
              "--embedding-size", "16", "--batch-size", "64", "--cap", "2", "--threads", "1", "-q", "-o", str(run)])
    assert e.value.code == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    recipe = load_recipe("study2-ce-faithful")
    assert saved["recipe"]["name"] == "study2-ce-faithful"
    assert saved["recipe"]["sha256"] == recipe.sha256
    over = saved["recipe"]["overrides"]
    assert over["epochs"] == 1 and over["backbone"] == "resnet_small" and over["input_size"] == 32
    assert "optimizer" not in over and "lr" not in over
    # the recipe's own fields where nothing overrode them
    assert (saved["optimizer"], saved["lr"], saved["schedule"]) == ("adam", 1e-4, "constant")
    assert saved["epochs"] == 1 and saved["backbone"] == "resnet_small"


def test_every_recipe_builds_its_method() -> None:
    """Backbone, loss(es) and method options of each recipe fit together (built on the meta device:
    shapes and option checks without allocating the weights)."""
    import torch

    from fvtool.data.transforms import Normalisation
    from fvtool.training.methods import MethodContext, build_method

    for r in recipes():
        cfg = TrainConfig.from_dict(r.config, where=r.path)
        with torch.device("meta"):
            method = build_method(MethodContext(cfg, num_classes=10, normalisation=Normalisation.named("pm1")))
        assert sum(p.numel() for p in method.embedder.parameters()) > 0, r.name


def test_docs_recipe_section_is_generated_from_the_files() -> None:
    """docs/recipes.md's "Recipe by recipe" equals what the recipe files say (regenerate it with
    `python scripts/recipes_doc.py` after changing a recipe)."""
    from pathlib import Path

    from fvtool.recipes import replace_section

    doc = (Path(__file__).resolve().parent.parent / "docs" / "recipes.md").read_text(encoding="utf-8")
    assert replace_section(doc) == doc, "docs/recipes.md is stale: run `python scripts/recipes_doc.py`"
