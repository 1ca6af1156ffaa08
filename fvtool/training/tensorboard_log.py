"""TensorBoard logging of a training run (`--log tensorboard`): scalars and the validation DET curve.

Why a second log next to history.jsonl: history.jsonl is the record fvtool reads back (report,
resume); TensorBoard is where people watch a long run live and compare runs side by side. Both get
the same numbers, written by the same engine call, so they cannot disagree.

Written to `<run>/tb/` with `torch.utils.tensorboard.SummaryWriter` (rank 0 only), at the global
optimisation step:
- every step: `step/loss`, `step/lr`;
- every epoch: `train/loss`, `train/<component>` (e.g. `train/ce`, `train/g`, `train/lambda`),
  `train/accuracy` (classification losses), `train/img_per_s`, `train/lr`, `stats/<name>` (the loss's
  batch statistics, e.g. active_fraction), `collapse/<name>` (metric losses);
- every validation: `val/<metric>` for every number the validation returns (accuracy, eer, auc,
  frr@far=..., time_s) and the figure `val/det` (the DET curve with its EER point, drawn by the report's
  `det_figure`).
A resumed run opens the writer (in `fit`) with `purge_step` = the resumed step + 1, so TensorBoard drops events an
interrupted session wrote past its last checkpoint and the curves continue without a fork.
`--log auto` (the default) logs when the `tensorboard` package is importable, unless the environment
variable FVTOOL_AUTO_TENSORBOARD=0 turns that default off (the test suite does: importing tensorboard
costs seconds per process); `--log tensorboard` always logs, `--log none` never.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from fvtool.errors import InputError

TB_DIRNAME = "tb"


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wants_tensorboard(mode: str) -> bool:
    """Whether `--log mode` writes TensorBoard events; `tensorboard` without the package is an error."""
    if mode == "none":
        return False
    if mode == "auto":
        return os.environ.get("FVTOOL_AUTO_TENSORBOARD", "1") != "0" and tensorboard_available()
    if not tensorboard_available():
        raise InputError("--log tensorboard: the tensorboard package is not installed "
                         "(pip install tensorboard), or use --log none")
    return True


def _numbers(prefix: str, values: dict[str, Any] | None) -> dict[str, float]:
    """The finite numeric entries of `values` as `prefix/key` (None, strings and nested data are skipped)."""
    out: dict[str, float] = {}
    for key, v in (values or {}).items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
            continue
        out[f"{prefix}/{key}"] = float(v)
    return out


class TensorBoardLog:
    """One run's event writer; every method takes the global step the record belongs to."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(run_dir) / TB_DIRNAME
        self.writer = SummaryWriter(str(self.folder), purge_step=purge_step)

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, global_step=step)

    def step(self, step: int, loss: float, lr: float) -> None:
        self._scalars({"step/loss": loss, "step/lr": lr}, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """An epoch record of history.jsonl (its validation, if any, included)."""
        step = int(record["step"])
        values = _numbers("train", {k: record.get(k) for k in ("loss", "lr", "img_per_s")})
        values |= _numbers("train", {"accuracy": record.get("train_accuracy")})
        values |= _numbers("train", record.get("components"))
        values |= _numbers("stats", record.get("stats"))
        collapse = record.get("collapse")
        values |= _numbers("collapse", collapse if isinstance(collapse, dict) else None)
        self._scalars(values, step)
        self.flush()

    def validation(self, step: int, metrics: dict[str, Any] | None,
                   scores: tuple[np.ndarray, np.ndarray] | None) -> None:
        """`val/<metric>` scalars and the DET figure from the (impostor, genuine) validation scores."""
        if metrics is None:
            return
        self._scalars(_numbers("val", metrics), step)
        if scores is not None:
            self.writer.add_figure("val/det", det_of(*scores, metrics), global_step=step, close=True)
        self.flush()

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def det_of(impostor: np.ndarray, genuine: np.ndarray, metrics: dict[str, Any]) -> Any:
    """The report's DET figure for one set of validation scores."""
    from fvtool.reporting.figures import det_figure
    from fvtool.reporting.records import RunData
    from fvtool.verification.metrics import det

    far, frr, _ = det(impostor, genuine)
    run = RunData(label="validation", eer=metrics.get("eer"), n_genuine=len(genuine), n_impostor=len(impostor),
                  det_far=far, det_frr=frr)
    return det_figure([run], mark_fars=())
