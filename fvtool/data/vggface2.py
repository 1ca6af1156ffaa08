"""VGGFace2 as released by Oxford VGG: `train/` and `test/` identity folders plus lists and landmarks.

Layout (the release's README and `bb_landmark/` files):
    <root>/train/n000002/0001_01.jpg         identity folder `n<6-digit class id>`, `<imageID>_<faceID>.jpg`
    <root>/test/...                          500 identities disjoint from train's 8,631
    <root>/train_list.txt, test_list.txt     one `n000002/0001_01.jpg` per line (relative to the part folder)
    <root>/bb_landmark/loose_bb_<part>.csv        "NAME_ID",X,Y,W,H         (NAME_ID = n000002/0001_01)
    <root>/bb_landmark/loose_landmark_<part>.csv  "NAME_ID",P1X,P1Y,...,P5X,P5Y
The five landmarks are, in order, left eye, right eye, nose, left and right mouth corner (as seen in
the image), the order of MTCNN and of the ArcFace template, so `align` maps them with the same
similarity transform it uses for MTCNN landmarks and runs MTCNN only for images without a row.

Point fvtool at the part folder (`<root>/train` or `<root>/test`). What is checked, each problem
named by file (or file and line) and left out: a list line whose file is missing, an image file the
list does not name, a landmark or box row for a file that is not in the set, a malformed row.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from fvtool.data.imageset import DataProblem, ImageSet
from fvtool.data.lists import checked_list
from fvtool.data.scan import scan_identity_folder
from fvtool.errors import InputError

PARTS = ("train", "test")


def _landmark_dir(part_dir: Path) -> Path:
    return part_dir.parent / "bb_landmark"


def detect(path: Path) -> bool:
    """A VGGFace2 part folder (its list or bb_landmark beside it), or a release root holding parts."""
    if path.name in PARTS and ((path.parent / f"{path.name}_list.txt").is_file() or _landmark_dir(path).is_dir()):
        return True
    return (path / "bb_landmark").is_dir() and any((path / p).is_dir() for p in PARTS)


def load(path: Path) -> ImageSet:
    if path.name not in PARTS:
        parts = [p for p in PARTS if (path / p).is_dir()]
        raise InputError(f"{path} is a VGGFace2 release folder; point fvtool at one part: "
                         + " or ".join(str(path / p) for p in parts))
    part = path.name
    problems: list[DataProblem] = []
    keys = _listed_keys(path, part, problems)
    identities = [k.split("/", 1)[0] for k in keys]
    faces = np.full((len(keys), 14), np.nan, dtype=np.float32)
    row_of = {k.rsplit(".", 1)[0]: i for i, k in enumerate(keys)}
    lm_dir = _landmark_dir(path)
    _read_csv(lm_dir / f"loose_bb_{part}.csv", 4, row_of, problems,
              lambda i, v: faces[i].__setitem__(slice(0, 4), [v[0], v[1], v[0] + v[2], v[1] + v[3]]))
    _read_csv(lm_dir / f"loose_landmark_{part}.csv", 10, row_of, problems,
              lambda i, v: faces[i].__setitem__(slice(4, 14), v))
    # a landmark row without a box row: the landmarks' own bounding box is the face box
    need = np.isnan(faces[:, 0]) & ~np.isnan(faces[:, 4])
    if need.any():
        pts = faces[need, 4:].reshape(-1, 5, 2)
        faces[need, 0:2], faces[need, 2:4] = pts.min(1), pts.max(1)
    return ImageSet(root=path, keys=keys, identities=identities, status=["ok"] * len(keys), source="vggface2",
                    faces=faces, problems=problems,
                    not_written=Counter({"bad entry": len(problems)}) if problems else Counter())


def _listed_keys(path: Path, part: str, problems: list[DataProblem]) -> list[str]:
    """Keys from `<part>_list.txt` (files checked to exist, unlisted files reported), else a folder scan."""
    list_file = path.parent / f"{part}_list.txt"
    if not list_file.is_file():
        return [s.key for s in scan_identity_folder(path)]
    lines = list_file.read_text(encoding="utf-8", errors="replace").splitlines()
    entries = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    return [key for _, key in checked_list(path, list_file, entries, problems)]


def _read_csv(path: Path, n: int, row_of: dict[str, int], problems: list[DataProblem], put) -> None:
    """Rows `NAME_ID,v1..vn` of a bb_landmark file; rows for files not in the set are problems."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        if len(header) != n + 1 or header[0].strip().strip('"') != "NAME_ID":
            raise InputError(f"{path}: expected a header `NAME_ID` + {n} columns, got {','.join(header)[:80]!r}")
        for lineno, rec in enumerate(reader, start=2):
            if not rec:
                continue
            where = f"{path}:{lineno}"
            name = rec[0].strip().strip('"').replace("\\", "/")
            try:
                if len(rec) != n + 1:
                    raise ValueError(f"{len(rec) - 1} numbers, expected {n}")
                values = [float(v) for v in rec[1:]]
                if not all(np.isfinite(values)):
                    raise ValueError("non-finite number")
            except ValueError as e:
                problems.append(DataProblem(where, f"malformed row for {name!r}: {e}"))
                continue
            i = row_of.get(name)
            if i is None:
                problems.append(DataProblem(where, f"{path.name} row for a missing file {name}.jpg"))
                continue
            put(i, values)
