"""Protocol file round trip, resolve_indices, presets and protocol auto-detection, all-pairs counts.

References: counts re-computed by brute-force enumeration of pairs (small sets) and the full-LFW
numbers of issue 3 (87,549,528 pairs, 242,257 genuine, 87,307,271 impostor)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from fvtool.errors import InputError
from fvtool.protocols.allpairs import (
    allpairs_counts,
    allpairs_protocol,
    allpairs_trials,
    per_trial_counts,
    training_identities,
    trial_identities,
)
from fvtool.protocols.lfw import format_lfw_pairs, packaged_file, read_packaged
from fvtool.protocols.model import Protocol, read_protocol, write_protocol
from fvtool.protocols.presets import PRESETS, Preset, read_any_protocol, resolve_protocol


def _brute(identities: list[str], idx: list[int]) -> tuple[int, int]:
    g = i = 0
    for x, y in itertools.combinations(idx, 2):
        if identities[x] == identities[y]:
            g += 1
        else:
            i += 1
    return g, i


# ---- protocol file ------------------------------------------------------------------------
def _pairs_protocol() -> Protocol:
    return Protocol(kind="pairs", name="p", images=["a/1.jpg", "a/2.jpg", "b/1.jpg"], identities=["a", "a", "b"],
                    a=[0, 0], b=[1, 2], same=[True, False], fold=[0, 1], source="test", seed=7,
                    extra={"k": [1, 2], "note": "x"})


def test_protocol_json_round_trip_lossless(tmp_path: Path) -> None:
    for proto in (_pairs_protocol(), read_packaged("pairs.txt"),
                  allpairs_trials([f"i{k}/{j}.jpg" for k in range(6) for j in range(3)],
                                  [f"i{k}" for k in range(6) for j in range(3)], trials=3, test_identities=3, seed=1)):
        write_protocol(tmp_path / "p.json", proto)
        back = read_protocol(tmp_path / "p.json")
        assert back.to_dict() == proto.to_dict()
        assert back.sha256() == proto.sha256()
    # the LFW protocol still writes back byte-identical after the JSON round trip
    write_protocol(tmp_path / "lfw.json", read_packaged("pairs.txt"))
    assert format_lfw_pairs(read_protocol(tmp_path / "lfw.json")) == packaged_file("pairs.txt").read_text()


def test_protocol_edit_detected(tmp_path: Path) -> None:
    write_protocol(tmp_path / "p.json", _pairs_protocol())
    d = json.loads((tmp_path / "p.json").read_text())
    d["pairs"]["same"][1] = 1
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="hash mismatch"):
        read_protocol(tmp_path / "p.json")


def test_same_content_same_bytes_with_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_protocol(tmp_path / "1.json", _pairs_protocol())
    write_protocol(tmp_path / "2.json", _pairs_protocol())
    assert (tmp_path / "1.json").read_bytes() == (tmp_path / "2.json").read_bytes()
    assert read_protocol(tmp_path / "1.json").created == "2023-11-14T22:13:20+00:00"


# ---- resolve_indices -------------------------------------------------------------------------
def test_resolve_indices_exact_then_extension() -> None:
    p = _pairs_protocol()
    keys = ["b/1.jpg", "a/2.png", "a/1.jpg", "zz/9.jpg"]
    assert p.resolve_indices(keys).tolist() == [2, 1, 0]
    # an exact match wins over an extension match
    assert p.resolve_indices(["a/1.png", "a/1.jpg", "a/2.jpg", "b/1.jpg"]).tolist() == [1, 2, 3]


def test_resolve_indices_missing_and_ambiguous() -> None:
    p = _pairs_protocol()
    with pytest.raises(InputError, match=r"2 of 3 images .*a/2\.jpg, b/1\.jpg"):
        p.resolve_indices(["a/1.jpg"])
    many = Protocol(kind="allpairs", name="m", images=[f"x/{i}.jpg" for i in range(12)],
                    identities=["x"] * 12, trials=[list(range(12))])
    with pytest.raises(InputError, match=r"12 of 12 images .*and 7 more"):
        many.resolve_indices([])
    # two keys with the same stem: no silent guess
    with pytest.raises(InputError, match=r"1 of 3 images .*a/2\.jpg"):
        p.resolve_indices(["a/1.jpg", "a/2.png", "a/2.bmp", "b/1.jpg"])


# ---- presets -------------------------------------------------------------------------------
def test_presets_api() -> None:
    assert set(PRESETS) == {"lfw", "meds", "ms1m"}
    assert all(isinstance(p, Preset) for p in PRESETS.values())
    assert PRESETS["lfw"].kind == "pairs" and PRESETS["lfw"].kfold
    assert PRESETS["meds"].kind == "allpairs" and PRESETS["meds"].far_targets[0] == 1e-5
    assert PRESETS["ms1m"].kind == "allpairs" and PRESETS["ms1m"].far_targets[0] == 1e-4


def test_resolve_protocol_presets() -> None:
    keys = ["a/1.jpg", "a/2.jpg", "b/1.jpg", "c/1.jpg"]
    ids = ["a", "a", "b", "c"]
    proto, preset = resolve_protocol("lfw", keys=keys, identities=ids)
    assert preset is PRESETS["lfw"] and proto.counts()["pairs"] == 6000 and proto.n_folds == 10
    proto, preset = resolve_protocol("meds", keys=keys, identities=ids)
    assert preset is PRESETS["meds"] and proto.kind == "allpairs" and proto.images == keys
    c = proto.counts()
    assert (c["pairs"], c["genuine"], c["impostor"]) == (6, 1, 5)
    assert proto.resolve_indices(keys).tolist() == [0, 1, 2, 3]
    proto, preset = resolve_protocol("MS1M", keys=keys, identities=ids)
    assert preset is PRESETS["ms1m"]


def test_resolve_protocol_files(tmp_path: Path) -> None:
    write_protocol(tmp_path / "p.json", _pairs_protocol())
    proto, preset = resolve_protocol(str(tmp_path / "p.json"), keys=[], identities=[])
    assert preset is None and proto.sha256() == _pairs_protocol().sha256()
    (tmp_path / "mine.dat").write_text("1\nA\t1\t2\nA\t1\tB\t1\n")  # LFW text, detected by content
    proto, preset = resolve_protocol(str(tmp_path / "mine.dat"), keys=[], identities=[])
    assert preset is None and proto.counts()["pairs"] == 2
    with pytest.raises(InputError, match="neither a preset"):
        resolve_protocol("nonesuch", keys=[], identities=[])
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not an fvtool-protocol"):
        read_any_protocol(tmp_path / "bad.json")


# ---- all-pairs -------------------------------------------------------------------------------
def test_allpairs_counts_match_enumeration() -> None:
    rng = np.random.default_rng(0)
    ids = [f"p{int(x)}" for x in rng.integers(0, 9, size=40)]
    g, i = _brute(ids, list(range(40)))
    c = allpairs_counts(ids)
    assert (c["genuine"], c["impostor"], c["pairs"]) == (g, i, 40 * 39 // 2)
    assert c["min_far"] == 1 / i
    proto = allpairs_protocol([f"{x}/{k}.jpg" for k, x in enumerate(ids)], ids)
    pc = proto.counts()
    assert (pc["genuine"], pc["impostor"]) == (g, i)


def test_allpairs_subset_and_trials() -> None:
    ids = [f"p{k}" for k in range(10) for _ in range(k % 3 + 1)]
    keys = [f"{x}/{j}.jpg" for j, x in enumerate(ids)]
    sub = allpairs_protocol(keys, ids, subset=["p1", "p2", "p5"])
    assert sorted(set(sub.identities)) == ["p1", "p2", "p5"]
    assert (sub.counts()["genuine"], sub.counts()["impostor"]) == _brute(sub.identities, list(range(len(sub.images))))
    with pytest.raises(InputError, match="not in the dataset"):
        allpairs_protocol(keys, ids, subset=["nobody"])
    t1 = allpairs_trials(keys, ids, trials=4, test_identities=5, seed=3)
    t2 = allpairs_trials(list(reversed(keys)), list(reversed(ids)), trials=4, test_identities=5, seed=3)
    assert [sorted(trial_identities(t1, t)) for t in range(4)] == [sorted(trial_identities(t2, t)) for t in range(4)]
    t3 = allpairs_trials(keys, ids, trials=4, test_identities=5, seed=4)
    assert [trial_identities(t1, t) for t in range(4)] != [trial_identities(t3, t) for t in range(4)]
    for t, c in enumerate(per_trial_counts(t1)):
        idx = t1.trials[t].tolist()
        assert c["identities"] == 5
        assert (c["genuine"], c["impostor"]) == _brute(t1.identities, idx)
        assert training_identities(t1, t) == set(ids) - trial_identities(t1, t)
    total = t1.counts()
    assert total["pairs"] == sum(c["pairs"] for c in per_trial_counts(t1))
    half = allpairs_trials(keys, ids, trials=1, test_identities=0.5, seed=0)
    assert half.extra["test_identities_per_trial"] == 5


def test_allpairs_full_lfw_counts(lfw_full: Path) -> None:
    from fvtool.data.dataset import load_image_set

    s = load_image_set(lfw_full)
    c = allpairs_counts(s.identities)
    assert (c["images"], c["identities"]) == (13233, 5749)
    assert (c["pairs"], c["genuine"], c["impostor"]) == (87_549_528, 242_257, 87_307_271)
    proto, _ = resolve_protocol("meds", keys=s.keys, identities=s.identities)
    pc = proto.counts()
    assert (pc["pairs"], pc["genuine"], pc["impostor"]) == (87_549_528, 242_257, 87_307_271)
    assert pc["min_far"] == pytest.approx(1 / 87_307_271)
    # independent re-count from the folder sizes on disk
    sizes = [len([f for f in d.iterdir() if f.suffix == ".jpg"]) for d in lfw_full.iterdir() if d.is_dir()]
    assert sum(sizes) == 13233 and sum(n * (n - 1) // 2 for n in sizes) == 242_257


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/x.jpg", "a/../../b.jpg", "C:\\x.jpg", ""])
def test_protocol_file_with_escaping_key_refused(tmp_path: Path, key: str) -> None:
    p = _pairs_protocol()
    p.images[2] = key
    write_protocol(tmp_path / "p.json", p)  # the hash is right: only the key is bad
    with pytest.raises(InputError, match="not relative paths inside a data root"):
        read_protocol(tmp_path / "p.json")


def test_allpairs_max_per_identity_keeps_first_images_in_key_order() -> None:
    # p0 has 5 images given out of order, p1 has 2, p2 has 1
    keys = ["p0/e.jpg", "p1/a.jpg", "p0/a.jpg", "p0/d.jpg", "p2/a.jpg", "p0/b.jpg", "p1/b.jpg", "p0/c.jpg"]
    ids = [k.split("/")[0] for k in keys]
    capped = allpairs_protocol(keys, ids, max_per_identity=3, subset=["p0", "p1", "p2"])
    assert sorted(capped.images) == ["p0/a.jpg", "p0/b.jpg", "p0/c.jpg", "p1/a.jpg", "p1/b.jpg", "p2/a.jpg"]
    assert capped.extra["max_per_identity"] == 3
    # genuine pairs: C(3,2) + C(2,2) = 4; every other pair of the 6 images is an impostor pair
    assert (capped.counts()["genuine"], capped.counts()["impostor"]) == (4, 15 - 4)
    assert allpairs_protocol(keys, ids, max_per_identity=100).images == keys  # no cap reached: unchanged
    with pytest.raises(InputError, match="max_per_identity"):
        allpairs_protocol(keys, ids, max_per_identity=0)
