"""Rebuild data/lfw-subset from the full LFW deep-funneled folder.

Why a script: the embedded data must be reproducible from its documented source, not a
hand-picked folder. Selection: identities with >= 10 images, their first 10 files by name.
Usage: python scripts/make_subset.py [SRC] [DST]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(src: Path, dst: Path, min_images: int = 10, take: int = 10) -> int:
    count = 0
    for person in sorted(p for p in src.iterdir() if p.is_dir()):
        files = sorted(f for f in person.iterdir() if f.is_file())
        if len(files) < min_images:
            continue
        (dst / person.name).mkdir(parents=True, exist_ok=True)
        for f in files[:take]:
            shutil.copy2(f, dst / person.name / f.name)
            count += 1
    print(f"copied {count} images into {dst}")
    return 0


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent / "shared/data/lfw-deepfunneled"
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "data/lfw-subset"
    sys.exit(main(src, dst))
