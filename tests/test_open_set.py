"""Open-set identification: CMC and DIR@FPIR against bob.measure's definitions (hand-worked tiny cases
and a transcription of bob's per-probe loops on random data), the gallery/probe split, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fvtool.cli import main
from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.errors import InputError
from fvtool.identification.open_set import cmc, dir_at_fpir, mated_ranks, split_open_set

# ---- bob.measure's definitions, transcribed as per-probe loops over (negatives, positives) lists ----------


def bob_cmc_scores(scores: np.ndarray, mates: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
    out = []
    for s, m in zip(scores, mates, strict=True):
        if m < 0:
            out.append((s, None))
        else:
            out.append((np.delete(s, m), np.array([s[m]])))
    return out


def bob_cmc(cmc_scores) -> np.ndarray:
    """bob.measure.cmc: index = #neg >= max(pos); cumulated over probes (all of which have positives)."""
    mc = np.zeros(max(len(n) for n, _ in cmc_scores) + 1)
    for neg, pos in cmc_scores:
        mc[int(np.sum(neg >= np.max(pos)))] += 1
    return np.cumsum(mc) / len(cmc_scores)


def bob_dir(cmc_scores, threshold: float, rank: int = 1) -> float:
    correct = counter = 0
    for neg, pos in cmc_scores:
        if pos is None:
            continue
        counter += 1
        max_pos = np.max(pos)
        if max_pos >= threshold and np.sum(neg >= max_pos) < rank:
            correct += 1
    return correct / counter


def bob_false_alarm_rate(cmc_scores, threshold: float) -> float:
    nonmated = [neg for neg, pos in cmc_scores if pos is None]
    return sum(np.max(n) >= threshold for n in nonmated) / len(nonmated)


def brute_threshold(best_nonmated: np.ndarray, target: float) -> float:
    """The smallest candidate threshold whose FPIR <= target (candidates: the scores and just above the max)."""
    cands = [*sorted(set(best_nonmated.tolist())), float(np.nextafter(best_nonmated.max(), np.inf))]
    return min(c for c in cands if np.mean(best_nonmated >= c) <= target)


# ---- tiny hand-worked case ------------------------------------------------------------------------------

S = np.array([  # 3 gallery columns
    [0.9, 0.2, 0.1],   # mate 0, rank 1
    [0.5, 0.6, 0.5],   # mate 2: 0.5 ties with column 0 (counts against) and 0.6 above -> rank 3
    [0.3, 0.7, 0.1],   # mate 1, rank 1
    [0.8, 0.4, 0.2],   # non-mated, best 0.8
    [0.1, 0.3, 0.35],  # non-mated, best 0.35
])
M = np.array([0, 2, 1, -1, -1])


