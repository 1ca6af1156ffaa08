"""The "not learning" alarm, for every run (the collapse alarm in collapse.py covers metric losses only).

Why: a run whose loss is mis-set (ArcFace at s = 64 on a hundred identities, too high a learning rate,
a frozen backbone) trains for its whole budget without failing, and its numbers then look like a
finding about the loss (`fvtool demo` ranked ArcFace worst while it sat at 2-4 % training
accuracy). After `NOT_LEARNING_EPOCHS` epochs, each epoch is checked for two symptoms:

  near chance  the epoch's training accuracy (classifier heads) is below
               chance + NEAR_CHANCE_FRACTION * (1 - chance), chance = 1 / number of classes
               (for 110 classes: below 5.9 %; a learning run of the demo is far above it by epoch 3);
  flat loss    no epoch since the first has a mean loss at least FLAT_FRACTION below the first
               epoch's (judged against the first epoch, not the last few, so that the natural
               flattening at the end of a cosine schedule is not mistaken for it).

The check reads only the run's history, so it needs no state across a resume. The verdict goes into
the epoch's history record (`learning`), the terminal (once, when it first fires) and the training
summary. It warns and never stops a run: a slow start can recover, and the user decides.
"""

from __future__ import annotations

from typing import Any

#: epochs before the check starts (a first epoch, and a warm-up, may legitimately look flat)
NOT_LEARNING_EPOCHS = 3
#: "near chance": within this fraction of the way from chance to perfect training accuracy
NEAR_CHANCE_FRACTION = 0.05
#: "flat": the best later epoch's mean loss is not this fraction below the first epoch's
FLAT_FRACTION = 0.01


def learning_check(epochs: list[dict[str, Any]], n_classes: int | None,
                   min_epochs: int = NOT_LEARNING_EPOCHS) -> dict[str, Any] | None:
    """The verdict for the last of `epochs` (history records of kind "epoch", oldest first), or None
    before `min_epochs` epochs. `n_classes`: the classifier's number of classes (None: no accuracy)."""
    if len(epochs) < max(2, min_epochs):
        return None
    last = epochs[-1]
    acc = last.get("train_accuracy")
    near_chance = None
    chance = None
    if acc is not None and n_classes and n_classes >= 2:
        chance = 1.0 / n_classes
        near_chance = acc < chance + NEAR_CHANCE_FRACTION * (1.0 - chance)
    losses = [r.get("loss") for r in epochs]
    flat = False
    if all(isinstance(v, int | float) for v in losses):
        first = float(losses[0])
        flat = min(losses[1:]) > first - FLAT_FRACTION * abs(first)
    message = None
    if near_chance or flat:
        what = []
        if near_chance:
            what.append(f"training accuracy {100 * acc:.1f} % is near chance ({100 * chance:.2g} % for {n_classes} "
                        "classes)")
        if flat:
            what.append(f"the loss has not fallen {100 * FLAT_FRACTION:g} % below epoch 1's ({losses[0]:.4g} -> "
                        f"{losses[-1]:.4g})")
        message = (f"not learning after {len(epochs)} epochs: {' and '.join(what)}. Check --lr (lower it if the "
                   "loss jumps, raise it if it creeps), the margin loss's --scale/--margin (its defaults suit the "
                   "class count, see `fvtool train --help`), --warmup-epochs, and the data (labels, --crop).")
    return {"epoch": int(last.get("epoch", len(epochs))), "near_chance": near_chance, "flat_loss": flat,
            "not_learning": bool(near_chance or flat), "message": message}
