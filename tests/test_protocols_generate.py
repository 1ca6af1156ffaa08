"""Generated k-fold protocols: determinism, identity-disjoint folds, exact counts, no duplicate pairs,
single-image identities only in different pairs, capacity errors; training pair lists."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from fvtool.data.dataset import load_image_set
from fvtool.errors import InputError
from fvtool.protocols.generate import generate_kfold, sample_diff_pairs, sample_same_pairs
from fvtool.protocols.lfw import fold_identity_overlap, format_lfw_pairs, parse_lfw_pairs
from fvtool.protocols.model import Protocol, read_protocol, write_protocol
from fvtool.protocols.training import LEAKAGE_WARNING, random_pair_split, training_pairs


def _mixed_dataset() -> tuple[list[str], list[str]]:
    """60 identities with 1..6 images (every 3rd identity has a single image), LFW-style keys."""
    keys, ids = [], []
    for p in range(60):
        n = 1 if p % 3 == 0 else 2 + p % 5
        name = f"Person_{p:02d}"
        for j in range(1, n + 1):
            keys.append(f"{name}/{name}_{j:04d}.jpg")
            ids.append(name)
    return keys, ids


def _check_protocol(proto: Protocol, folds: int, n_same: int, n_diff: int, sizes: dict[str, int]) -> None:
    ids = np.asarray(proto.identities)
    assert proto.n_folds == folds
    for f in range(folds):
        sel = proto.fold == f
        assert int(proto.same[sel].sum()) == n_same and int((~proto.same[sel]).sum()) == n_diff
    a_id, b_id = ids[proto.a], ids[proto.b]
    assert (a_id[proto.same] == b_id[proto.same]).all()
    assert (a_id[~proto.same] != b_id[~proto.same]).all()
    assert (proto.a != proto.b).all()
    pairs = {tuple(sorted(p)) for p in zip(proto.a.tolist(), proto.b.tolist(), strict=True)}
    assert len(pairs) == len(proto.a), "duplicate pair"
    assert fold_identity_overlap(proto) == {}
    singles = {i for i, c in sizes.items() if c == 1}
    assert not singles & set(a_id[proto.same].tolist())


def test_kfold_counts_disjoint_no_duplicates() -> None:
    keys, ids = _mixed_dataset()
    sizes = {i: ids.count(i) for i in set(ids)}
    proto, stats = generate_kfold(keys, ids, folds=4, n_same=15, n_diff=20, seed=5)
    _check_protocol(proto, 4, 15, 20, sizes)
    assert sum(s["single_image_identities_used"] for s in stats) > 0  # singles do appear, in different pairs
    assert [s["same"] for s in stats] == [15] * 4
    assert sum(s["identities"] for s in stats) == 60
    # stats agree with the protocol
    ids_arr = np.asarray(proto.identities)
    for s in stats:
        sel = proto.fold == s["fold"]
        used = np.unique(np.concatenate([proto.a[sel], proto.b[sel]]))
        assert s["images_used"] == len(used)
        assert s["identities_in_same"] == len(set(ids_arr[proto.a[sel & proto.same]].tolist()))


def test_same_seed_same_file_different_seed_different(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      embedded_data: Path) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    s = load_image_set(embedded_data)
    p1, _ = generate_kfold(s.keys, s.identities, folds=10, n_same=50, seed=11, name="g")
    p2, _ = generate_kfold(list(reversed(s.keys)), list(reversed(s.identities)), folds=10, n_same=50, seed=11,
                           name="g")  # input order does not matter
    p3, _ = generate_kfold(s.keys, s.identities, folds=10, n_same=50, seed=12, name="g")
    for n, p in enumerate((p1, p2, p3)):
        write_protocol(tmp_path / f"{n}.json", p)
    assert (tmp_path / "0.json").read_bytes() == (tmp_path / "1.json").read_bytes()
    assert (tmp_path / "0.json").read_bytes() != (tmp_path / "2.json").read_bytes()
    assert p1.sha256() != p3.sha256()
    sizes = {i: s.identities.count(i) for i in set(s.identities)}
    _check_protocol(read_protocol(tmp_path / "0.json"), 10, 50, 50, sizes)


def test_generated_lfw_layout_exports_as_pairs_txt(embedded_data: Path) -> None:
    s = load_image_set(embedded_data)
    proto, _ = generate_kfold(s.keys, s.identities, folds=4, n_same=30, seed=0)
    text = format_lfw_pairs(proto)
    assert text.startswith("4\t30\n")
    back = parse_lfw_pairs(text)
    assert back.counts() == proto.counts()
    orig = {(proto.images[a], proto.images[b], s_) for a, b, s_ in
            zip(proto.a.tolist(), proto.b.tolist(), proto.same.tolist(), strict=True)}
    again = {(back.images[a], back.images[b], s_) for a, b, s_ in
             zip(back.a.tolist(), back.b.tolist(), back.same.tolist(), strict=True)}
    assert orig == again


def test_capacity_errors_are_clear() -> None:
    keys, ids = _mixed_dataset()
    with pytest.raises(InputError, match=r"fold \d+ has .* at most \d+ same"):
        generate_kfold(keys, ids, folds=10, n_same=500, seed=0)
    with pytest.raises(InputError, match="cannot form"):
        generate_kfold(keys[:6], ids[:6], folds=10, n_same=1, seed=0)


def test_samplers_exhaust_exactly() -> None:
    rng = np.random.default_rng(0)
    members = [[0, 1, 2], [3, 4], [5]]
    used: set[tuple[int, int]] = set()
    same = sample_same_pairs(members, 4, rng, used)  # 3 + 1 = every same pair
    assert sorted(same) == [(0, 1), (0, 2), (1, 2), (3, 4)]
    with pytest.raises(InputError, match="only 0 distinct same-person pairs"):
        sample_same_pairs(members, 1, rng, used)
    diff = sample_diff_pairs(members, 11, rng, used)  # all 6*5/2 - 4 = 11 different pairs
    expected = {(i, j) for i, j in itertools.combinations(range(6), 2)} - set(same)
    assert set(diff) == expected
    with pytest.raises(InputError, match="distinct different-person pairs"):
        sample_diff_pairs(members, 1, rng, used)


def test_training_pairs_use_training_identities_only(embedded_data: Path) -> None:
    s = load_image_set(embedded_data)
    names = sorted(set(s.identities))
    train, val = names[:100], names[100:120]
    proto = training_pairs(s.keys, s.identities, train_identities=train, n_same=200, val_identities=val, n_val=20,
                           seed=1)
    assert proto.extra["fold_names"] == ["train", "val"] and proto.extra["identity_disjoint"] is True
    ids = np.asarray(proto.identities)
    for f, allowed, n in ((0, set(train), 200), (1, set(val), 20)):
        sel = proto.fold == f
        used = set(ids[proto.a[sel]].tolist()) | set(ids[proto.b[sel]].tolist())
        assert used <= allowed
        assert int(proto.same[sel].sum()) == n and int((~proto.same[sel]).sum()) == n
    with pytest.raises(InputError, match="not in the dataset"):
        training_pairs(s.keys, s.identities, train_identities=["Nobody"], n_same=1)


def test_random_pair_split_reports_leakage(embedded_data: Path) -> None:
    s = load_image_set(embedded_data)
    proto, leak = random_pair_split(s.keys, s.identities, n_pairs=1000, seed=0)
    assert [int((proto.fold == f).sum()) for f in range(3)] == [720, 180, 100]
    assert int(proto.same.sum()) == 500
    assert proto.extra["identity_disjoint"] is False and proto.extra["warning"] == LEAKAGE_WARNING
    ids = np.asarray(proto.identities)
    def ids_of(f: int) -> set[str]:
        sel = proto.fold == f
        return set(ids[proto.a[sel]].tolist()) | set(ids[proto.b[sel]].tolist())
    assert leak["test_identities_also_in_train"] == len(ids_of(2) & ids_of(0)) > 0


def test_generate_on_att_layout(att_faces: Path) -> None:
    """Any identity folder works (AT&T: s1..s40/1..10.pgm), not only LFW names."""
    s = load_image_set(att_faces)
    proto, stats = generate_kfold(s.keys, s.identities, folds=10, n_same=50, seed=0)
    _check_protocol(proto, 10, 50, 50, {i: 10 for i in set(s.identities)})
    assert all(k.endswith(".pgm") for k in proto.images)
    assert [st["identities"] for st in stats] == [4] * 10
