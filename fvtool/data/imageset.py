"""The `ImageSet` record: the images of a dataset as later stages see them (keys, identities, status).

Where the bytes live: files under `root` (keys are relative paths), or records of a container
(`store`, e.g. a `.rec` file; `refs[i]` is image i's record). Stages read through `read_bytes(i)`
and name an image in messages with `name(i)`, so they never care which. Problems a reader found
while listing (a truncated record, a landmark row for a missing file) are in `problems`: those
images are not in `keys`, and every stage reports them (`report_problems`), nothing is dropped silently.

Why its own module: the dataset readers (fvtool/data/layouts.py and the modules it names) build
ImageSets and `fvtool.data.dataset.load_image_set` calls the readers; with the record here, below
both, neither imports the other in a cycle.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from fvtool.console import console
from fvtool.data.images import ImageReadError
from fvtool.data.scan import safe_join


class ImageStore(Protocol):
    """A container of encoded images addressed by an integer reference (a RecordIO file)."""

    path: Path

    def read_image(self, ref: int) -> bytes: ...

    def describe(self, ref: int) -> str: ...

    def signature(self) -> str: ...


@dataclass(frozen=True)
class DataProblem:
    """An image or record a reader could not take: where (file name or record), and why."""

    where: str
    reason: str


@dataclass
class ImageSet:
    root: Path
    keys: list[str]
    identities: list[str]
    status: list[str]
    source: str  # "manifest", "folder", or the layout: "recordio", "vggface2", "casia-webface", "meds", "course"
    not_written: Counter[str] = field(default_factory=Counter)
    store: ImageStore | None = None  # images are records of this container, not files under root
    refs: list[int] | None = None  # store reference of each key (with `store`)
    #: faces the dataset provides, one row per key: box x1 y1 x2 y2 then 5 landmarks (x y each) in source
    #: pixels, NaN where none is given (VGGFace2's bb_landmark files); `align` uses them instead of MTCNN
    faces: np.ndarray | None = None
    problems: list[DataProblem] = field(default_factory=list)
    prealigned: int | None = None  # side of already aligned crops (insightface sets: 112): align needs no detector

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, i: int) -> Path:
        """The file of image i (file-based sets only; containers have no file per image)."""
        if self.store is not None:
            raise TypeError(f"{self.store.path} holds its images as records, not files; use read_bytes")
        return safe_join(self.root, self.keys[i])

    def read_bytes(self, i: int) -> bytes:
        """The encoded image i (a file's bytes or a record's image); InputError naming it if unreadable."""
        if self.store is not None and self.refs is not None:
            return self.store.read_image(self.refs[i])
        path = self.path(i)
        try:
            return path.read_bytes()
        except OSError as e:
            reason = "file not found" if isinstance(e, FileNotFoundError) else f"cannot read file: {e.strerror or e}"
            raise ImageReadError(path, reason) from None

    def name(self, i: int) -> str:
        """Image i as messages name it: its file, or its container and record."""
        if self.store is not None and self.refs is not None:
            return self.store.describe(self.refs[i])
        return str(self.root / self.keys[i])

    def take(self, rows: np.ndarray | list[int]) -> ImageSet:
        """The images at `rows` as their own ImageSet (same root, store and problems)."""
        rows = [int(i) for i in rows]
        return replace(self, keys=[self.keys[i] for i in rows], identities=[self.identities[i] for i in rows],
                       status=[self.status[i] for i in rows],
                       refs=np.asarray(self.refs)[rows] if self.refs is not None else None,
                       faces=self.faces[rows] if self.faces is not None else None)

    def by_identity(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, ident in enumerate(self.identities):
            out.setdefault(ident, []).append(i)
        return out

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}



def report_problems(images: ImageSet, limit: int = 10) -> str:
    """A short text on the images a reader could not take ('' when none), for the console and errors."""
    if not images.problems:
        return ""
    reasons = Counter(p.reason.split(" (")[0] for p in images.problems)
    head = "; ".join(f"{n} x {r}" for r, n in reasons.most_common())
    lines = [f"{len(images.problems)} image(s)/record(s) of {images.root} could not be read and are left out: {head}"]
    lines += [f"  {p.where}: {p.reason}" for p in images.problems[:limit]]
    if len(images.problems) > limit:
        lines.append(f"  ... and {len(images.problems) - limit} more")
    return "\n".join(lines)


def warn_problems(images: ImageSet) -> None:
    """Print `report_problems` on the console (stderr) when the reader left images out."""
    if images.problems:
        console.print(f"[yellow]{report_problems(images)}[/]")
