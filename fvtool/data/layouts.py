"""Datasets in the layouts their publishers ship, recognised from a path and read into an ImageSet.

`detect_layout(path)` looks at the files (never at the name the user typed) and returns the reader
for the layout, or None for fvtool's own layouts (an aligned folder with its manifest, a plain
identity folder), which `load_image_set` reads itself. The layouts (docs/datasets.md):

- insightface RecordIO: a `.rec` file or a folder holding `train.rec` (fvtool/data/insightface_rec.py);
- VGGFace2: the `train/` or `test/` folder of a VGGFace2 release, recognised by the
  `<part>_list.txt` or `bb_landmark/` beside it (fvtool/data/vggface2.py);
- CASIA-WebFace with a `cleaned_list.txt` (fvtool/data/casia.py); without one it is a plain
  identity folder (numeric identity folders of `001.jpg` ...);
- MEDS-II (NIST SD32): a folder of mugshots named by subject (fvtool/data/meds.py);
- the course layout (seed 002): `cls_data/` with `train/`, `dev/` and `test/` identity folders
  (fvtool/data/course.py); each part is itself a plain identity folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fvtool.data import casia, course, insightface_rec, meds, vggface2
from fvtool.data.imageset import ImageSet
from fvtool.data.manifest import MANIFEST_NAME

Loader = Callable[[Path], ImageSet]


def detect_layout(path: Path) -> Loader | None:
    """The reader for the publisher layout at `path`, or None (manifest or plain identity folder)."""
    if insightface_rec.find_rec(path) is not None:
        return insightface_rec.load_rec_set
    if not path.is_dir() or (path / MANIFEST_NAME).is_file():
        return None
    for module in _folder_layouts():
        if module.detect(path):
            return module.load
    return None


def _folder_layouts() -> list:
    """The folder layouts, most specific first (each module has `detect(path)` and `load(path)`)."""
    return [vggface2, casia, meds, course]
