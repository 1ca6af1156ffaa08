"""Checkpoints: plain state dicts plus the JSON config, safe to load from others.

A checkpoint (`<run>/checkpoints/last.pt`, `best.pt`) is a `torch.save`d dict holding only
tensors, numbers, strings, lists and dicts, so it loads with `torch.load(weights_only=True)`
(no pickled code runs, whoever wrote the file):

    format, version         "fvtool-checkpoint", 1
    config                  the resolved TrainConfig as a JSON string
    num_classes             classes of the training objective (to rebuild the method)
    method                  state dict of the whole method (embedder, loss head, decoder, ...)
    embedder                state dict of `method.embedder` only (what `embed`/`--init-from` need)
    optimizer, schedule, scaler   optimiser, LR schedule and fp16 grad-scaler states
    sampler                 {kind, seed, cap, epoch, position}
    rng                     {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    progress                {epoch, step, epoch_done} plus the running epoch meters (JSON)
    history                 the history records so far (JSON string), rewritten on resume
    best                    {metric, value, epoch, step} of the best evaluation so far (JSON)
    data                    {fingerprint, n_train, identities_sha256, ...} (JSON), checked on resume
    world_size              processes that trained the run (1 without DDP; absent in older files = 1);
                            resuming with another count is refused

Writes are atomic (temporary file, then rename), so a run killed while saving keeps the previous
checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fvtool.atomic import atomic_path
from fvtool.data.transforms import Normalisation
from fvtool.errors import InputError
from fvtool.training.config import TrainConfig
from fvtool.training.methods import Method, MethodContext, build_method

CKPT_FORMAT = "fvtool-checkpoint"
CKPT_VERSION = 1
CKPT_DIRNAME = "checkpoints"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    state = {"format": CKPT_FORMAT, "version": CKPT_VERSION, **state}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with weights_only=True onto the CPU; refuse files that are not fvtool checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "not a safe checkpoint"
        raise InputError(f"{path}: cannot load as a plain state-dict checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise InputError(f"{path}: not an {CKPT_FORMAT} file (fvtool trains and reads its own checkpoints; "
                         "for external weights use the backbone's weights option)")
    if state.get("version") != CKPT_VERSION:
        raise InputError(f"{path}: checkpoint version {state.get('version')} is not supported "
                         f"(expected {CKPT_VERSION})")
    return state


def resolve_checkpoint(run_or_ckpt: str | Path, prefer: str = "best") -> Path:
    """A checkpoint file from a run folder (best.pt, else last.pt) or a checkpoint path."""
    p = Path(run_or_ckpt)
    if p.is_file():
        return p
    if p.is_dir():
        folder = p / CKPT_DIRNAME if (p / CKPT_DIRNAME).is_dir() else p
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (folder / name).is_file():
                return folder / name
        raise InputError(f"{p}: no checkpoint found (expected {CKPT_DIRNAME}/best.pt or last.pt); "
                         "was the run interrupted before its first epoch ended?")
    raise InputError(f"{p} is neither a run folder nor a checkpoint file")


def json_field(state: dict[str, Any], key: str) -> Any:
    value = state.get(key)
    return json.loads(value) if isinstance(value, str) else value


def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trained_method(path: str | Path, prefer: str = "best") -> tuple[Method, TrainConfig, dict[str, Any], Path]:
    """Rebuild a run's method from a checkpoint (for `embed`, ONNX export, .bin evaluation):
    (method, config, checkpoint state, checkpoint path)."""
    ckpt = resolve_checkpoint(path, prefer=prefer)
    state = load_checkpoint(ckpt)
    config = TrainConfig.from_dict(json_field(state, "config"), where=f"{ckpt} config")
    ctx = MethodContext(config, int(state["num_classes"]), Normalisation.named(config.normalisation))
    method = build_method(ctx)
    weights = state["method"]
    if config.partial_fc is not None:  # the class rows are sharded per process; embedding needs none of them
        weights = {k: v for k, v in weights.items() if not k.startswith("loss.")}
        weights |= {f"loss.{k}": v for k, v in method.loss.state_dict().items()}  # type: ignore[union-attr]
    try:
        method.load_state_dict(weights)
    except RuntimeError as e:
        raise InputError(f"{ckpt}: weights do not fit the network its config describes ({e})") from None
    return method, config, state, ckpt
