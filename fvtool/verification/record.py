"""metrics.json, the verify stage's result, as one typed record: the stage writes it, the report,
the demo and `verify --threshold-from` read it back through the same class.

Why one class for both sides: the writer and the readers used to spell the file twice (dict
literals here, tolerant lookups in the report with other field names), so a renamed key failed
silently. `VerifyMetrics.to_json()` is what the file holds; `from_json()` refuses a file of
another format or version with an error naming the file. The sections that the stage fills from
several helpers (EER variants, k-fold, bootstrap, comparison, all-pairs facts) stay plain JSON
objects, documented field by field in docs/formats.md "Verify output"; the operating points are
`fvtool.verification.metrics.OperatingPoint`, the same class `ScoreTable.frr_at_far` returns and
the report tables read.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from fvtool.atomic import write_json
from fvtool.errors import InputError
from fvtool.verification.metrics import OperatingPoint

FORMAT = "fvtool-verify"
VERSION = 1
METRICS_NAME = "metrics.json"


def check_header(d: Any, fmt: str, version: int, where: str | Path) -> dict[str, Any]:
    """`d` if it is a JSON object of format `fmt` and version `version`, else an InputError naming `where`."""
    if not isinstance(d, dict) or d.get("format") != fmt:
        got = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise InputError(f"{where}: not an {fmt} file (format {got!r})")
    if d.get("version") != version:
        raise InputError(f"{where}: {fmt} version {d.get('version')!r} is not supported "
                         f"(this fvtool reads version {version})")
    return d


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def point_to_json(p: OperatingPoint) -> dict[str, Any]:
    """One entry of "operating_points" (key order as in docs/formats.md)."""
    return {"far_target": p.far_target, "measurable": p.measurable, "threshold": p.threshold,
            "above_max": p.above_max, "far": p.far, "frr": p.frr, "tar": p.tar,
            "false_accepts": p.false_accepts, "false_rejects": p.false_rejects, "exact": p.exact,
            "transaction": p.transaction, "ci": None if p.ci is None else {"frr": list(p.ci)}}


def point_from_json(d: Any, where: str) -> OperatingPoint:
    if not isinstance(d, dict) or "far_target" not in d:
        raise InputError(f"{where}: an operating point needs at least far_target (got {d!r})")
    ci = (d.get("ci") or {}).get("frr") if isinstance(d.get("ci"), dict) else None
    try:
        return OperatingPoint(
            far_target=float(d["far_target"]), frr=_opt_float(d.get("frr")), far=_opt_float(d.get("far")),
            threshold=_opt_float(d.get("threshold")), measurable=bool(d.get("measurable", True)),
            ci=(float(ci[0]), float(ci[1])) if isinstance(ci, list) and len(ci) == 2 and None not in ci else None,
            above_max=bool(d.get("above_max", False)), false_accepts=d.get("false_accepts"),
            false_rejects=d.get("false_rejects"), exact=bool(d.get("exact", True)),
            transaction=d.get("transaction"))
    except (TypeError, ValueError) as e:
        raise InputError(f"{where}: malformed operating point ({e})") from None


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


Section = dict[str, Any]


@dataclass
class VerifyMetrics:
    """The content of a verify output's metrics.json (docs/formats.md "Verify output")."""

    # required: what every version-1 file has
    embeddings: Section  # path, name, sha256, n, dim, attrs (the embeddings file's provenance)
    protocol: Section  # spec, name, kind, preset, source, sha256, images, identities, folds
    scoring: Section  # Scoring.describe()
    counts: Section  # genuine, impostor, min_far
    eer: Section  # value, threshold, far, frr, rule, exact
    operating_points: list[OperatingPoint]
    # the rest: always written by this fvtool; readers get {} / None where an older file lacks one
    created: str = ""
    fvtool_version: str = ""
    elapsed_s: float | None = None
    fta: Section = field(default_factory=dict)  # failure-to-acquire rule and rates
    training_overlap: Section | None = None  # protocol identities the embeddings' training run saw
    warnings: list[str] = field(default_factory=list)
    eer_rocch: Section = field(default_factory=dict)
    eer_interp: Section = field(default_factory=dict)
    auc: Section = field(default_factory=dict)  # value, error_bound
    min_hter: Section = field(default_factory=dict)
    intersection: Section = field(default_factory=dict)
    fixed_threshold: Section | None = None
    kfold: Section | None = None
    primary: Section = field(default_factory=dict)  # metric, far_target, value, label: the headline number
    bootstrap: Section | None = None
    comparison: Section | None = None
    ijb: Section | None = None  # IJB-B/C template protocols: template facts and insightface's TAR@FAR
    allpairs: Section | None = None
    files: dict[str, str | None] = field(default_factory=dict)

    def point(self, far_target: float) -> OperatingPoint | None:
        return next((p for p in self.operating_points if p.far_target == far_target), None)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for name in _FILE_ORDER:
            value = getattr(self, name)
            d[name] = [point_to_json(p) for p in value] if name == "operating_points" else value
        return d

    @classmethod
    def from_json(cls, d: Any, where: str | Path) -> VerifyMetrics:
        check_header(d, FORMAT, VERSION, where)
        names = {f.name for f in fields(cls)}
        missing = sorted(f.name for f in fields(cls)
                         if f.name not in d and f.default is MISSING and f.default_factory is MISSING)
        if missing:
            raise InputError(f"{where}: {FORMAT} file without {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in names}
        for k, v in kw.items():
            optional = k in _OPTIONAL_OBJECTS
            if (k in _OBJECTS or optional) and not (isinstance(v, dict) or (optional and v is None)):
                raise InputError(f"{where}: {k!r} must be a JSON object, not {type(v).__name__}")
        for k in ("operating_points", "warnings"):
            if k in d and not isinstance(d[k], list):
                raise InputError(f"{where}: {k!r} must be a list")
        kw["operating_points"] = [point_from_json(p, f"{where}: operating_points[{i}]")
                                  for i, p in enumerate(d["operating_points"])]
        return cls(**kw)

    @classmethod
    def read(cls, path: str | Path) -> VerifyMetrics:
        """A metrics.json file, or the metrics.json of a verify output folder."""
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_NAME
        return cls.from_json(read_json_file(path), path)

    def write(self, path: str | Path) -> None:
        write_json(Path(path), self.to_json())


#: the keys of metrics.json in file order (after format and version)
_FILE_ORDER = ("created", "fvtool_version", "elapsed_s", "embeddings", "protocol", "scoring", "counts", "fta",
               "training_overlap", "warnings", "eer", "eer_rocch", "eer_interp", "auc", "min_hter", "intersection",
               "fixed_threshold", "operating_points", "kfold", "primary", "bootstrap", "comparison", "ijb", "allpairs",
               "files")
_OBJECTS = ("embeddings", "protocol", "scoring", "counts", "eer", "fta", "eer_rocch", "eer_interp", "auc", "min_hter",
            "intersection", "primary", "files")
_OPTIONAL_OBJECTS = ("training_overlap", "fixed_threshold", "kfold", "bootstrap", "comparison", "ijb", "allpairs")
