"""Closed-set identification (`fvtool identify`): the per-identity split, the three classifiers against
direct scikit-learn / numpy re-computations, separable and random data, bad inputs, the CLI end to end
(JSON, workspace, exit codes), the report's closed-set columns, and recognition of the training
identities on their held-out images (`--heldout`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cli_exit import run_cli as _run
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.errors import EXIT_BAD_INPUT, EXIT_PARTIAL, EXIT_USAGE, InputError
from fvtool.identification import closed_set as cs
from fvtool.identification.closed_set import closed_set_accuracy, heldout_split, n_train_images, split_closed_set
from fvtool.protocols.splits import Split, hold_out_images, read_split, split_identities, write_split
from fvtool.verification.synthetic import clustered_embeddings
from fvtool.workspace import Workspace


def _data(n_ids=12, per=(2, 3, 4, 5, 7), dim=24, spread=1.6, seed=0, singletons=3):
    """Clustered embeddings with uneven identity sizes (+ some single-image identities)."""
    rng = np.random.default_rng(seed)
    sizes = np.array([per[i % len(per)] for i in range(n_ids)] + [1] * singletons)
    x, lab = clustered_embeddings(sizes, dim=dim, seed=seed, spread=spread, center_dim=8, shuffle=True)
    ids = [f"id{v:03d}" for v in lab]
    keys = [f"id{v:03d}/img{i:04d}.jpg" for i, v in enumerate(lab)]
    x = x * rng.uniform(0.5, 3.0, size=(len(x), 1)).astype(np.float32)  # norms vary: the tool normalises
    return x, ids, keys


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- the split ---------------------------------------------------------------------------------

def test_split_is_stratified_disjoint_and_counts_dropped_identities():
    _, ids, keys = _data()
    for frac in (0.5, 0.3, 0.8):
        sp = split_closed_set(ids, keys=keys, train_fraction=frac, seed=0)
        assert not set(sp.train) & set(sp.test)
        idarr = np.array(ids)
        sizes = {i: int((idarr == i).sum()) for i in set(ids)}
        kept = sorted(i for i, n in sizes.items() if n >= 2)
        assert sp.classes == kept and sp.dropped_identities == 3 and sp.dropped_images == 3
        assert sorted(np.concatenate([sp.train, sp.test])) == [r for r in range(len(ids)) if sizes[ids[r]] >= 2]
        for c, name in enumerate(kept):
            tr = int((sp.labels[sp.train] == c).sum())
            te = int((sp.labels[sp.test] == c).sum())
            n = sizes[name]
            assert tr == n_train_images(n, frac) and tr + te == n and tr >= 1 and te >= 1
            assert all(ids[r] == name for r in sp.train[sp.labels[sp.train] == c])
        assert all(sp.labels[r] == -1 for r in range(len(ids)) if sizes[ids[r]] < 2)
    assert [n_train_images(n, 0.5) for n in (2, 3, 4, 5, 10)] == [1, 2, 2, 3, 5]  # half up, 1..n-1
    assert n_train_images(2, 0.9) == 1 and n_train_images(10, 0.01) == 1


def test_split_is_seeded_and_independent_of_file_order_and_other_identities():
    _, ids, keys = _data(n_ids=30)
    a = split_closed_set(ids, keys=keys, seed=3)
    b = split_closed_set(ids, keys=keys, seed=3)
    c = split_closed_set(ids, keys=keys, seed=4)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test)
    assert not np.array_equal(a.train, c.train)
    train_keys = {keys[i] for i in a.train}
    # another file order: the same images train
    p = np.random.default_rng(1).permutation(len(ids))
    s = split_closed_set([ids[i] for i in p], keys=[keys[i] for i in p], seed=3)
    assert {keys[p[i]] for i in s.train} == train_keys
    # a subset of identities (as --split/--part makes): each identity is split as before
    keep = [i for i in range(len(ids)) if ids[i] < "id015"]
    s = split_closed_set([ids[i] for i in keep], keys=[keys[i] for i in keep], seed=3)
    assert {keys[keep[i]] for i in s.train} == {k for k in train_keys if k < "id015"}


# ---- classifiers against references ------------------------------------------------------------

def test_logreg_equals_a_direct_scikit_learn_fit_on_the_same_split():
    x, ids, keys = _data(n_ids=40, spread=1.0)
    r = closed_set_accuracy(x, ids, keys=keys, classifier="logreg", C=100.0, seed=1)
    sp = r.split
    xn = _unit(x.astype(np.float64))
    ref = LogisticRegression(C=100.0, max_iter=1000).fit(xn[sp.train], sp.labels[sp.train])
    pred = ref.predict(xn[sp.test])
    y = sp.labels[sp.test]
    assert r.top1 == pytest.approx(np.mean(pred == y), abs=0) and r.correct_top1 == int((pred == y).sum())
    assert np.array_equal(r.predictions, pred)
    assert r.balanced_top1 == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)
    top5 = np.argsort(-ref.predict_proba(xn[sp.test]), axis=1, kind="stable")[:, :5]
    assert r.top5 == pytest.approx(np.mean((top5 == y[:, None]).any(axis=1)), abs=0)
    assert 0.2 < r.top1 < 0.98  # a test that can tell the classifiers apart: not trivial, not hopeless
    assert r.fit["converged"] and r.fit["options"]["C"] == 100.0
    assert r.chance == {"uniform_top1": 1 / 40, "uniform_top5": 5 / 40,
                        "majority_top1": np.bincount(y).max() / len(y)}


def test_logreg_two_classes_matches_scikit_learn():
    x, ids, keys = _data(n_ids=2, per=(9,), spread=3.0, singletons=0)
    r = closed_set_accuracy(x, ids, keys=keys, classifier="logreg", C=1.0)
    sp = r.split
    xn = _unit(x.astype(np.float64))
    pred = LogisticRegression(C=1.0, max_iter=1000).fit(xn[sp.train], sp.labels[sp.train]).predict(xn[sp.test])
    assert np.array_equal(r.predictions, pred) and r.top5 is None and r.chance["uniform_top5"] is None


def test_ncm_and_1nn_equal_a_direct_numpy_recomputation(monkeypatch):
    monkeypatch.setattr(cs, "NN_BLOCK_ROWS", 7)  # several blocks
    x, ids, keys = _data(n_ids=25, spread=1.2)
    xn = _unit(x.astype(np.float64))
    for clf in ("ncm", "1nn"):
        r = closed_set_accuracy(x, ids, keys=keys, classifier=clf, seed=2)
        sp = r.split
        y = sp.labels[sp.test]
        k = sp.n_classes
        scores = np.empty((len(sp.test), k))
        for c in range(k):
            members = xn[sp.train[sp.labels[sp.train] == c]]
            for t, row in enumerate(sp.test):
                if clf == "ncm":
                    mean = members.mean(axis=0)
                    scores[t, c] = xn[row] @ mean / np.linalg.norm(mean)
                else:
                    scores[t, c] = max(xn[row] @ m for m in members)
        pred = scores.argmax(axis=1)
        if clf == "1nn":  # the class of the single nearest training image
            sims = xn[sp.test] @ xn[sp.train].T
            assert np.array_equal(pred, sp.labels[sp.train][sims.argmax(axis=1)])
        assert np.array_equal(r.predictions, pred)
        assert r.top1 == np.mean(pred == y)
        rank = np.array([int((np.argsort(-scores[t], kind="stable") == y[t]).nonzero()[0][0])
                         for t in range(len(y))])
        assert r.top5 == np.mean(rank < 5) and np.array_equal(r.ranks, rank)
        assert 0.2 < r.top1 < 0.98


def test_ties_rank_towards_the_lower_class_like_argmax():
    s = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9], [0.3, 0.3, 0.3]])
    assert cs.true_class_ranks(s, np.array([1, 2, 0])).tolist() == [1, 1, 0]
    assert cs.true_class_ranks(s, np.array([0, 1, 2])).tolist() == [0, 0, 2]


def test_separable_clusters_give_one_and_random_embeddings_chance():
    rng = np.random.default_rng(0)
    k, per, dim = 20, 6, 32
    centres = np.eye(dim)[:k] * 10
    lab = np.repeat(np.arange(k), per)
    ids = [f"p{v:02d}" for v in lab]
    sep = centres[lab] + rng.normal(size=(len(lab), dim))
    noise = rng.normal(size=(len(lab), dim))
    for clf in cs.CLASSIFIERS:
        r = closed_set_accuracy(sep, ids, classifier=clf)
        assert r.top1 == 1.0 and r.top5 == 1.0 and r.balanced_top1 == 1.0
        tops = [closed_set_accuracy(noise, ids, classifier=clf, seed=s).top1 for s in range(5)]
        assert abs(np.mean(tops) - 1 / k) < 0.05, (clf, tops)  # 300 test predictions: sd ~0.013


# ---- bad inputs --------------------------------------------------------------------------------

def test_bad_inputs_are_refused_with_clear_messages():
    x, ids, keys = _data()
    bad = x.copy()
    bad[5, 3] = np.nan
    with pytest.raises(InputError, match=r"NaN or inf.*" + keys[5].replace(".", r"\.")):
        closed_set_accuracy(bad, ids, keys=keys)
    zero = x.copy()
    zero[7] = 0
    with pytest.raises(InputError, match="all zero"):
        closed_set_accuracy(zero, ids, keys=keys)
    with pytest.raises(InputError, match="every identity has a single image"):
        closed_set_accuracy(x[:4], [f"solo{i}" for i in range(4)])
    with pytest.raises(InputError, match="at least 2 identities"):
        closed_set_accuracy(x[:5], ["a"] * 5)
    with pytest.raises(InputError, match="expected \\[N, D\\]"):
        closed_set_accuracy(x[:, 0], ids)
    with pytest.raises(InputError, match="identities"):
        closed_set_accuracy(x, ids[:-1])
    with pytest.raises(InputError, match="keys"):
        closed_set_accuracy(x, ids, keys=keys[:3])
    with pytest.raises(InputError, match=r"must be in \(0, 1\)"):
        closed_set_accuracy(x, ids, train_fraction=1.0)
    with pytest.raises(InputError, match=">= 2"):
        closed_set_accuracy(x, ids, min_images=1)
    with pytest.raises(InputError, match="unknown classifier 'svm'"):
        closed_set_accuracy(x, ids, classifier="svm")
    with pytest.raises(InputError, match="positive"):
        closed_set_accuracy(x, ids, C=0.0)
    # a NaN in a dropped (single-image) identity is not used, so not an error
    sp = split_closed_set(ids, keys=keys)
    solo = int(np.flatnonzero(sp.labels == -1)[0])
    ok = x.copy()
    ok[solo] = np.nan
    assert closed_set_accuracy(ok, ids, keys=keys, classifier="ncm").top1 >= 0


def test_non_convergence_is_reported():
    x, ids, keys = _data(n_ids=30, spread=2.5)
    r = closed_set_accuracy(x, ids, keys=keys, classifier="logreg", max_iter=2)
    assert r.fit["converged"] is False and r.fit["n_iter"] <= 2


# ---- the CLI -----------------------------------------------------------------------------------


def _h5(path: Path, x, ids, keys) -> Path:
    write_embeddings(path, EmbeddingSet(x, keys, ids, ["ok"] * len(keys), attrs={"backbone": "synthetic"}))
    return path


def test_cli_writes_json_per_classifier_records_it_and_matches_the_library(tmp_path, capsys):
    x, ids, keys = _data(n_ids=20, spread=2.0)
    emb = _h5(tmp_path / "emb.h5", x, ids, keys)
    assert _run("identify", emb, "-c", "logreg", "-c", "ncm", "--seed", "1", "-q") == 0
    folder = Workspace.current().dir("identify")
    out = {p.name: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert sorted(out) == ["emb-logreg.json", "emb-ncm.json"]
    printed = capsys.readouterr().out.split()
    assert printed == [str(folder / "emb-logreg.json"), str(folder / "emb-ncm.json")]
    assert Workspace.current().latest("identify") == (folder / "emb-ncm.json").resolve()
    m = out["emb-logreg.json"]
    assert m["format"] == "fvtool-identify" and m["version"] == 1 and m["subset"] is None
    assert m["protocol"]["classifier"] == "logreg" and m["protocol"]["seed"] == 1
    assert m["protocol"]["split_sha256"] == out["emb-ncm.json"]["protocol"]["split_sha256"]
    ref = closed_set_accuracy(x, ids, keys=keys, classifier="logreg", seed=1)
    assert m["accuracy"] == ref.accuracy()
    c = m["counts"]
    assert c == {"images": len(ids), "identities": 23, "classes": 20, "train_images": len(ref.split.train),
                 "test_images": len(ref.split.test), "dropped_identities": 3, "dropped_images": 3,
                 "not_ok_images": 0}
    assert 0 <= m["accuracy"]["top1"] <= m["accuracy"]["top5"] <= 1 and m["chance"]["uniform_top1"] == 1 / 20
    assert m["fit"]["converged"] is True and m["fit"]["options"]["C"] == 100.0

    # default input: the workspace's latest embeddings; --name
    Workspace.current().record("embed", emb)
    assert _run("identify", "-c", "1nn", "--name", "mine", "-q") == 0
    assert json.loads((folder / "mine.json").read_text())["protocol"]["classifier"] == "1nn"


def test_cli_split_part_restricts_the_identities(tmp_path):
    x, ids, keys = _data(n_ids=20)
    emb = _h5(tmp_path / "emb.h5", x, ids, keys)
    names = sorted(set(ids))
    write_split(tmp_path / "s.json", Split(kind="identity", name="s", train=names[:12], val=[], test=names[12:]))
    out = tmp_path / "r.json"
    assert _run("identify", emb, "--split", tmp_path / "s.json", "--part", "test", "-o", out, "-q") == 0
    m = json.loads(out.read_text())
    wanted = set(names[12:])
    assert m["subset"]["part"] == "test" and m["subset"]["images"] == sum(i in wanted for i in ids)
    assert m["counts"]["classes"] + m["counts"]["dropped_identities"] == len(wanted)
    assert _run("identify", emb, "--split", tmp_path / "s.json", "-q") == 0
    assert (Workspace.current().dir("identify") / "emb-s-test-logreg.json").is_file()
    assert _run("identify", emb, "--split", tmp_path / "s.json", "--part", "dev", "-q") == EXIT_BAD_INPUT
    write_split(tmp_path / "other.json", Split(kind="identity", name="o", train=[], val=[], test=["nobody"]))
    assert _run("identify", emb, "--split", tmp_path / "other.json", "-q") == EXIT_BAD_INPUT


def test_cli_exit_codes(tmp_path):
    x, ids, keys = _data()
    good = _h5(tmp_path / "good.h5", x, ids, keys)
    bad_x = x.copy()
    bad_x[0] = np.inf
    bad = _h5(tmp_path / "bad.h5", bad_x, ids, keys)
    folder = Workspace.current().dir("identify")
    assert _run("identify", bad, "-q") == EXIT_BAD_INPUT and not folder.exists()
    assert _run("identify", good, bad, "-q") == EXIT_PARTIAL  # the good file's result is kept
    assert [p.name for p in folder.glob("*.json")] == ["good-logreg.json"]
    assert _run("identify", tmp_path / "missing.h5", "-q") == EXIT_BAD_INPUT
    assert _run("identify", good, "-c", "svm", "-q") == EXIT_BAD_INPUT
    assert _run("identify", good, "-c", "ncm", "-c", "1nn", "--name", "x", "-q") == EXIT_BAD_INPUT
    assert _run("identify", good, "--train-fraction", "1.5", "-q") == EXIT_BAD_INPUT
    assert _run("identify", good, "--min-images", "20", "-q") == EXIT_BAD_INPUT  # too few identities


# ---- the report shows the closed-set accuracy beside the verification rows ------------------------

def test_report_shows_identify_results_of_the_same_embeddings(tmp_path):
    from fvtool.protocols.model import Protocol, write_protocol

    x, ids, keys = _data(n_ids=16, per=(4,), singletons=0)
    embs = [_h5(tmp_path / f"{n}.h5", x + s * np.float32(0.3), ids, keys) for n, s in (("a", 0), ("b", 1))]
    lab = np.array(ids)
    pairs = np.array([(i, j) for i in range(len(ids)) for j in range(i + 1, len(ids))])[::7]
    write_protocol(tmp_path / "toy.json", Protocol(
        kind="pairs", name="toy", images=list(keys), identities=list(ids), a=pairs[:, 0], b=pairs[:, 1],
        same=lab[pairs[:, 0]] == lab[pairs[:, 1]], fold=np.zeros(len(pairs), np.int64)))
    for e in embs:
        assert _run("verify", e, "--protocol", tmp_path / "toy.json", "-q") == 0
    assert _run("identify", embs[0], "-c", "logreg", "-c", "ncm", "-q") == 0  # only a: b's cells stay empty
    rep = tmp_path / "rep"
    assert _run("report", "-o", rep, "--formats", "none", "--examples", "0", "--bootstrap", "0", "-q") == 0
    with open(rep / "table.csv", newline="") as f:
        rows = {Path(r["verify_dir"]).name: r for r in csv.DictReader(f)}
    ident = json.loads((Workspace.current().dir("identify") / "a-logreg.json").read_text())
    assert float(rows["a-toy"]["identify_top1_logreg"]) == ident["accuracy"]["top1"]
    assert rows["a-toy"]["identify_top1_ncm"] and rows["b-toy"]["identify_top1_logreg"] == ""
    assert "closed-set top-1 logreg" in (rep / "table.md").read_text()
    # an explicit --identify source replaces the default folders
    rep2 = tmp_path / "rep2"
    assert _run("report", "-o", rep2, "--formats", "none", "--examples", "0", "--bootstrap", "0", "-q",
                "--identify", Workspace.current().dir("identify") / "a-ncm.json") == 0
    header = (rep2 / "table.csv").read_text().splitlines()[0]
    assert "identify_top1_ncm" in header and "identify_top1_logreg" not in header
    assert _run("report", "-o", tmp_path / "rep3", "--identify", tmp_path / "nope.json", "-q") == EXIT_BAD_INPUT

# ---- recognition of the training identities (`pairs split --heldout-images K`, `identify --heldout`) ------
# Example study 4: K images of every training identity are withheld from training, and the classifier
# fitted on the training images' embeddings names them. Checked: which images are held out (seeded,
# order-independent, never training images), the split file round trip, the accuracy against a direct
# scikit-learn fit on the same rows, and the refusals (exit 3 / 2).

def _heldout_data(seed: int = 0):
    """Clustered embeddings: 16 identities of 1..6 images (sizes cycle), keys named by identity."""
    sizes = np.array([1 + i % 6 for i in range(16)])
    x, lab = clustered_embeddings(sizes, dim=16, seed=seed, spread=0.3, center_dim=12, shuffle=True)
    ids = [f"id{v:02d}" for v in lab]
    keys = [f"id{v:02d}/img{i:03d}.jpg" for i, v in enumerate(lab)]
    return x, ids, keys


def _heldout_split(ids, keys, per=2, seed=0) -> Split:
    s = split_identities(keys, ids, counts=(12, 0, 4), seed=0, name="s")
    return hold_out_images(s, keys, ids, per, seed)


def test_hold_out_takes_k_images_of_each_larger_training_identity_seeded_and_order_free():
    _x, ids, keys = _heldout_data()
    s = _heldout_split(ids, keys)
    sizes = {i: ids.count(i) for i in set(ids)}
    assert sorted(s.heldout) == sorted(i for i in s.train if sizes[i] > 2)
    for ident, held in s.heldout.items():
        assert len(held) == 2 and all(k.startswith(ident + "/") for k in held)
    held = {k for v in s.heldout.values() for k in v}
    assert not held & set(s.images["train"])  # training never sees them
    assert held | set(s.images["train"]) == {k for k, i in zip(keys, ids, strict=True) if i in set(s.train)}
    assert s.extra["heldout"]["identities"] == len(s.heldout) and s.extra["heldout"]["images"] == len(held)
    # same seed -> same images whatever the file order; another seed -> other images
    p = np.random.default_rng(1).permutation(len(keys))
    again = _heldout_split([ids[i] for i in p], [keys[i] for i in p])
    assert again.heldout == s.heldout
    assert _heldout_split(ids, keys, seed=5).heldout != s.heldout
    assert s.rows("heldout", keys, ids) == sorted(keys.index(k) for k in held)
    assert s.counts()["heldout"] == {"identities": len(s.heldout), "images": len(held)}


def test_split_file_round_trip_and_refusals(tmp_path):
    _x, ids, keys = _heldout_data()
    s = _heldout_split(ids, keys)
    write_split(tmp_path / "s.json", s)
    back = read_split(tmp_path / "s.json")
    assert back.heldout == s.heldout and back.images == s.images and back.sha256() == s.sha256()
    d = json.loads((tmp_path / "s.json").read_text())
    victim = next(iter(d["heldout"]))
    d["heldout"][victim] = d["heldout"][victim][:1]  # an edit the hash must catch
    (tmp_path / "t.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="hash mismatch"):
        read_split(tmp_path / "t.json")
    # a split without held-out images keeps the hash it always had (no "heldout" in the hashed content)
    plain = split_identities(keys, ids, counts=(12, 0, 4), seed=0, name="s")
    assert "heldout" not in plain.content() and plain.counts().keys() == {"train", "val", "test"}
    with pytest.raises(InputError, match="not training identities"):
        Split(kind="identity", name="x", train=["id01"], val=[], test=["id02"],
              images={"train": [], "val": [], "test": []}, heldout={"id02": ["id02/a.jpg"]})
    with pytest.raises(InputError, match="also training images"):
        Split(kind="identity", name="x", train=["id01"], val=[], test=[],
              images={"train": ["id01/a.jpg"], "val": [], "test": []}, heldout={"id01": ["id01/a.jpg"]})
    with pytest.raises(InputError, match="image-level"):
        hold_out_images(split_identities(keys, ids, counts=(12, 0, 4), with_images=False), keys, ids, 2, 0)
    with pytest.raises(InputError, match=">= 1"):
        hold_out_images(plain, keys, ids, 0, 0)


def test_identify_heldout_equals_a_direct_fit_on_the_training_images(tmp_path):
    x, ids, keys = _heldout_data()
    s = _heldout_split(ids, keys)
    write_split(tmp_path / "s.json", s)
    emb = _h5(tmp_path / "emb.h5", x, ids, keys)  # every image: the test identities' rows are not used
    out = tmp_path / "r.json"
    assert _run("identify", emb, "--split", tmp_path / "s.json", "--heldout", "-o", out, "-q") == 0
    m = json.loads(out.read_text())
    train = s.rows("train", keys, ids)
    held = s.rows("heldout", keys, ids)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    classes = sorted({ids[i] for i in train})  # every training identity is a class, held out or not
    y = np.array([classes.index(ids[i]) for i in train])
    clf = LogisticRegression(C=100.0, max_iter=1000, solver="lbfgs").fit(xn[train], y)
    pred = clf.predict(xn[held])
    truth = np.array([classes.index(ids[i]) for i in held])
    assert m["accuracy"]["top1"] == pytest.approx(float((pred == truth).mean()))
    c = m["counts"]
    assert c["classes"] == len(classes) == 12 and c["train_images"] == len(train) and c["test_images"] == len(held)
    assert m["protocol"]["train_fraction"] is None and "training identities" in m["protocol"]["task"]
    assert m["subset"]["part"] == "heldout" and m["subset"]["heldout"]["per_identity"] == 2
    assert m["chance"]["uniform_top1"] == 1 / 12
    # separable clusters: a real classifier names nearly every held-out image
    assert m["accuracy"]["top1"] > 0.8


def test_heldout_split_drops_test_images_without_training_images():
    sp = heldout_split(["a", "a", "b", "b", "c"], np.array([False, True, False, True, True]), seed=3)
    assert sp.classes == ["a", "b"] and list(sp.test) == [1, 3] and sp.dropped_images == 1
    assert sp.dropped_identities == 1 and sp.train_fraction is None and sp.seed == 3
    with pytest.raises(InputError, match="at least 2 identities"):
        heldout_split(["a", "a"], np.array([False, True]))


def test_identify_heldout_refusals(tmp_path):
    x, ids, keys = _heldout_data()
    s = _heldout_split(ids, keys)
    write_split(tmp_path / "s.json", s)
    plain = split_identities(keys, ids, counts=(12, 0, 4), seed=0, name="p")
    write_split(tmp_path / "p.json", plain)
    emb = _h5(tmp_path / "emb.h5", x, ids, keys)
    only_test = [i for i in range(len(ids)) if ids[i] in set(s.test)]
    test_emb = _h5(tmp_path / "test.h5", x[only_test], [ids[i] for i in only_test], [keys[i] for i in only_test])
    train_rows = s.rows("train", keys, ids)
    train_emb = _h5(tmp_path / "train.h5", x[train_rows], [ids[i] for i in train_rows],
                    [keys[i] for i in train_rows])
    assert _run("identify", emb, "--heldout", "-q") == EXIT_BAD_INPUT  # no --split
    assert _run("identify", emb, "--split", tmp_path / "p.json", "--heldout", "-q") == EXIT_BAD_INPUT
    assert _run("identify", test_emb, "--split", tmp_path / "s.json", "--heldout", "-q") == EXIT_BAD_INPUT
    assert _run("identify", train_emb, "--split", tmp_path / "s.json", "--heldout", "-q") == EXIT_BAD_INPUT
    assert _run("identify", emb, "--split", tmp_path / "s.json", "--heldout", "--part", "test",
                "-q") == EXIT_USAGE
    assert _run("identify", emb, "--split", tmp_path / "s.json", "--heldout", "--open-set", "-q") == EXIT_USAGE
