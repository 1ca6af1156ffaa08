"""Identity splits (file round trip, determinism, LFW unrestricted numbers from the data README) and the
leakage guard (planted identity and image overlaps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fvtool.data.dataset import load_image_set
from fvtool.errors import CheckFailed, InputError
from fvtool.protocols.leakage import check, evaluation_side, find_overlap, training_side
from fvtool.protocols.lfw import fold_identities, read_packaged
from fvtool.protocols.model import Protocol
from fvtool.protocols.splits import Split, lfw_unrestricted_split, read_split, split_identities, write_split


@pytest.fixture(scope="module")
def subset(embedded_data: Path):
    return load_image_set(embedded_data)


def test_split_fractions_counts_disjoint(subset) -> None:
    s = split_identities(subset.keys, subset.identities, fractions=(0.8, 0.1, 0.1), seed=3)
    assert (len(s.train), len(s.val), len(s.test)) == (126, 16, 16)
    assert not (set(s.train) & set(s.test)) and not (set(s.val) & set(s.test))
    assert set(s.train) | set(s.val) | set(s.test) == set(subset.identities)
    assert s.counts()["test"] == {"identities": 16, "images": 160}
    for part in ("train", "val", "test"):
        assert {k.split("/")[0] for k in s.images[part]} == set(s.part(part))
    c = split_identities(subset.keys, subset.identities, counts=(10, 5, 20), seed=3)
    assert (len(c.train), len(c.val), len(c.test)) == (10, 5, 20)
    assert c.extra["unused_identities"] == 158 - 35
    with pytest.raises(InputError, match="need 200 identities"):
        split_identities(subset.keys, subset.identities, counts=(100, 50, 50), seed=0)
    with pytest.raises(InputError, match="summing to 1"):
        split_identities(subset.keys, subset.identities, fractions=(0.5, 0.1, 0.1), seed=0)


def test_split_rows_by_identity_and_by_image_key() -> None:
    keys = ["a/1", "a/2", "b/1", "c/1", "c/2", "d/1"]
    ids = ["a", "a", "b", "c", "c", "d"]
    s = Split(kind="identity", name="t", train=["a", "b"], val=["d"], test=["c"])
    assert s.rows("train", keys, ids) == [0, 1, 2] and s.rows("test", keys, ids) == [3, 4]
    assert s.rows("val", keys, ids) == [5]
    # an image-level split selects by key: an image not listed is in no part, even if its identity is
    img = Split(kind="identity", name="t", train=["a", "b"], val=["d"], test=["c"],
                images={"train": ["a/1", "b/1"], "val": ["d/1"], "test": ["c/2"]})
    assert img.rows("train", keys, ids) == [0, 2] and img.rows("test", keys, ids) == [4]
    with pytest.raises(InputError, match="unknown split part"):
        s.rows("dev", keys, ids)


def test_split_seeded_and_order_independent(subset) -> None:
    a = split_identities(subset.keys, subset.identities, fractions=(0.6, 0.2, 0.2), seed=9)
    b = split_identities(subset.keys[::-1], subset.identities[::-1], fractions=(0.6, 0.2, 0.2), seed=9)
    c = split_identities(subset.keys, subset.identities, fractions=(0.6, 0.2, 0.2), seed=10)
    assert a.sha256() == b.sha256() and a.test == b.test
    assert a.sha256() != c.sha256()


def test_split_min_images() -> None:
    keys = ["a/1", "a/2", "b/1", "c/1", "c/2", "c/3"]
    ids = ["a", "a", "b", "c", "c", "c"]
    s = split_identities(keys, ids, counts=(1, 0, 1), min_images=2, seed=0)
    assert sorted(s.train + s.test) == ["a", "c"] and s.extra["excluded_identities"] == 1


def test_split_file_round_trip_and_hash(tmp_path: Path, subset) -> None:
    s = split_identities(subset.keys, subset.identities, fractions=(0.8, 0.1, 0.1), seed=1, name="x")
    write_split(tmp_path / "s.json", s)
    back = read_split(tmp_path / "s.json")
    assert back.to_dict() == s.to_dict()
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["format"] == "fvtool-split" and d["version"] == 1 and d["counts"]["train"]["identities"] == 126
    d["test"].append(d["train"].pop())
    d["counts"] = None
    (tmp_path / "s.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="hash mismatch"):
        read_split(tmp_path / "s.json")
    (tmp_path / "p.json").write_text('{"format": "fvtool-protocol"}')
    with pytest.raises(InputError, match="not an fvtool-split"):
        read_split(tmp_path / "p.json")
    with pytest.raises(InputError, match="in both train and test"):
        Split(kind="identity", name="bad", train=["a"], val=[], test=["a"])


def test_lfw_unrestricted_fold10_numbers(lfw_full: Path) -> None:
    """Data README: excluding fold 10 leaves 1,505 identities with >= 2 images (7,829 images);
    only 52 identities with >= 2 images appear in no fold."""
    s = load_image_set(lfw_full)
    view2 = read_packaged("pairs.txt")
    sp = lfw_unrestricted_split(view2, s.keys, s.identities, fold=9, min_images=2)
    assert sp.counts()["train"] == {"identities": 1505, "images": 7829}
    assert set(sp.test) == fold_identities(view2)[9]
    check(sp, view2, fold=9)  # clean for its own fold
    with pytest.raises(CheckFailed):
        check(sp, view2)  # but of course not against all folds
    out = lfw_unrestricted_split(view2, s.keys, s.identities, fold=None, min_images=2)
    assert len(out.train) == 52 and out.kind == "lfw-outside-folds"
    check(out, view2)
    everyone = lfw_unrestricted_split(view2, s.keys, s.identities, fold=0)
    assert len(everyone.train) + len(everyone.test) == 5749



def test_lfw_unrestricted_val_identities(lfw_full: Path) -> None:
    """Held-out val identities come out of train only (seeded, >= 2 images each); test is untouched."""
    s = load_image_set(lfw_full)
    view2 = read_packaged("pairs.txt")
    base = lfw_unrestricted_split(view2, s.keys, s.identities, fold=9, min_images=2)
    sp = lfw_unrestricted_split(view2, s.keys, s.identities, fold=9, min_images=2, val_identities=100, seed=3)
    assert len(sp.val) == 100 and sp.test == base.test
    assert sorted(sp.train + sp.val) == base.train and not set(sp.train) & set(sp.val)
    assert len(sp.images["val"]) >= 200 and sp.extra["val_identities"] == 100
    again = lfw_unrestricted_split(view2, s.keys, s.identities, fold=9, min_images=2, val_identities=100, seed=3)
    other = lfw_unrestricted_split(view2, s.keys, s.identities, fold=9, min_images=2, val_identities=100, seed=4)
    assert again.val == sp.val and other.val != sp.val
    check(sp, view2, fold=9)
    with pytest.raises(InputError, match="val_identities"):
        lfw_unrestricted_split(view2, s.keys, s.identities, fold=9, min_images=2, val_identities=5000)

def test_leakage_guard_catches_planted_identity(subset) -> None:
    s = split_identities(subset.keys, subset.identities, fractions=(0.8, 0.1, 0.1), seed=0)
    check(s, s)  # train+val vs test of the same split: clean
    planted = s.test[3]
    bad = Split(kind="identity", name="planted", train=[*s.train, planted], val=s.val,
                test=[t for t in s.test if t != planted])
    test_proto = Protocol(kind="allpairs", name="testset",
                          images=s.images["test"], identities=[k.split("/")[0] for k in s.images["test"]],
                          trials=[list(range(len(s.images["test"])))])
    check(s, test_proto)
    with pytest.raises(CheckFailed, match=rf"1 shared identities \({planted}\)") as e:
        check(bad, test_proto)
    assert "planted" in str(e.value) and "testset" in str(e.value)
    assert e.value.exit_code == 5
    # plain identity lists work too (what `train` can pass)
    with pytest.raises(CheckFailed, match=planted):
        check(["someone", planted], test_proto)


def test_leakage_guard_catches_planted_image_under_other_label(subset) -> None:
    """An image listed under a different identity name (mislabelled copy) is caught by key, even
    across an extension change."""
    s = split_identities(subset.keys, subset.identities, fractions=(0.8, 0.1, 0.1), seed=0)
    key = s.images["test"][0]
    train_side = training_side(s)
    train_side.images.add(key.replace(".jpg", ".png"))
    report = find_overlap(train_side, evaluation_side(s))
    assert report.shared_identities == [] and report.shared_images == [key]


def test_leakage_guard_training_pairs_and_folds() -> None:
    view2 = read_packaged("pairs.txt")
    fold3 = sorted(fold_identities(view2)[3])
    train_pairs = Protocol(kind="pairs", name="tp", images=["X/X_0001.jpg", "X/X_0002.jpg", f"{fold3[0]}/a.jpg",
                                                            f"{fold3[0]}/b.jpg"],
                           identities=["X", "X", fold3[0], fold3[0]], a=[0, 2], b=[1, 3], same=[True, True],
                           fold=[0, 1], extra={"fold_names": ["train", "val"]})
    check(train_pairs, view2, fold=5)
    with pytest.raises(CheckFailed, match=r"training pairs 'tp' \(train\+val\) .* fold 3: 1 shared identities"):
        check(train_pairs, view2, fold=3)
    check(train_pairs, view2, parts=("train",))  # the leaking pair is in val only
    with pytest.raises(InputError, match="no fold 12"):
        check(train_pairs, view2, fold=12)
