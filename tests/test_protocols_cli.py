"""`fvtool pairs ...` end to end on the embedded data: workspace defaults, outputs, exit codes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from cli_exit import run_cli as run

from fvtool.protocols.model import read_protocol
from fvtool.protocols.splits import read_split
from fvtool.workspace import Workspace, set_workspace_override


@pytest.fixture(autouse=True)
def _no_stale_workspace_override() -> None:
    """`fvtool --workspace` (or $FVTOOL_WORKSPACE via the CLI callback) sets a module-level override
    that would outlive the previous test's temporary workspace."""
    set_workspace_override(None)


@pytest.mark.parametrize("sub", ["lfw", "generate", "allpairs", "split", "train-pairs", "check", "info"])
def test_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("pairs", sub, "--help") == 0
    assert "Usage" in capsys.readouterr().out


def test_pipeline_with_workspace_defaults(embedded_data: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.current()
    assert run("pairs", "generate") == 3  # no dataset recorded and none given
    ws.record("align", embedded_data)  # as if `fvtool align` had written it
    assert run("pairs", "generate", "--folds", "5", "--n", "40", "--seed", "2") == 0
    gen = ws.latest("protocol")
    assert gen is not None and gen.parent == ws.dir("protocol")
    proto = read_protocol(gen)
    assert proto.n_folds == 5 and len(proto.a) == 400 and proto.seed == 2

    assert run("pairs", "split", "--fractions", "0.7,0.15,0.15", "--seed", "4") == 0
    split_path = ws.latest("split")
    split = read_split(split_path)
    assert (len(split.train), len(split.val), len(split.test)) == (110, 24, 24)

    assert run("pairs", "train-pairs", "--n", "100", "--n-val", "10") == 0  # uses the latest split
    tp_files = list(ws.dir("split").glob("*train-pairs*.json"))
    assert len(tp_files) == 1 and ws.latest("protocol") == gen  # training pairs are not an eval protocol
    tp = read_protocol(tp_files[0])
    assert tp.extra["fold_names"] == ["train", "val"] and tp.extra["split"]["sha256"] == split.sha256()

    # test-part all-pairs protocol, then the leakage guard: clean vs the split's own test part
    assert run("pairs", "allpairs", "--split", str(split_path), "--part", "test", "-o", str(tmp_path / "t.json")) == 0
    ap = read_protocol(tmp_path / "t.json")
    assert set(ap.identities) == set(split.test)
    assert run("pairs", "allpairs", "--split", str(split_path), "--max-per-identity", "3",
               "-o", str(tmp_path / "t3.json")) == 0
    ap3 = read_protocol(tmp_path / "t3.json")
    assert set(ap3.identities) == set(split.test) and len(ap3.images) == 3 * len(split.test)  # 10 images each
    assert run("pairs", "check", str(split_path), str(tmp_path / "t.json")) == 0
    assert run("pairs", "check", str(tp_files[0]), str(tmp_path / "t.json")) == 0
    # ... and exit code 5 against a protocol built on all identities
    assert run("pairs", "check", str(split_path), str(gen)) == 5
    assert "leakage" in capsys.readouterr().err

    assert run("pairs", "info", "--json", str(gen), str(split_path), str(tmp_path / "t.json")) == 0
    info = json.loads(capsys.readouterr().out)
    assert info[str(gen)]["counts"]["pairs"] == 400
    assert info[str(split_path)]["counts"]["test"]["identities"] == 24


def test_lfw_import_export_byte_identical(tmp_path: Path, lfw_full: Path) -> None:
    out = tmp_path / "view2.json"
    assert run("pairs", "lfw", "--data", str(lfw_full), "-o", str(out), "--export", str(tmp_path / "p.txt")) == 0
    assert hashlib.md5((tmp_path / "p.txt").read_bytes()).hexdigest() == "9f1ba174e4e1c508ff7cdf10ac338a7d"
    proto = read_protocol(out)
    assert proto.extra["validated_against"]["images"] == 13233
    # and back from the JSON
    assert run("pairs", "lfw", str(out), "--no-check", "-o", str(tmp_path / "again.json"),
               "--export", str(tmp_path / "q.txt")) == 0
    assert (tmp_path / "q.txt").read_bytes() == (tmp_path / "p.txt").read_bytes()


def test_lfw_errors_exit_3(tmp_path: Path, embedded_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("pairs", "lfw", "--view", "1-test", "--no-check", "-o", str(tmp_path / "v1.json")) == 0
    assert read_protocol(tmp_path / "v1.json").counts()["pairs"] == 1000
    capsys.readouterr()
    assert run("pairs", "lfw") == 3  # no dataset to check against
    assert "--no-check" in capsys.readouterr().err
    assert run("pairs", "lfw", "--data", str(embedded_data), "-o", str(tmp_path / "x.json")) == 3
    err = capsys.readouterr().err
    assert "images are not in the dataset" in " ".join(err.split()) and not (tmp_path / "x.json").exists()
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nA\t1\t2\nA\t1\tB\n")
    assert run("pairs", "lfw", str(bad), "--no-check", "-o", str(tmp_path / "y.json")) == 3
    assert "bad.txt:3" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "y.json").exists()


def test_random_split_warns(embedded_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rs.json"
    assert run("pairs", "train-pairs", str(embedded_data), "--random-split", "--pairs", "500", "-o", str(out)) == 0
    err = capsys.readouterr().err
    assert "identity leakage" in err and "SAME" in err
    assert read_protocol(out).extra["identity_disjoint"] is False
    assert run("pairs", "info", str(out)) == 0
    assert "warning" in capsys.readouterr().err


def test_split_lfw_fold_cli(lfw_full: Path, tmp_path: Path) -> None:
    out = tmp_path / "f10.json"
    assert run("pairs", "split", str(lfw_full), "--lfw-fold", "10", "--min-images", "2", "-o", str(out)) == 0
    s = read_split(out)
    assert s.counts()["train"] == {"identities": 1505, "images": 7829}
    assert run("pairs", "check", str(out), "lfw", "--fold", "10") == 0
    assert run("pairs", "check", str(out), "lfw", "--fold", "9") == 5
    assert os.path.getsize(out) < 2_000_000


def test_lfw_fold_refold_cli(tmp_path: Path) -> None:
    """`pairs lfw --fold 10 --refold 10`: fold 10's 600 pairs as 10 stratified folds (no dataset check)."""
    out = tmp_path / "cv.json"
    assert run("pairs", "lfw", "--no-check", "--fold", "10", "--refold", "10", "--seed", "4", "-o", str(out)) == 0
    p = read_protocol(out)
    assert p.n_folds == 10 and len(p.same) == 600 and p.extra["refolded"]["seed"] == 4
    assert run("pairs", "lfw", "--no-check", "--fold", "10", "--refold", "1", "-o", str(tmp_path / "x.json")) == 2
    assert run("pairs", "lfw", "--no-check", "--fold", "10", "--refold", "400", "-o", str(tmp_path / "y.json")) == 3
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()
