"""The alignment manifest: one row per input image, written by `align`, read by later stages.

Format (CSV with a header, UTF-8; documented in docs/formats.md):
    identity   first-level folder name of the input image
    src        input path relative to the source root
    key        output path relative to the aligned root ("" when nothing was written)
    status     ok | fallback | no_face | unreadable | error
               ok        face detected and aligned
               fallback  no face found, centre crop written (--on-fail center-crop, LFW convention)
               no_face   no face found, nothing written (--on-fail skip)
               unreadable the file could not be decoded (zero-byte, truncated, not an image)
               error     another failure; see reason
    prob       detector probability of the kept face ("" if none)
    box        x1 y1 x2 y2 of the kept face in source pixels, space separated ("" if none)
    landmarks  10 numbers: left eye, right eye, nose, left mouth, right mouth (x y each), source pixels
    reason     human-readable failure reason ("" when ok)
    width,height  source image size ("" when unreadable)
    n_faces    number of faces the detector found

Why CSV: it opens in a spreadsheet, diffs well and streams; the numeric columns are few.
The manifest is written atomically (temporary name, then rename) after every chunk of work,
so an interrupted `align` can resume from it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from fvtool.atomic import write_text
from fvtool.errors import InputError

MANIFEST_NAME = "manifest.csv"
STATUSES = ("ok", "fallback", "no_face", "unreadable", "error")
#: statuses for which an aligned image file exists
WRITTEN_STATUSES = ("ok", "fallback")


@dataclass
class ManifestRow:
    identity: str
    src: str
    key: str = ""
    status: str = "error"
    prob: float | None = None
    box: list[float] | None = None
    landmarks: list[float] | None = None
    reason: str = ""
    width: int | None = None
    height: int | None = None
    n_faces: int = 0
    extra: dict[str, str] = field(default_factory=dict, repr=False)


_COLUMNS = [f.name for f in fields(ManifestRow) if f.name != "extra"]


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(f"{v:.2f}" for v in value)
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


def _floats(text: str, n: int, where: str) -> list[float] | None:
    if not text:
        return None
    parts = text.split()
    if len(parts) != n:
        raise InputError(f"{where}: expected {n} numbers, got {text!r}")
    return [float(p) for p in parts]


def format_manifest(rows: list[ManifestRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_COLUMNS)
    for r in rows:
        d = asdict(r)
        w.writerow([_fmt(d[c]) for c in _COLUMNS])
    return buf.getvalue()


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> None:
    write_text(path, format_manifest(rows))


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read and validate a manifest; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("identity", "src", "key", "status") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: not an fvtool manifest (missing columns {', '.join(missing)})")
        rows = []
        for lineno, rec in enumerate(reader, start=2):
            where = f"{path}:{lineno}"
            status = rec["status"]
            if status not in STATUSES:
                raise InputError(f"{where}: unknown status {status!r} (expected one of {', '.join(STATUSES)})")
            try:
                rows.append(
                    ManifestRow(
                        identity=rec["identity"],
                        src=rec["src"],
                        key=rec["key"],
                        status=status,
                        prob=float(rec["prob"]) if rec.get("prob") else None,
                        box=_floats(rec.get("box", ""), 4, where),
                        landmarks=_floats(rec.get("landmarks", ""), 10, where),
                        reason=rec.get("reason", ""),
                        width=int(rec["width"]) if rec.get("width") else None,
                        height=int(rec["height"]) if rec.get("height") else None,
                        n_faces=int(rec["n_faces"]) if rec.get("n_faces") else 0,
                        extra={k: v for k, v in rec.items() if k not in _COLUMNS and k is not None},
                    )
                )
            except ValueError as e:
                raise InputError(f"{where}: {e}") from e
    return rows
