"""`fvtool verify` end to end on small HDF5 files: outputs and schema, numbers against a direct
computation, workspace defaults, FTA rules, bootstrap determinism, paired comparison, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cli_exit import run_cli as _run

from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.errors import EXIT_BAD_INPUT
from fvtool.protocols.model import Protocol, write_protocol
from fvtool.verification.metrics import ScoreTable
from fvtool.verification.synthetic import clustered_embeddings
from fvtool.workspace import Workspace


def _embeddings(tmp: Path, name="emb.h5", n_ids=40, per=5, dim=32, seed=0, status=None,
                x=None) -> tuple[Path, EmbeddingSet]:
    sizes = np.full(n_ids, per)
    if x is None:
        x, lab = clustered_embeddings(sizes, dim=dim, seed=seed, center_dim=12, shuffle=False)
    else:
        lab = np.repeat(np.arange(n_ids), per)
    keys = [f"id{lab[i]:03d}/img{i % per}.jpg" for i in range(len(lab))]
    ids = [f"id{v:03d}" for v in lab]
    es = EmbeddingSet(x, keys, ids, status or ["ok"] * len(keys), attrs={"backbone": "synthetic"})
    p = tmp / name
    write_embeddings(p, es)
    return p, es


def _pairs_protocol(es: EmbeddingSet, tmp: Path, n_folds=4, seed=0, only_impostors=False) -> Path:
    rng = np.random.default_rng(seed)
    n = len(es.keys)
    lab = np.array(es.identities)
    a, b, same = [], [], []
    for i in range(n):
        j = i + 1 if i + 1 < n and lab[i + 1] == lab[i] else None
        if j is not None and not only_impostors:
            a.append(i), b.append(j), same.append(1)
        k = int(rng.integers(0, n))
        if lab[k] != lab[i]:
            a.append(i), b.append(k), same.append(0)
    fold = np.arange(len(a)) * n_folds // len(a)
    proto = Protocol(kind="pairs", name="toy", images=list(es.keys), identities=list(es.identities),
                     a=np.array(a), b=np.array(b), same=np.array(same, bool), fold=fold)
    path = tmp / "toy.json"
    write_protocol(path, proto)
    return path


def test_pairs_protocol_outputs_and_numbers(tmp_path):
    emb, es = _embeddings(tmp_path)
    proto = _pairs_protocol(es, tmp_path)
    out = tmp_path / "out"
    assert _run("verify", emb, "--protocol", proto, "-o", out, "-q") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["format"] == "fvtool-verify" and m["protocol"]["kind"] == "pairs"
    for k in ("eer", "eer_rocch", "eer_interp", "auc", "intersection", "operating_points", "kfold", "fta",
              "primary", "scoring", "counts", "files"):
        assert k in m
    # numbers from a direct computation
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    x = es.embeddings / np.linalg.norm(es.embeddings, axis=1, keepdims=True)
    idx = es.index()
    s = np.array([float(x[idx[r["key_a"]]].astype(float) @ x[idx[r["key_b"]]].astype(float)) for r in rows])
    lab = np.array([int(r["label"]) for r in rows], bool)
    assert np.allclose(s, [float(r["score"]) for r in rows], atol=1e-7)
    t = ScoreTable.from_scores(s[~lab], s[lab])
    assert m["eer"]["value"] == pytest.approx(t.eer().value, abs=1e-9)
    assert m["auc"]["value"] == pytest.approx(t.auc(), abs=1e-9)
    op = next(o for o in m["operating_points"] if o["far_target"] == 0.01)
    assert op["frr"] == pytest.approx(t.frr_at_far(0.01).frr)
    assert [o["measurable"] for o in m["operating_points"]] == [f >= 1 / (~lab).sum() for f in (1e-2, 1e-3, 1e-4, 1e-5)]
    assert m["primary"]["label"] == "FRR@FAR=0.01"
    assert m["kfold"]["folds"] == 4 and len(m["kfold"]["grid"]["fold_threshold"]) == 4
    # curves: thresholds ascending, FAR falling, FRR rising
    det = np.genfromtxt(out / "det.csv", delimiter=",", names=True)
    assert (np.diff(det["threshold"]) > 0).all() and (np.diff(det["far"]) <= 0).all()
    assert (np.diff(det["frr"]) >= 0).all()
    npz = np.load(out / "scores.npz", allow_pickle=False)
    assert len(npz["genuine"]) == lab.sum() and bool(npz["impostor_complete"])
    assert Workspace.current().latest("verify") == out.resolve()


def test_allpairs_preset_defaults_and_not_measurable(tmp_path):
    emb, es = _embeddings(tmp_path)
    Workspace.current().record("embed", emb)
    assert _run("verify", "--protocol", "meds", "-q") == 0  # embeddings from the workspace
    out = Workspace.current().latest("verify")
    assert out.name == "emb-meds"
    m = json.loads((out / "metrics.json").read_text())
    n = len(es.keys)
    assert m["counts"]["genuine"] + m["counts"]["impostor"] == n * (n - 1) // 2
    assert m["primary"]["far_target"] == 1e-5 and m["primary"]["value"] is None  # 1e-5 < 1/#impostors
    assert all(o["exact"] for o in m["operating_points"]) and m["eer"]["exact"]
    assert m["allpairs"]["kept_impostors"] == m["counts"]["impostor"]  # a small trial keeps every score


def test_default_protocol_is_the_latest_recorded(tmp_path):
    emb, es = _embeddings(tmp_path)
    proto = _pairs_protocol(es, tmp_path)
    Workspace.current().record("protocol", proto)
    assert _run("verify", emb, "-q") == 0
    assert Workspace.current().latest("verify").name == "emb-toy"


def test_fta_rules(tmp_path):
    status = ["ok"] * 200
    for i in (0, 7, 33):
        status[i] = "fallback"
    emb, es = _embeddings(tmp_path, status=status)
    proto = _pairs_protocol(es, tmp_path)
    inc, exc = tmp_path / "inc", tmp_path / "exc"
    assert _run("verify", emb, "--protocol", proto, "-o", inc, "-q") == 0
    assert _run("verify", emb, "--protocol", proto, "-o", exc, "--fta", "exclude", "-q") == 0
    mi = json.loads((inc / "metrics.json").read_text())
    me = json.loads((exc / "metrics.json").read_text())
    assert mi["fta"]["failed"] == me["fta"]["failed"] == 3
    assert mi["fta"]["rate"] == pytest.approx(3 / 200) and mi["fta"]["by_status"] == {"fallback": 3}
    lost = me["fta"]["genuine_affected"] + me["fta"]["impostor_affected"]
    assert lost > 0
    total = mi["counts"]["genuine"] + mi["counts"]["impostor"]
    assert me["counts"]["genuine"] + me["counts"]["impostor"] + lost == total
    op = me["operating_points"][0]
    gi = me["fta"]["genuine_rate"]
    assert op["transaction"]["frr"] == pytest.approx(gi + op["frr"] * (1 - gi))
    assert mi["operating_points"][0]["transaction"] is None


def test_bootstrap_is_seeded_and_compare_identical_files(tmp_path):
    emb, es = _embeddings(tmp_path)
    proto = _pairs_protocol(es, tmp_path)
    copy, _ = _embeddings(tmp_path, name="copy.h5")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert _run("verify", emb, "--protocol", proto, "-o", out, "--bootstrap", "30", "--seed", "5",
                    "--compare", copy, "-q") == 0
    ma = json.loads((a / "metrics.json").read_text())
    mb = json.loads((b / "metrics.json").read_text())
    assert ma["bootstrap"] == mb["bootstrap"]
    assert ma["bootstrap"]["eer"]["lo"] <= ma["eer"]["value"] <= ma["bootstrap"]["eer"]["hi"]
    assert ma["comparison"]["eer"]["diff"] == 0 and not ma["comparison"]["eer"]["significant"]


@pytest.mark.parametrize("case", ["nan", "zero", "missing", "dim", "empty", "fta"])
def test_errors_exit_3_with_a_clear_message(tmp_path, case, capsys):
    x, _ = clustered_embeddings(np.full(40, 5), dim=32, seed=0, center_dim=12, shuffle=False)
    args: list = []
    if case == "nan":
        x[17, 3] = np.nan
    if case == "zero":
        x[23] = 0
    emb, es = _embeddings(tmp_path, x=x)
    proto = _pairs_protocol(es, tmp_path, only_impostors=case == "empty")
    expect = {"nan": "id003/img2.jpg", "zero": "id004/img3.jpg", "empty": "no genuine comparisons",
              "fta": "--fta", "dim": "dimension mismatch", "missing": "not in the dataset"}[case]
    if case == "missing":
        _embeddings(tmp_path, name="small.h5", n_ids=30)
        emb = tmp_path / "small.h5"
        expect = "50 of 200 images"
    if case == "dim":
        other, _ = _embeddings(tmp_path, name="other.h5", dim=16)
        args = ["--compare", other]
    if case == "fta":
        args = ["--fta", "drop"]
    code = _run("verify", emb, "--protocol", proto, "-o", tmp_path / "o", "-q", *args)
    assert code == EXIT_BAD_INPUT
    assert expect in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_lfw_preset_kfold(tmp_path):
    """The lfw preset: the packaged official View 2 pairs, 10-fold accuracy as the primary number."""
    from fvtool.protocols.lfw import read_packaged
    from fvtool.verification.kfold import kfold_accuracy

    proto = read_packaged("pairs.txt")
    _, lab = np.unique(proto.identities, return_inverse=True)
    x, _ = clustered_embeddings(np.bincount(lab), dim=64, seed=1, center_dim=24, shuffle=False)
    order = np.argsort(lab, kind="stable")
    emb = np.empty_like(x)
    emb[order] = x  # row i of the file <-> protocol image i
    es = EmbeddingSet(emb, list(proto.images), list(proto.identities), ["ok"] * len(lab))
    write_embeddings(tmp_path / "lfw.h5", es)
    assert _run("verify", tmp_path / "lfw.h5", "--protocol", "lfw", "-o", tmp_path / "o", "-q") == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["protocol"]["preset"] == "lfw" and m["kfold"]["folds"] == 10
    assert m["primary"]["metric"] == "kfold_accuracy"
    xn = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    d = ((xn[proto.a].astype(float) - xn[proto.b].astype(float)) ** 2).sum(1)
    ref = kfold_accuracy(d, proto.same, proto.fold)
    assert m["primary"]["value"] == pytest.approx(ref.accuracy_mean)
    assert m["kfold"]["grid"]["fold_threshold"] == pytest.approx(ref.fold_threshold)


def test_threshold_from_dev_set(tmp_path, capsys):
    """dev/eval: `verify` on a dev protocol reports its min-HTER threshold; `--threshold-from` carries
    it to the test protocol, where FAR/FRR/accuracy at it match a direct count of scores.csv."""
    emb, es = _embeddings(tmp_path)
    dev_ids = sorted(set(es.identities))[:20]
    keep = [i for i, v in enumerate(es.identities) if v in dev_ids]
    dev = tmp_path / "dev.json"
    write_protocol(dev, Protocol(kind="allpairs", name="dev", images=[es.keys[i] for i in keep],
                                 identities=[es.identities[i] for i in keep], trials=[np.arange(len(keep))]))
    test = _pairs_protocol(es, tmp_path)
    assert _run("verify", emb, "--protocol", dev, "-o", tmp_path / "dev", "-q") == 0
    md = json.loads((tmp_path / "dev" / "metrics.json").read_text())
    x = es.embeddings / np.linalg.norm(es.embeddings, axis=1, keepdims=True)
    xd = x[keep].astype(np.float64)
    iu = np.triu_indices(len(keep), 1)
    sd = (xd @ xd.T)[iu]
    lab = np.array(es.identities)[keep]
    gen = lab[iu[0]] == lab[iu[1]]
    h = md["min_hter"]
    assert h["threshold"] == pytest.approx(ScoreTable.from_scores(sd[~gen], sd[gen]).min_hter_threshold(), abs=1e-6)
    assert h["far"] == pytest.approx(np.mean(sd[~gen] >= h["threshold"]))
    assert h["frr"] == pytest.approx(np.mean(sd[gen] < h["threshold"])) and h["exact"]

    assert _run("verify", emb, "--protocol", test, "-o", tmp_path / "t", "--threshold-from", tmp_path / "dev",
                "-q") == 0
    mt = json.loads((tmp_path / "t" / "metrics.json").read_text())
    ft = mt["fixed_threshold"]
    assert ft["threshold"] == h["threshold"] and ft["rule"] == "min_hter" and ft["dev_protocol"] == "dev"
    with open(tmp_path / "t" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    s = np.array([float(r["score"]) for r in rows])
    same = np.array([int(r["label"]) for r in rows], bool)
    fold = np.array([int(r["fold"]) for r in rows])
    ok = (s >= ft["threshold"]) == same
    assert ft["accuracy"] == pytest.approx(ok.mean(), abs=1e-9)
    assert ft["far"] == pytest.approx(np.mean(s[~same] >= ft["threshold"]), abs=1e-9)
    assert ft["fold_accuracy"] == pytest.approx([ok[fold == f].mean() for f in range(4)], abs=1e-9)
    assert "at threshold" in capsys.readouterr().err

    assert _run("verify", emb, "--protocol", test, "-o", tmp_path / "g", "--threshold", "0.5", "-q") == 0
    assert json.loads((tmp_path / "g" / "metrics.json").read_text())["fixed_threshold"]["threshold"] == 0.5
    # refused: another score scale, another model, both options at once
    assert _run("verify", emb, "--protocol", test, "-o", tmp_path / "e", "--metric", "euclidean",
                "--threshold-from", tmp_path / "dev", "-q") == EXIT_BAD_INPUT
    assert "same score scale" in " ".join(capsys.readouterr().err.split())
    other = tmp_path / "other.h5"
    write_embeddings(other, EmbeddingSet(es.embeddings, es.keys, es.identities, es.status,
                                         attrs={"checkpoint_sha256": "ab" * 32}))
    md["embeddings"]["attrs"]["checkpoint_sha256"] = "cd" * 32
    (tmp_path / "dev2.json").write_text(json.dumps(md))
    assert _run("verify", other, "--protocol", test, "-o", tmp_path / "m", "--threshold-from",
                tmp_path / "dev2.json", "-q") == EXIT_BAD_INPUT
    assert "another checkpoint" in " ".join(capsys.readouterr().err.split())
    assert _run("verify", emb, "--protocol", test, "-o", tmp_path / "b", "--threshold", "0.5", "--threshold-from",
                tmp_path / "dev", "-q") == EXIT_BAD_INPUT


def test_summary_table_names_each_metric_once(tmp_path):
    """The primary metric is marked on its own row, not listed a second time (issue #17)."""
    from rich.console import Console

    from fvtool.verification.stage import VerifyOptions, summary_table, verify

    emb, es = _embeddings(tmp_path)
    proto = _pairs_protocol(es, tmp_path)
    for far, kind in ((None, "kfold_accuracy"), ((1e-2,), "frr_at_far")):
        m = verify(emb, str(proto), VerifyOptions(out=tmp_path / f"o-{kind}", show_progress=False,
                                                   far_targets=far)).metrics
        if far:  # a pairs file without a preset: the primary is FRR at the first target, not k-fold accuracy
            assert m["primary"]["metric"] == kind
        con = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
        con.print(summary_table(m))
        lines = con.export_text().splitlines()
        names = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
        assert len(names) == len(set(names)), names
        assert sum("primary" in line for line in lines) == 1
