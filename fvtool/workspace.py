"""The workspace convention that lets short commands find the outputs of earlier stages.

`fvtool train --loss triplet --mining hard` works without paths because every stage writes
into a workspace folder in the current directory (default `./fvwork`, or $FVTOOL_WORKSPACE,
or `fvtool --workspace DIR ...`) and records its latest output in `fvwork/latest.json`.
A later stage asked for no input takes the recorded latest output of the stage before it.
Every path stays overridable on the command line.

Layout:
    fvwork/aligned/<dataset>/       align: crops in the input layout + manifest.csv
    fvwork/protocols/<name>.json    pairs: evaluation protocols
    fvwork/splits/<name>.json       pairs: identity splits (train/val/test)
    fvwork/runs/<run>/              train: config, checkpoints, history
    fvwork/embeddings/<name>.h5     embed: embeddings file
    fvwork/verify/<name>/           verify: metrics.json, scores, curves
    fvwork/identify/<name>.json     identify: closed-set identification accuracy
    fvwork/report/                  report: tables, figures, report.html
    fvwork/latest.json              {"align": ..., "protocol": ..., ...}: latest output per kind
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fvtool.atomic import output_lock, write_json
from fvtool.errors import InputError

DEFAULT_DIRNAME = "fvwork"
KINDS = ("align", "protocol", "split", "train", "embed", "verify", "identify", "report")
_SUBDIRS = {
    "align": "aligned",
    "protocol": "protocols",
    "split": "splits",
    "train": "runs",
    "embed": "embeddings",
    "verify": "verify",
    "identify": "identify",
    "report": "report",
}
_override: Path | None = None


def set_workspace_override(path: Path | None) -> None:
    """Called by the CLI's global `--workspace` option."""
    global _override
    _override = path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def current(cls) -> Workspace:
        if _override is not None:
            return cls(_override)
        env = os.environ.get("FVTOOL_WORKSPACE")
        return cls(Path(env) if env else Path.cwd() / DEFAULT_DIRNAME)

    def dir(self, kind: str) -> Path:
        """The default folder for outputs of `kind` (not created until something is written)."""
        return self.root / _SUBDIRS[kind]

    @property
    def _latest_file(self) -> Path:
        return self.root / "latest.json"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self._latest_file.read_text())
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as e:
            raise InputError(f"{self._latest_file} is unreadable ({e}); delete it or pass paths explicitly") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InputError(f"{self._latest_file} is not a JSON object of paths; delete it or pass paths explicitly")
        return data

    def record(self, kind: str, path: str | os.PathLike[str]) -> None:
        """Remember `path` as the latest output of stage `kind`.

        The read-modify-write runs under an exclusive lock (waiting up to a minute for another
        process's update), so two stages finishing at once both keep their entry."""
        if kind not in KINDS:
            raise ValueError(f"unknown output kind {kind!r}")
        with output_lock(self._latest_file, wait_s=60.0):
            data = self._read()
            data[kind] = str(Path(path).resolve())
            write_json(self._latest_file, data)

    def latest(self, kind: str) -> Path | None:
        value = self._read().get(kind)
        if value and Path(value).exists():
            return Path(value)
        return None

    def require_latest(self, kind: str, option: str, how: str) -> Path:
        """The latest output of `kind`, or a clear error saying which option or stage supplies it."""
        p = self.latest(kind)
        if p is None:
            raise InputError(
                f"no {kind} output recorded in workspace {self.root}; pass {option} or run `{how}` first"
            )
        return p
