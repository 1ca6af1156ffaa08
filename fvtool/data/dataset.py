"""`ImageSet`: the images of a dataset as later stages see them (keys, identities, status).

Why one loader: pairs, train and embed all accept "an aligned folder (with its manifest) or
any identity folder"; this is the one place that turns either into the same lists.
With a manifest, keys are the aligned outputs and the alignment status is kept (so `embed`
can flag failed alignments); images the manifest lists as not written are left out of `keys`
but counted in `not_written`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fvtool.data.manifest import MANIFEST_NAME, WRITTEN_STATUSES, read_manifest
from fvtool.data.scan import safe_join, scan_identity_folder
from fvtool.errors import InputError


@dataclass
class ImageSet:
    root: Path
    keys: list[str]
    identities: list[str]
    status: list[str]
    source: str  # "manifest" or "folder"
    not_written: Counter[str] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, i: int) -> Path:
        return safe_join(self.root, self.keys[i])

    def by_identity(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, ident in enumerate(self.identities):
            out.setdefault(ident, []).append(i)
        return out

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}


def load_image_set(path: str | Path) -> ImageSet:
    """Load from a folder (using `manifest.csv` when present) or from a manifest file path."""
    path = Path(path)
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
    scanned = scan_identity_folder(root)
    return ImageSet(
        root=root,
        keys=[s.key for s in scanned],
        identities=[s.identity for s in scanned],
        status=["ok"] * len(scanned),
        source="folder",
    )
