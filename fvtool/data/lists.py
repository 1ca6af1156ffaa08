"""Image lists shipped with datasets (VGGFace2 `train_list.txt`, CASIA-WebFace `cleaned_list.txt`):
the listed images checked against the files on disk.

Why one place: both lists say which files belong to the set, and the same three things go wrong
with them (a listed file is missing, a file on disk is not listed, a line is not a path inside the
root); each is a `DataProblem` naming the list line or the file, never a silent skip.
"""

from __future__ import annotations

from pathlib import Path

from fvtool.data.imageset import DataProblem
from fvtool.data.scan import IMAGE_EXTENSIONS, scan_identity_folder
from fvtool.errors import InputError


def checked_list(root: Path, list_file: Path, entries: list[tuple[int, str]], problems: list[DataProblem]
                 ) -> list[tuple[int, str]]:
    """The (line number, key) entries of `list_file` that name an image file under `root`, in key order.

    Keys use forward slashes (Windows-made lists are converted). Unlisted image files are reported.
    """
    present = {s.key for s in scan_identity_folder(root)}
    out: list[tuple[int, str]] = []
    seen: set[str] = set()
    for lineno, raw in entries:
        key = raw.strip().replace("\\", "/")
        where = f"{list_file}:{lineno}"
        parts = key.split("/")
        if len(parts) < 2 or key.startswith("/") or ".." in parts or Path(key).suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(DataProblem(where, f"not an `identity/image.jpg` path: {key[:80]!r}"))
        elif key not in present:
            problems.append(DataProblem(where, f"listed file {key} is missing"))
        elif key in seen:
            problems.append(DataProblem(where, f"{key} listed twice"))
        else:
            out.append((lineno, key))
            seen.add(key)
    for key in sorted(present - seen):
        problems.append(DataProblem(str(root / key), f"not in {list_file.name}; left out"))
    if not out:
        raise InputError(f"{list_file}: none of its lines names an image under {root}")
    return sorted(out, key=lambda e: e[1])
