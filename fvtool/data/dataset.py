"""`ImageSet`: the images of a dataset as later stages see them (keys, identities, status).

Why one loader: align, pairs, train and embed all accept "an aligned folder (with its manifest),
any identity folder, or a dataset in the form its publisher ships it" (insightface RecordIO,
VGGFace2, CASIA-WebFace, MEDS-II, the course layout: fvtool/data/layouts.py); this is the one
place that turns each into the same lists.
With a manifest, keys are the aligned outputs and the alignment status is kept (so `embed`
can flag failed alignments); images the manifest lists as not written are left out of `keys`
but counted in `not_written`.

The record itself (`ImageSet`, `DataProblem`, `report_problems`, `warn_problems`) is in fvtool/data/imageset.py and
is re-exported here, so `from fvtool.data.dataset import ImageSet, load_image_set` keeps working.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fvtool.data.imageset import DataProblem, ImageSet, ImageStore, report_problems, warn_problems
from fvtool.data.layouts import detect_layout
from fvtool.data.manifest import MANIFEST_NAME, WRITTEN_STATUSES, read_manifest
from fvtool.data.scan import scan_identity_folder
from fvtool.errors import InputError

__all__ = ["DataProblem", "ImageSet", "ImageStore", "load_image_set", "report_problems", "warn_problems"]


def load_image_set(path: str | Path, *, include_all_files: bool = False) -> ImageSet:
    """Load from a folder (using `manifest.csv` when present), a manifest file path, or a dataset in a
    publisher's layout (detected by fvtool/data/layouts.py: a `.rec` file or folder holding `train.rec`,
    a VGGFace2 `train`/`test` folder, CASIA-WebFace with `cleaned_list.txt`, MEDS-II, the course layout).

    `include_all_files`: plain identity folders also list non-image files (so `align` can record them).
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout is not None:
        return layout(path)
    if path.is_file():
        manifest, root = path, path.parent
    elif path.is_dir():
        root = path
        manifest = path / MANIFEST_NAME
    else:
        raise InputError(f"{path} does not exist (expected an aligned folder, a manifest or an identity folder)")
    if manifest.is_file():
        rows = read_manifest(manifest)
        kept = [r for r in rows if r.status in WRITTEN_STATUSES and r.key]
        skipped = Counter(r.status for r in rows if not (r.status in WRITTEN_STATUSES and r.key))
        if not kept:
            raise InputError(f"{manifest}: no aligned images (statuses: {dict(skipped)})")
        return ImageSet(
            root=root,
            keys=[r.key for r in kept],
            identities=[r.identity for r in kept],
            status=[r.status for r in kept],
            source="manifest",
            not_written=skipped,
        )
    scanned = scan_identity_folder(root, include_all_files=include_all_files)
    return ImageSet(
        root=root,
        keys=[s.key for s in scanned],
        identities=[s.identity for s in scanned],
        status=["ok"] * len(scanned),
        source="folder",
    )