def test_tiny_case_by_hand() -> None:
    assert mated_ranks(S, M).tolist() == [1, 3, 1]
    np.testing.assert_allclose(cmc(S, M), [2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(cmc(S, M), bob_cmc(bob_cmc_scores(S[:3], M[:3])))
    # FPIR 0.5: threshold 0.8 (one of two non-mated probes >= 0.8); DIR: mated rank-1 with score >= 0.8 -> 1/3
    p = dir_at_fpir(S, M, [0.5, 0.1, 0.99])
    assert p[0].threshold == 0.8 and p[0].fpir == 0.5 and p[0].dir == pytest.approx(1 / 3) and p[0].measurable
    # FPIR 0.1 < 1/2: threshold just above 0.8, nobody detected; not measurable with 2 non-mated probes
    assert p[1].threshold > 0.8 and p[1].fpir == 0.0 and p[1].dir == pytest.approx(1 / 3) and not p[1].measurable
    # 0.99: threshold 0.35 would give FPIR 1 > 0.99, so it stays at 0.8
    assert p[2].threshold == 0.8 and p[2].fpir == 0.5
    assert p[1].dir == bob_dir(bob_cmc_scores(S, M), p[1].threshold)


def test_random_scores_match_bob_loops() -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        n_gal, n_probe = rng.integers(2, 12), rng.integers(5, 60)
        s = np.round(rng.normal(size=(n_probe, n_gal)), 1)  # rounding makes ties
        m = rng.integers(-1, n_gal, size=n_probe)
        m[0], m[1] = 0, -1
        for i in np.flatnonzero(m >= 0):
            s[i, m[i]] += rng.uniform(0, 1.5)
        bs = bob_cmc_scores(s, m)
        mated = [b for b in bs if b[1] is not None]
        np.testing.assert_allclose(cmc(s, m), bob_cmc(mated)[:n_gal], err_msg=f"trial {trial}")
        best = s[m < 0].max(axis=1)
        for f in (0.01, 0.1, 0.3, 0.5):
            p = dir_at_fpir(s, m, [f])[0]
            assert p.threshold == brute_threshold(best, f)
            assert p.fpir == pytest.approx(bob_false_alarm_rate(bs, p.threshold))
            assert p.dir == pytest.approx(bob_dir(bs, p.threshold))
            assert p.fpir <= f


def test_split_is_seeded_and_disjoint() -> None:
    ids = [f"id{i % 10}" for i in range(60)]
    keys = [f"k{i:03d}" for i in range(60)]
    a = split_open_set(ids, keys=keys, unseen_fraction=0.3, gallery_images=2, seed=4)
    b = split_open_set(list(reversed(ids)), keys=list(reversed(keys)), unseen_fraction=0.3, gallery_images=2, seed=4)
    assert len(a.unseen_ids) == 3 and a.unseen_ids == b.unseen_ids
    assert {keys[r] for g in a.gallery_rows for r in g} == {list(reversed(keys))[r] for g in b.gallery_rows for r in g}
    gallery = {int(r) for g in a.gallery_rows for r in g}
    assert not gallery & set(a.probe_rows.tolist()) and len(gallery) + len(a.probe_rows) == 60
    assert all(len(g) == 2 for g in a.gallery_rows) and a.n_nonmated == 18 and a.n_mated == 28
    for r, mate in zip(a.probe_rows, a.mates, strict=True):
        assert (ids[r] in a.unseen_ids) == (mate < 0)
        assert mate < 0 or a.gallery_ids[mate] == ids[r]
    assert split_open_set(ids, keys=keys, seed=5).unseen_ids != a.unseen_ids
    with pytest.raises(InputError, match="no mated probe"):
        split_open_set(ids, gallery_images=6)


def test_cli_open_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    ident = np.repeat(np.arange(12), 4)
    x = centres[ident] + 0.3 * rng.normal(size=(48, 16))
    emb = tmp_path / "e.h5"
    write_embeddings(emb, EmbeddingSet(x, [f"p{i}/{j}.jpg" for i, j in zip(ident, range(48), strict=True)],
                                       [f"p{i}" for i in ident], ["ok"] * 48))
    out = tmp_path / "o.json"
    with pytest.raises(SystemExit) as e:
        main(["identify", str(emb), "--open-set", "--unseen-fraction", "0.25", "--fpir", "0.1", "--fpir", "0.5",
              "-o", str(out)])
    assert e.value.code == 0
    m = json.loads(out.read_text())
    assert m["format"] == "fvtool-openset" and m["counts"] == {"gallery": 9, "probes": 39, "mated_probes": 27,
                                                               "nonmated_probes": 12}
    assert m["cmc"]["at"]["1"] == m["cmc"]["rate"][0] and m["cmc"]["at"]["10"] is None  # 9 gallery columns
    assert [d["fpir_target"] for d in m["dir"]] == [0.1, 0.5] and all(d["fpir"] <= d["fpir_target"] for d in m["dir"])
    with pytest.raises(SystemExit) as e:
        main(["identify", str(emb), "--open-set", "--unseen-fraction", "1.0", "-o", str(out)])
    assert e.value.code == 3
