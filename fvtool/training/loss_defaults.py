"""Defaults that depend on the loss and the training data, filled into the run's config before it is saved.

Why here and not in `TrainConfig`: the right logit scale of the fixed-scale cosine losses (normface,
cosface, arcface, combined_margin) depends on the number of training identities, which is known only
once the data is read. With the papers' s = 64 (tuned for 10k-100k identities) these losses stay near
chance on a few hundred classes (ArcFace at 2-4 % training accuracy in `fvtool demo`, study
3 at 5-25 % on LFW). So when neither `--scale` nor `--loss-opt scale=...` is given, the run gets AdaCos's
fixed scale sqrt(2) * ln(C - 1) (`fvtool.losses.classification.adacos_scale`), and these losses get a
one-epoch linear learning-rate warm-up unless `--warmup-epochs` is given (the recipe study 3 needed:
`--scale 16 --warmup-epochs 1`). Both values are written into the config (config.json, checkpoints),
so a run records what it used and `--config run/config.json` repeats it exactly.

Which losses: those whose factory declares `scale=None` (= "choose from the class count"); a loss opts
in by that default alone, so a new cosine-logit loss needs no change here.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

from fvtool.errors import InputError
from fvtool.training.config import TrainConfig

#: linear LR warm-up (epochs) of the fixed-scale cosine losses when --warmup-epochs is not given
COSINE_LOSS_WARMUP_EPOCHS = 1.0


def has_class_count_scale(loss: str) -> bool:
    """True when loss `loss` takes `scale` and chooses it from the class count when not given."""
    from fvtool.losses.registry import get_loss_spec

    try:
        spec = get_loss_spec(loss)
    except InputError:
        return False  # a method name (ae, vae, ...) or a typo; the method/loss resolution reports it
    param = inspect.signature(spec.factory).parameters.get("scale")
    return param is not None and param.default is None


def resolve_loss_defaults(config: TrainConfig, num_classes: int) -> tuple[TrainConfig, list[str]]:
    """(config with `scale` and `warmup_epochs` filled in where the user left them unset, notes saying so)."""
    from fvtool.losses.classification import adacos_scale

    auto = has_class_count_scale(config.loss) and (config.method in (None, "embedding", "joint"))
    updates: dict[str, float] = {}
    said: list[str] = []
    if auto and config.scale is None and "scale" not in config.loss_options:
        updates["scale"] = round(adacos_scale(num_classes), 4)
        said.append(f"scale s = {updates['scale']:g} = sqrt(2) ln(C - 1) for C = {num_classes} training identities "
                    "(AdaCos; --scale overrides)")
    if config.warmup_epochs is None:
        updates["warmup_epochs"] = COSINE_LOSS_WARMUP_EPOCHS if auto else 0.0
        if auto:
            said.append(f"{COSINE_LOSS_WARMUP_EPOCHS:g} warm-up epoch (--warmup-epochs overrides)")
    notes = [f"{config.loss}: {', '.join(said)}"] if said else []
    return (replace(config, **updates) if updates else config), notes
