"""The course's layout (seed 002, 11-785 HW2P2): classification folders and a flat verification folder.

What seed 002 says (docs/sources, "7.1 File Structures"):
    "Each sub-folder in train and dev contains images of one person, and the name of that sub-folder
     represents their ID." -- `cls_data/train/<id>/`, `cls_data/dev/<id>/` (and `test/`)
    "ver_data: This is the folder of all face images with unknown identities."
    "test_pair.csv: ... each two sampled images are treated as a pair. And you need to predict a score
     for each pair"; the ImagePairDataset reads "a text file containing pairs of image paths and a match
     label (1 if they match, 0 if they don't)".
How fvtool reads it:
- each classification part is a plain identity folder: point `--data` at `cls_data/train` (training)
  or `cls_data/dev` (closed-set validation); pointing at `cls_data` itself is refused with that advice,
  because reading the parts together would silently train on the validation images;
- `ver_data` (images directly in the folder, no identity sub-folders) is read as a flat set: keys are
  the file names and every image is its own (unknown) identity, so `embed` can embed it;
- the pair list (`image_a image_b label`, or `image_a image_b` without labels) is read by
  fvtool/protocols/pair_list.py: a labelled list is a pairs protocol for `verify`, an unlabelled one is
  scored into the submission CSV by `fvtool interop pair-scores`.
"""

from __future__ import annotations

from pathlib import Path

from fvtool.data.imageset import ImageSet
from fvtool.data.scan import is_candidate
from fvtool.errors import InputError

CLS_PARTS = ("train", "dev", "test")


def _has_identity_folders(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())


def _flat_images(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if is_candidate(p))


def detect(path: Path) -> bool:
    """`cls_data` (train/ and dev/ or test/ identity folders) or a flat folder of images (`ver_data`)."""
    parts = [p for p in CLS_PARTS if _has_identity_folders(path / p)]
    if "train" in parts and len(parts) >= 2:
        return True
    return not any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()) and bool(_flat_images(path))


def load(path: Path) -> ImageSet:
    parts = [p for p in CLS_PARTS if _has_identity_folders(path / p)]
    if parts:
        raise InputError(f"{path} holds the course's classification parts ({', '.join(parts)}); point fvtool at one "
                         f"of them, e.g. --data {path / 'train'} to train and {path / 'dev'} to validate "
                         "(together they would mix training and validation images)")
    files = _flat_images(path)
    keys = [f.name for f in files]
    return ImageSet(root=path, keys=keys, identities=keys, status=["ok"] * len(keys),
                    source="flat (unknown identities)")
