"""`fvtool demo`: the main job end to end on the embedded LFW subset (see fvtool/pipeline.py)."""

from pathlib import Path
from typing import Annotated

import typer

from fvtool.errors import RERUN_TO_RESUME, Interrupted


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    losses: Annotated[str, typer.Option("--losses", help="Comma-separated losses to train and compare.")]
    = "softmax,arcface,triplet",
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs per loss.")] = 12,
    data: Annotated[Path | None, typer.Option("--data", help="Identity folder to run on (default: the embedded "
                                              "LFW subset, data/lfw-subset).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, help="Seed of every random choice (split, pairs, training).")] = 0,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch CPU threads of every stage (default: torch's "
                                                "choice, or 1 for all stages when the machine is busy).",
                                                show_default=False)] = None,
) -> None:
    """Run align -> pairs -> train -> embed -> verify -> report on the embedded data and print where the report is.

    Trains each loss on 70% of the identities, validates on 10%, and evaluates on the held-out 20%
    (k-fold pairs and all pairs). Outputs go to the workspace (default ./fvwork); rerunning reuses them.
    """
    from fvtool.pipeline import DemoPlan, run_demo
    from fvtool.settings import EMBEDDED_DATA

    plan = DemoPlan(data=data or EMBEDDED_DATA, losses=tuple(x.strip() for x in losses.split(",") if x.strip()),
                    epochs=epochs, seed=seed, threads=threads)
    try:
        run_demo(plan)
    except (KeyboardInterrupt, Interrupted):  # a stage's own hint names its command; the demo reruns them all
        raise Interrupted(f"{RERUN_TO_RESUME} (finished stages are reused, an interrupted training run "
                          "continues from its last checkpoint)") from None
