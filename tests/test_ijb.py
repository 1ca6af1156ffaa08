"""IJB-B/C template protocols on a miniature IJB-C-layout set built from LFW images: alignment from the
given 5 points, template pooling against a direct per-template re-computation, TAR@FAR (fvtool's and
insightface's rules), CMC and DIR against brute force, the CLI and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvtool.align.geometry import warp_similarity
from fvtool.cli import main
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import EmbeddingSet, read_embeddings, write_embeddings
from fvtool.errors import InputError
from fvtool.protocols.ijb import (
    align_ijb,
    identification,
    insightface_tar_at_far,
    parse_spec,
    read_image_table,
    read_pairs,
    read_template_subjects,
    verification_set,
    write_miniature,
)
from fvtool.verification.stage import VerifyOptions, verify

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ijb(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ijb")
    counts = write_miniature(embedded_data, root / "IJBC", subjects=8, seed=1)
    spec = parse_spec(f"ijbc:{root / 'IJBC'}")
    res = align_ijb(spec, root / "aligned", size=112, threads=1, show_progress=False)
    # synthetic image embeddings: subject centre + noise (rows in the aligned manifest's order)
    tm, _pts, scores = read_image_table(spec)
    subj = {}
    for f in ("1N_gallery_G1.csv", "1N_gallery_G2.csv", "1N_probe_mixed.csv"):
        t, s = read_template_subjects(spec.file(f))
        subj.update(zip(t.tolist(), s.tolist(), strict=True))
    images = load_image_set(root / "aligned")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(counts["subjects"] + 1, 16))
    name_subject = {n: subj[int(t)] for n, t in zip(tm.names, tm.tids, strict=True)}
    x = np.stack([centres[name_subject[Path(k).with_suffix(".jpg").name]] + 1.2 * rng.normal(size=16)
                  for k in images.keys])
    emb = root / "emb.h5"
    write_embeddings(emb, EmbeddingSet(x, list(images.keys), list(images.identities), list(images.status)))
    return {"root": root, "spec": spec, "counts": counts, "aligned": res, "emb": emb, "tm": tm, "scores": scores,
            "subject": subj}


def test_miniature_layout_and_alignment(ijb: dict) -> None:
    spec, c = ijb["spec"], ijb["counts"]
    assert c["images"] == ijb["aligned"].n == ijb["aligned"].written and c["templates"] == 24
    t1, _t2, same = read_pairs(spec.file("template_pair_label.txt"))
    assert len(t1) == c["pairs"] == 24 * 23 // 2 and same.sum() == 8 * 3
    # the crop is the five-point similarity warp of the loose crop (fvtool's template)
    _tm, pts, _s = read_image_table(spec)
    src = Image.open(spec.root / "loose_crop" / "5.jpg").convert("RGB")
    want = np.asarray(warp_similarity(src, pts[4], 112))
    got = np.asarray(Image.open(ijb["root"] / "aligned" / "5.png"))
    assert got.shape == (112, 112, 3) and np.array_equal(got, want)
    again = align_ijb(spec, ijb["root"] / "aligned", threads=1, show_progress=False)
    assert again.written == 0 and again.reused == c["images"]


def _direct_templates(x: np.ndarray, keys: list[str], tm, scores: np.ndarray, detector: bool,
                      image_norm: bool) -> dict[int, np.ndarray]:
    """Per template, the long way: loop over its media, mean the (weighted) image features, sum, normalise."""
    row = {Path(k).stem: i for i, k in enumerate(keys)}
    out = {}
    for t in np.unique(tm.tids):
        media_feats = []
        for m in np.unique(tm.mids[tm.tids == t]):
            feats = []
            for i in np.flatnonzero((tm.tids == t) & (tm.mids == m)):
                f = x[row[Path(tm.names[i]).stem]].astype(np.float64)
                if image_norm:
                    f = f / np.linalg.norm(f)
                feats.append(f * (scores[i] if detector else 1.0))
            media_feats.append(np.mean(feats, axis=0))
        v = np.sum(media_feats, axis=0)
        out[int(t)] = v / np.linalg.norm(v)
    return out


@pytest.mark.parametrize("opts", ["", ",detector=0", ",image_norm=1,detector=0"])
def test_pooled_scores_equal_direct_recomputation(ijb: dict, opts: str) -> None:
    es = read_embeddings(ijb["emb"])
    vs = verification_set(f"ijbc:{ijb['spec'].root}{opts}", es)
    direct = _direct_templates(es.embeddings, es.keys, ijb["tm"], ijb["scores"], "detector=0" not in opts,
                               "image_norm=1" in opts)
    feats = {int(k.split(":")[1]): v for k, v in zip(vs.embeddings.keys, vs.embeddings.embeddings, strict=True)}
    t1, t2, _ = read_pairs(ijb["spec"].file("template_pair_label.txt"))
    got = np.einsum("ij,ij->i", vs.embeddings.embeddings[vs.protocol.a].astype(np.float64),
                    vs.embeddings.embeddings[vs.protocol.b].astype(np.float64))
    want = np.array([direct[a] @ direct[b] for a, b in zip(t1.tolist(), t2.tolist(), strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert all(np.allclose(feats[t], direct[t], atol=1e-6) for t in direct)


def _brute_tar(gen: np.ndarray, imp: np.ndarray, far: float) -> float:
    cands = [*sorted(set(imp.tolist())), float(np.nextafter(imp.max(), np.inf))]
    t = min(c for c in cands if np.mean(imp >= c) <= far)
    return float(np.mean(gen >= t))


def _insightface_loop(same: np.ndarray, s: np.ndarray, far: float) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(same.astype(int), s)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - far), range(len(fpr)), strict=True))  # ijb_11.py's selection
    return float(tpr[i])


def test_verify_ijbc_tar_at_far_against_brute_force(ijb: dict, tmp_path: Path) -> None:
    res = verify(ijb["emb"], f"ijbc:{ijb['spec'].root}", VerifyOptions(out=tmp_path / "v", show_progress=False))
    m = res.metrics
    es = read_embeddings(ijb["emb"])
    vs = verification_set(f"ijbc:{ijb['spec'].root}", es)
    x = vs.embeddings.embeddings.astype(np.float64)
    s = np.einsum("ij,ij->i", x[vs.protocol.a], x[vs.protocol.b])
    same = vs.protocol.same
    gen, imp = s[same], s[~same]
    assert m["counts"] == {"genuine": 24, "impostor": 252, "min_far": 1 / 252}
    ops = {o["far_target"]: o for o in m["operating_points"]}
    assert sorted(ops) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    for f in (1e-2, 1e-1):
        assert ops[f]["tar"] == pytest.approx(_brute_tar(gen, imp, f)) and ops[f]["far"] <= f
    for e in m["ijb"]["insightface_tar_at_far"]:
        assert e["tar"] == pytest.approx(_insightface_loop(same, s, e["far_target"]))
    assert m["ijb"]["templates"] == 24 and "detector score" in m["ijb"]["pooling"]
    npz = np.load(tmp_path / "v" / "scores.npz", allow_pickle=False)
    np.testing.assert_allclose(np.sort(npz["genuine"]), np.sort(gen).astype(np.float32), atol=1e-6)


def test_insightface_rule_may_exceed_the_target() -> None:
    """Hand case: ROC points (FPR, TPR) = (0.1, 0.25) at 0.9, (0.2, 0.5) at 0.8, (0.2, 1.0) at 0.7. At
    target 0.18 insightface takes FPR 0.2 (nearer) with the larger TPR of the two; fvtool stays at FAR 0.1."""
    imp = np.array([0.9, 0.8, 0.3, 0.2, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01])
    gen = np.array([0.95, 0.85, 0.75, 0.7])
    s = np.concatenate([gen, imp])
    same = np.r_[np.ones(4, bool), np.zeros(10, bool)]
    ins = insightface_tar_at_far(same, s, [0.18])[0]
    assert ins["fpr"] == pytest.approx(0.2) and ins["tar"] == 1.0 and ins["tar"] == _insightface_loop(same, s, 0.18)
    assert _brute_tar(gen, imp, 0.18) == 0.25  # threshold 0.9: FAR 0.1


def test_identification_against_brute_force(ijb: dict) -> None:
    es = read_embeddings(ijb["emb"])
    closed, g1, g2 = identification(f"ijbc:{ijb['spec'].root}", es, [0.1, 0.5], [1, 5, 10])
    vs = verification_set(f"ijbc:{ijb['spec'].root}", es)
    feat = {int(k.split(":")[1]): v.astype(np.float64) for k, v in zip(vs.embeddings.keys, vs.embeddings.embeddings,
                                                                       strict=True)}
    spec = ijb["spec"]
    gal = [read_template_subjects(spec.file(f"1N_gallery_{g}.csv")) for g in ("G1", "G2")]
    p_t, p_s = read_template_subjects(spec.file("1N_probe_mixed.csv"))
    for res, (gt, gs) in ((closed, (np.r_[gal[0][0], gal[1][0]], np.r_[gal[0][1], gal[1][1]])), (g1, gal[0]),
                          (g2, gal[1])):
        ranks, best_non, mated_scores = [], [], []
        for t, subj in zip(p_t.tolist(), p_s.tolist(), strict=True):
            sc = [feat[t] @ feat[g] for g in gt.tolist()]
            if subj in gs.tolist():
                ms = sc[gs.tolist().index(subj)]
                ranks.append(sum(v >= ms for v in sc))
                mated_scores.append(ms)
            else:
                best_non.append(max(sc))
        ranks = np.array(ranks)
        assert res["counts"]["mated_probes"] == len(ranks) and res["counts"]["nonmated_probes"] == len(best_non)
        for r in (1, 5):
            if r <= len(gt):
                assert res["cmc"]["at"][str(r)] == pytest.approx(np.mean(ranks <= r))
        for d in res["dir"]:
            if not best_non:
                assert d["dir"] is None
                continue
            best = np.array(best_non)
            cands = [*sorted(set(best.tolist())), float(np.nextafter(best.max(), np.inf))]
            thr = min(c for c in cands if np.mean(best >= c) <= d["fpir_target"])
            assert d["threshold"] == pytest.approx(thr)
            assert d["dir"] == pytest.approx(np.mean((np.array(mated_scores) >= thr) & (ranks == 1)))
    assert closed["counts"]["nonmated_probes"] == 0 and g1["counts"]["nonmated_probes"] > 0


def test_cli_and_refusals(ijb: dict, tmp_path: Path) -> None:
    root = ijb["spec"].root
    out = tmp_path / "ver"
    with pytest.raises(SystemExit) as e:
        main(["verify", str(ijb["emb"]), "--protocol", f"ijbc:{root}", "-o", str(out)])
    assert e.value.code == 0 and json.loads((out / "metrics.json").read_text())["protocol"]["name"] == "ijbc"
    with pytest.raises(SystemExit) as e:
        main(["identify", str(ijb["emb"]), "--protocol", f"ijbc:{root}", "-o", str(tmp_path / "idf")])
    assert e.value.code == 0 and len(list((tmp_path / "idf").glob("*.json"))) == 3
    from fvtool.reporting.stage import ReportOptions, make_report

    rep = make_report([out], tmp_path / "rep", ReportOptions(identify=[tmp_path / "idf"], bootstrap=0,
                                                             examples=0, show_progress=False))
    html = rep.html.read_text()
    assert "IJB 1:1 template verification: TAR (%) at FAR" in html and "CMC curves" in html
    assert (rep.out_dir / "figures" / "cmc.png").is_file()
    ijb_csv = (rep.out_dir / "ijb.csv").read_text().splitlines()
    assert len(ijb_csv) == 2 and "insightface_tar@0.0001" in ijb_csv[0]
    assert len((rep.out_dir / "openset.csv").read_text().splitlines()) == 4
    # refusals: exit 3, no output
    for spec, what in ((f"ijbc:{tmp_path}", "no meta/ folder"), (f"ijbc:{root},detector=2", "options are")):
        with pytest.raises(InputError, match=what):
            parse_spec(spec)
        with pytest.raises(SystemExit) as e:
            main(["verify", str(ijb["emb"]), "--protocol", spec, "-o", str(tmp_path / "bad")])
        assert e.value.code == 3 and not (tmp_path / "bad").exists()
    broken = tmp_path / "broken"
    (broken / "meta").mkdir(parents=True)
    for f in (root / "meta").iterdir():
        (broken / "meta" / f.name).write_text(f.read_text())
    pairs = broken / "meta" / "ijbc_template_pair_label.txt"
    pairs.write_text(pairs.read_text() + "1 999 0\n")
    with pytest.raises(InputError, match="999"):
        verification_set(f"ijbc:{broken}", read_embeddings(ijb["emb"]))
    lm = broken / "meta" / "ijbc_name_5pts_score.txt"
    lines = lm.read_text().splitlines()
    lm.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(InputError, match="same images in the same order"):
        verification_set(f"ijbc:{broken}", read_embeddings(ijb["emb"]))
