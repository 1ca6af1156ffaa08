"""Where data lives: the shared data root, the embedded default data, and the project root.

Why environment variables: tests, benchmarks and shell scripts must find the same data without
editing code. `FVTOOL_DATA` points to the folder holding `lfw-deepfunneled/`, `lfw-protocol/`
and `att_faces/` (default: `../shared/data` next to the project checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_DATA = PROJECT_ROOT / "data" / "lfw-subset"


def shared_data_root() -> Path:
    """The full-data root: $FVTOOL_DATA, else ../shared/data beside the project checkout."""
    env = os.environ.get("FVTOOL_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (PROJECT_ROOT.parent / "shared" / "data").resolve()


def shared_path(*parts: str) -> Path | None:
    """A path under the shared data root, or None when it does not exist (callers skip/explain)."""
    p = shared_data_root().joinpath(*parts)
    return p if p.exists() else None
