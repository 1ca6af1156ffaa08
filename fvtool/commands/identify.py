"""`fvtool identify [EMBEDDINGS.h5 ...]`: closed-set identification accuracy of classifiers on embeddings.

Thin wrapper over `fvtool.identification.stage.identify`: picks the workspace default (the latest
`embed` output), prints the summary table (one row per file and classifier) and the written JSON
paths (stdout, one per line, for scripts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

CLASSIFIER_HELP = ("logreg = multinomial logistic regression (the 'linear classifier'), ncm = nearest class mean "
                   "(cosine), 1nn = nearest training image (cosine); ncm and 1nn need no training and show "
                   "whether the linear layer adds anything. Repeatable: all share one split.")


def register(app: typer.Typer) -> None:
    app.command("identify", help=(
        "Closed-set identification: split each identity's images into train/test (seeded, per identity), fit a "
        "classifier on the L2-normalised training embeddings and report top-1/top-5 accuracy on the test images, "
        "with chance levels. Outputs: <workspace>/identify/<embeddings>[-<split>-<part>]-<classifier>.json "
        "(see docs/formats.md)."
    ))(identify_command)


def identify_command(
    embeddings: Annotated[list[Path] | None, typer.Argument(
        help="Embeddings HDF5 file(s) (from `fvtool embed`). Default: the latest embed output of the workspace.",
        show_default=False)] = None,
    classifier: Annotated[list[str] | None, typer.Option(
        "--classifier", "-c", help=f"{CLASSIFIER_HELP} Default: logreg.", show_default=False)] = None,
    train_fraction: Annotated[float, typer.Option(
        "--train-fraction", help="Fraction of each identity's images used for training (rounded, at least one "
                                 "image on each side).")] = 0.5,
    min_images: Annotated[int, typer.Option(
        "--min-images", help="Keep identities with at least this many images (>= 2); the others are dropped and "
                             "counted.")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the per-identity train/test split: same seed, same "
                                      "split, whatever the file order.")] = 0,
    logreg_c: Annotated[float, typer.Option("--logreg-c", help="Inverse L2 regularisation strength C of the "
                                            "logistic regression (scikit-learn's C; its default 1 underfits "
                                            "unit-length embeddings, see docs/identify.md).")] = 100.0,
    max_iter: Annotated[int, typer.Option("--max-iter", help="Iteration limit of the logistic regression (lbfgs); "
                                          "a warning says when it did not converge.")] = 1000,
    split: Annotated[Path | None, typer.Option(
        "--split", help="Identity split file (`fvtool pairs split`): use only the identities of one of its parts "
                        "(--part), e.g. those the model was not trained on.", show_default=False)] = None,
    part: Annotated[str, typer.Option("--part", help="Part of --split to use: train, val or test.")] = "test",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="A .json file (one embeddings file and one classifier), or a folder for the default "
                               "file names. Default: <workspace>/identify/.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Output name: <workspace>/identify/NAME.json (one embeddings file and one classifier).",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    from fvtool.identification.stage import IdentifyOptions, identify, print_summary, raise_for_failures
    from fvtool.workspace import Workspace

    if not embeddings:
        embeddings = [Workspace.current().require_latest("embed", "an embeddings file", "fvtool embed")]
    run = identify(embeddings, IdentifyOptions(
        classifiers=tuple(classifier or ("logreg",)), train_fraction=train_fraction, min_images=min_images,
        seed=seed, C=logreg_c, max_iter=max_iter, split=split, part=part, output=output, name=name,
        show_progress=not quiet))
    print_summary(run)
    for o in run.outputs:
        print(o.path)
    raise_for_failures(run)
