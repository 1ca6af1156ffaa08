"""verify knows the embeddings' training run: protocol identities that the run trained on (its
split's train part) or chose its checkpoint with (val part) are counted in metrics.json and warned
about in the terminal; held-out identities, foreign embeddings and split-less runs are handled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fvtool.cli import main
from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.protocols.allpairs import allpairs_protocol
from fvtool.protocols.model import write_protocol
from fvtool.protocols.splits import Split, write_split
from fvtool.verification.synthetic import clustered_embeddings

N_IDS, PER = 40, 4
IDS = [f"id{i:03d}" for i in range(N_IDS)]
TRAIN, VAL, TEST = IDS[:20], IDS[20:25], IDS[25:]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    x, lab = clustered_embeddings(np.full(N_IDS, PER), dim=16, seed=0, center_dim=8, shuffle=False)
    keys = [f"{IDS[v]}/img{i % PER}.jpg" for i, v in enumerate(lab)]
    idents = [IDS[v] for v in lab]
    split = tmp_path / "split.json"
    write_split(split, Split(kind="identity", name="s", train=TRAIN, val=VAL, test=TEST))
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"format": "fvtool-run-config", "config": {
        "data": str(tmp_path / "data"), "split": str(split)}}))
    out = {"run": run, "split": split}
    for name, attrs in (("trained", {"run": str(run)}), ("foreign", {"model": "x.onnx"})):
        out[name] = tmp_path / f"{name}.h5"
        write_embeddings(out[name], EmbeddingSet(x, keys, idents, ["ok"] * len(keys), attrs=attrs))
    for name, keep in (("everyone", IDS), ("held-out", TEST)):
        rows = [i for i, ident in enumerate(idents) if ident in keep]
        out[name] = tmp_path / f"{name}.json"
        write_protocol(out[name], allpairs_protocol([keys[i] for i in rows], [idents[i] for i in rows], name=name))
    return out


def _verify(emb: Path, proto: Path, out: Path) -> dict:
    with pytest.raises(SystemExit) as e:
        main(["verify", str(emb), "--protocol", str(proto), "-o", str(out), "-q"])
    assert e.value.code in (0, None)
    return json.loads((out / "metrics.json").read_text())


def test_overlap_with_training_identities_is_warned_and_recorded(setup, tmp_path, capsys):
    m = _verify(setup["trained"], setup["everyone"], tmp_path / "v1")
    o = m["training_overlap"]
    assert o["checked"] and o["run"] == str(setup["run"])
    assert (o["protocol_identities"], o["training_identities"]) == (N_IDS, len(TRAIN) + len(VAL))
    assert (o["shared_identities"], o["shared_train"], o["shared_val"]) == (25, 20, 5)
    assert o["examples"] == TRAIN[:5]
    assert any("25 of the protocol's 40 identities were seen in training" in w for w in m["warnings"])
    err = capsys.readouterr().err
    assert "WARNING: evaluating on training identities" in err and "--part test" in err

    m = _verify(setup["trained"], setup["held-out"], tmp_path / "v2")  # the leak-free flow: silent
    o = m["training_overlap"]
    assert o["checked"] and o["shared_identities"] == 0 and o["protocol_identities"] == len(TEST)
    assert not m["warnings"] and "WARNING" not in capsys.readouterr().err


def test_foreign_embeddings_and_runs_without_split(setup, tmp_path, capsys):
    o = _verify(setup["foreign"], setup["everyone"], tmp_path / "v1")["training_overlap"]
    assert not o["checked"] and "do not name a training run" in o["reason"]
    # a run without a split trained on every identity of its data (identity folders)
    data = tmp_path / "data"
    for ident in [*TEST[:3], "someone_else"]:
        (data / ident).mkdir(parents=True)
        (data / ident / "a.jpg").write_bytes(b"\xff\xd8\xff")  # listed by name; not decoded
    (setup["run"] / "config.json").write_text(json.dumps({"config": {"data": str(data), "split": None}}))
    capsys.readouterr()
    m = _verify(setup["trained"], setup["held-out"], tmp_path / "v2")
    o = m["training_overlap"]
    assert o["checked"] and o["training_identities"] == 4 and o["shared_identities"] == 3
    assert o["shared_val"] is None and "the run had no split" in o["training"]
    assert "WARNING: evaluating on training identities" in capsys.readouterr().err
    # a run folder that is gone: not checked, said why, no crash
    (setup["run"] / "config.json").unlink()
    o = _verify(setup["trained"], setup["held-out"], tmp_path / "v3")["training_overlap"]
    assert not o["checked"] and "config.json" in o["reason"]
