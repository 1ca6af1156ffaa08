"""Scan a folder of identity sub-folders (LFW, AT&T, any ImageFolder layout).

Why relative keys: every later file (protocols, embeddings) names an image by its path relative
to the dataset root with forward slashes, e.g. `Aaron_Peirsol/Aaron_Peirsol_0001.jpg`, so files
stay valid when the data moves and keys can be checked to stay inside the root.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fvtool.errors import InputError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".pbm", ".pnm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)


@dataclass(frozen=True)
class ScannedImage:
    identity: str
    key: str  # path relative to the root, POSIX separators


def is_candidate(path: Path) -> bool:
    """Files a scan reports: image extensions, not hidden, not fvtool temporaries."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def scan_identity_folder(root: str | Path, include_all_files: bool = False) -> list[ScannedImage]:
    """List images as (identity = first-level folder name, key), sorted by key.

    `include_all_files=True` also returns non-image files inside identity folders, so `align`
    can record them as unreadable instead of silently ignoring them.
    Files directly in `root` are ignored (they belong to no identity).
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist or is not a folder")
    out: list[ScannedImage] = []
    for ident_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(ident_dir.rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            if include_all_files or f.suffix.lower() in IMAGE_EXTENSIONS:
                out.append(ScannedImage(ident_dir.name, f.relative_to(root).as_posix()))
    if not out:
        raise InputError(
            f"no images found under {root}: expected identity sub-folders such as "
            f"{root}/<Name>/<Name>_0001.jpg (LFW) or {root}/s1/1.pgm (AT&T)"
        )
    return out


def safe_join(root: str | Path, key: str) -> Path:
    """Join a key from a protocol/manifest to its root, refusing keys that escape the root.

    Why: protocol and embeddings files may come from others; a key like `../../etc/passwd`
    or an absolute path must never make fvtool read or write outside the data root.
    """
    p = PurePosixPath(key.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or not key:
        raise InputError(f"image key {key!r} is not a relative path inside the data root")
    root = Path(root)
    full = (root / Path(*p.parts)).resolve()
    if not full.is_relative_to(root.resolve()):
        raise InputError(f"image key {key!r} resolves outside the data root {root}")
    return full
