"""MEDS-II (NIST Special Database 32, Multiple Encounter Dataset II): mugshots named by subject.

No copy of the data is on this machine and NIST's documentation was not reachable, so the reader
rests on these assumptions (docs/datasets.md repeats them; each is checked and reported, never
guessed silently):
- images are JPEG files anywhere under the folder (the release keeps them in a `data/` folder),
  named `S<subject>-<encounter>-...jpg`, e.g. `S001-01-t10_01.jpg`: the subject id is the text
  before the first `-` and must look like `S` + digits;
- an image may have a metadata text file with the same stem (`S001-01-t10_01.txt`) holding
  ANSI/NIST Type-10 fields, one per line as `NAME=VALUE`, `NAME: VALUE` or `NAME VALUE`; the subject
  pose field (`POS`, Type-10 field 10.020, also written `10.020`, `POSE` or `SPOSE`) says F (frontal),
  A (angled), L/R (left/right profile) or D (determined by angle);
- profile views (L, R) are left out of the set by default and counted (`not_written["profile view"]`):
  the thesis's MEDS-II test set is 1,216 mostly frontal photos of 518 people.
Checked: a file whose name carries no subject id, a metadata file without its image, a metadata file
with an unknown pose value; each is a `DataProblem`.
"""

from __future__ import annotations

import re
from collections import Counter
from itertools import islice
from pathlib import Path

from fvtool.data.imageset import DataProblem, ImageSet
from fvtool.data.scan import is_candidate

SUBJECT = re.compile(r"^(S\d+)-", re.IGNORECASE)
POSE_FIELDS = ("pos", "10.020", "pose", "spose")
POSES = {"f": "frontal", "a": "angled", "d": "angled", "l": "profile", "r": "profile"}
_FIELD = re.compile(r"^\s*([A-Za-z0-9_.]+)\s*(?:=|:|\s)\s*(.*?)\s*$")


def _images(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if is_candidate(p) and p.suffix.lower() in (".jpg", ".jpeg"))


def detect(path: Path) -> bool:
    """At least two JPEGs, and most of them named `S<digits>-...`."""
    jpegs = (p for p in path.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and is_candidate(p))
    names = [p.name for p in islice(jpegs, 200)]  # a look at the first files, not a walk of a large tree
    return len(names) >= 2 and sum(bool(SUBJECT.match(n)) for n in names) * 2 > len(names)


def _pose(meta: Path, problems: list[DataProblem]) -> str | None:
    for line in meta.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _FIELD.match(line)
        if m and m.group(1).lower() in POSE_FIELDS:
            value = m.group(2).strip().strip('"').lower()[:1]
            if value in POSES:
                return POSES[value]
            problems.append(DataProblem(str(meta), f"unknown pose value {m.group(2)[:20]!r} (expected F, A, D, L "
                                        "or R); image kept"))
            return None
    return None


def load(path: Path) -> ImageSet:
    problems: list[DataProblem] = []
    skipped: Counter[str] = Counter()
    keys: list[str] = []
    identities: list[str] = []
    images = _images(path)
    stems = {p.with_suffix("") for p in images}
    for meta in sorted(path.rglob("*.txt")):
        if SUBJECT.match(meta.name) and meta.with_suffix("") not in stems:
            problems.append(DataProblem(str(meta), "metadata for a missing image"))
    for img in images:
        m = SUBJECT.match(img.name)
        if m is None:
            problems.append(DataProblem(str(img), "file name carries no MEDS subject id (expected S<digits>-...)"))
            continue
        meta = img.with_suffix(".txt")
        pose = _pose(meta, problems) if meta.is_file() else None
        if pose == "profile":
            skipped["profile view"] += 1
            continue
        keys.append(img.relative_to(path).as_posix())
        identities.append(m.group(1).upper())
    return ImageSet(root=path, keys=keys, identities=identities, status=["ok"] * len(keys), source="meds",
                    problems=problems, not_written=skipped)
