"""CASIA-WebFace as distributed: numeric identity folders (`0000045/001.jpg`), optionally a cleaned list.

Without a list the folder is a plain identity folder (`load_image_set` reads it as such). With a
`cleaned_list.txt` in the root (the cleaned subsets circulated with CASIA-WebFace: one
`0000045\\001.jpg 0` line per kept image, a path and a class label, often with Windows separators)
only the listed images are read. Checked, each problem named by list line or file and left out: a
listed file that is missing, an image the list does not name, a line without a path and an integer
label, a label that is given to two folders or a folder given two labels (the list contradicts itself).
The identity of an image is its folder name; the label only has to agree with it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fvtool.data.imageset import DataProblem, ImageSet
from fvtool.data.lists import checked_list

LIST_NAME = "cleaned_list.txt"


def detect(path: Path) -> bool:
    return (path / LIST_NAME).is_file()


def load(path: Path) -> ImageSet:
    list_file = path / LIST_NAME
    problems: list[DataProblem] = []
    entries: list[tuple[int, str]] = []
    labels: dict[int, int] = {}
    text = list_file.read_text(encoding="utf-8", errors="replace").splitlines()
    for lineno, line in enumerate(text, start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError
            labels[lineno] = int(parts[1])
        except ValueError:
            problems.append(DataProblem(f"{list_file}:{lineno}", f"expected `path label`, got {line[:80]!r}"))
            continue
        entries.append((lineno, parts[0]))
    kept = checked_list(path, list_file, entries, problems)
    folder_label: dict[str, int] = {}
    label_folder: dict[int, str] = {}
    keys: list[str] = []
    for lineno, key in kept:
        folder, label = key.split("/", 1)[0], labels[lineno]
        if folder_label.setdefault(folder, label) != label or label_folder.setdefault(label, folder) != folder:
            problems.append(DataProblem(f"{list_file}:{lineno}", f"label {label} of {key} contradicts earlier lines "
                                        f"(folder {folder} has label {folder_label[folder]}, label {label} is "
                                        f"folder {label_folder[label]})"))
            continue
        keys.append(key)
    return ImageSet(root=path, keys=keys, identities=[k.split("/", 1)[0] for k in keys], status=["ok"] * len(keys),
                    source="casia-webface", problems=problems,
                    not_written=Counter({"bad entry": len(problems)}) if problems else Counter())
