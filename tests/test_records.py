"""metrics.json as one typed record: the verify stage writes `VerifyMetrics`, the report reads it back.

Why: the writer and the reader used to spell the file twice (dict literals in the stage, tolerant
lookups with other field names in the report). These tests pin the shared record: a round trip
keeps every field and the file's key order, the report's operating points are the same class the
stage writes, and a file of another format or version is refused with its path in the message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fvtool.errors import InputError
from fvtool.reporting.loading import read_identify_file, read_verify_dir
from fvtool.verification.metrics import OperatingPoint, ScoreTable
from fvtool.verification.record import FORMAT, VERSION, VerifyMetrics


def _record() -> VerifyMetrics:
    t = ScoreTable.from_scores([0.1, 0.2, 0.3, 0.45, 0.6], [0.4, 0.7, 0.8, 0.9])
    ops = [t.frr_at_far(0.2), t.frr_at_far(0.01)]
    ops[0].ci = (0.0, 0.5)
    ops[1].transaction = {"far": 0.0, "frr": 0.3}
    e = t.eer()
    return VerifyMetrics(
        embeddings={"path": "/x/e.h5", "name": "e", "sha256": "ab" * 32, "n": 9, "dim": 4,
                    "attrs": {"loss": "arcface"}},
        protocol={"name": "p", "kind": "pairs", "sha256": "cd" * 32, "identities": 3},
        scoring={"metric": "cosine", "normalise": True}, counts={"genuine": 4, "impostor": 5, "min_far": 0.2},
        eer={"value": e.value, "threshold": e.threshold}, operating_points=ops, created="2026-01-01T00:00:00+00:00",
        fvtool_version="0", primary={"metric": "frr_at_far", "far_target": 0.2, "value": ops[0].frr},
        files={"det": "det.csv", "roc": "roc.csv", "scores": None})


def test_round_trip_keeps_fields_order_and_points(tmp_path: Path) -> None:
    rec = _record()
    rec.write(tmp_path / "metrics.json")
    raw = json.loads((tmp_path / "metrics.json").read_text())
    assert list(raw)[:5] == ["format", "version", "created", "fvtool_version", "elapsed_s"]
    assert raw["format"] == FORMAT and raw["version"] == VERSION and list(raw)[-1] == "files"
    assert list(raw["operating_points"][0]) == ["far_target", "measurable", "threshold", "above_max", "far", "frr",
                                                "tar", "false_accepts", "false_rejects", "exact", "transaction", "ci"]
    assert raw["operating_points"][0]["ci"] == {"frr": [0.0, 0.5]} and raw["operating_points"][1]["ci"] is None
    back = VerifyMetrics.read(tmp_path)
    assert back == rec and back.to_json() == raw
    assert back.point(0.01).transaction == {"far": 0.0, "frr": 0.3} and back.point(0.5) is None


def test_the_report_reads_the_same_record(tmp_path: Path) -> None:
    rec = _record()
    rec.write(tmp_path / "metrics.json")
    r = read_verify_dir(tmp_path)
    assert all(type(p) is OperatingPoint for p in r.points) and r.points == rec.operating_points
    assert r.point(0.2).ci == (0.0, 0.5) and r.eer == rec.eer["value"] and r.loss == "arcface"
    assert r.n_genuine == 4 and r.metric == "cosine" and r.protocol == "p"


@pytest.mark.parametrize("change, message", [
    ({"version": 2}, "fvtool-verify version 2 is not supported"),
    ({"format": "fvtool-identify"}, "not an fvtool-verify file"),
    ({"eer": 0.1}, "'eer' must be a JSON object"),
    ({"operating_points": [{"frr": 0.1}]}, r"operating_points\[0\]: an operating point needs"),
])
def test_other_versions_and_malformed_files_are_refused_naming_the_file(tmp_path: Path, change: dict,
                                                                        message: str) -> None:
    raw = _record().to_json() | change
    (tmp_path / "metrics.json").write_text(json.dumps(raw))
    with pytest.raises(InputError, match=message) as e:
        VerifyMetrics.read(tmp_path / "metrics.json")
    assert str(tmp_path / "metrics.json") in str(e.value)


def test_a_file_without_a_required_section_is_refused() -> None:
    raw = _record().to_json()
    del raw["counts"]
    with pytest.raises(InputError, match=r"m\.json: fvtool-verify file without counts"):
        VerifyMetrics.from_json(raw, "m.json")
    raw = _record().to_json()
    del raw["min_hter"], raw["ijb"]  # sections a reader can do without default to empty
    assert VerifyMetrics.from_json(raw, "m.json").min_hter == {}


def test_identify_files_share_the_header_check(tmp_path: Path) -> None:
    f = tmp_path / "i.json"
    f.write_text(json.dumps({"format": "fvtool-identify", "version": 7}))
    with pytest.raises(InputError, match=r"fvtool-identify version 7 is not supported"):
        read_identify_file(f)
