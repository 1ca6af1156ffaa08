"""`fvtool identify [EMBEDDINGS.h5 ...]`: closed-set identification accuracy of classifiers on embeddings.

Thin wrapper over `fvtool.identification.stage.identify`: picks the workspace default (the latest
`embed` output), prints the summary table (one row per file and classifier) and the written JSON
paths (stdout, one per line, for scripts).
"""

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
    seed: Annotated[int, typer.Option(
        "--seed", min=0, help="Seed of the per-identity train/test split: same seed, same split, whatever the "
                               "file order.")] = 0,
    logreg_c: Annotated[float, typer.Option("--logreg-c", help="Inverse L2 regularisation strength C of the "
                                            "logistic regression (scikit-learn's C; its default 1 underfits "
                                            "unit-length embeddings, see docs/identify.md).")] = 100.0,
    max_iter: Annotated[int, typer.Option("--max-iter", help="Iteration limit of the logistic regression (lbfgs); "
                                          "a warning says when it did not converge.")] = 1000,
    split: Annotated[Path | None, typer.Option(
        "--split", help="Identity split file (`fvtool pairs split`): use only the identities of one of its parts "
                        "(--part), e.g. those the model was not trained on.", show_default=False)] = None,
    part: Annotated[str | None, typer.Option("--part", help="Part of --split to use: train, val or test. "
                                             "Default: test.", show_default=False)] = None,
    heldout: Annotated[bool, typer.Option(
        "--heldout", help="Recognition of the training identities (example study 4): fit the classifier on the "
                          "embeddings of the --split's training images and name its held-out images (images of "
                          "the same people withheld from training: `fvtool pairs split --heldout-images K`; embed "
                          "both with `fvtool embed RUN --split S --part train,heldout`). Every training identity "
                          "is a class; --part, --train-fraction and --min-images do not apply.")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="A .json file (one embeddings file and one classifier), or a folder for the default "
                               "file names. Default: <workspace>/identify/.", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        "--name", help="Output name: <workspace>/identify/NAME.json (one embeddings file and one classifier).",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    open_set: Annotated[bool, typer.Option(
        "--open-set", help="Open-set search instead of classifiers: a share of the identities (--unseen-fraction) "
                           "is never enrolled and their images are non-mated probes; every other identity enrols "
                           "--gallery-images images as one template (normalised mean) and its other images are "
                           "mated probes. Reports the CMC (rank-1/5/10) and DIR at FPIR (bob.measure's rules). "
                           "Output: <workspace>/identify/<embeddings>-openset.json.")] = False,
    unseen_fraction: Annotated[float, typer.Option(
        "--unseen-fraction", help="With --open-set: share of identities left out of the gallery (their images "
                                  "are the impostor probes that FPIR counts).")] = 0.3,
    gallery_images: Annotated[int, typer.Option(
        "--gallery-images", help="With --open-set: images enrolled per gallery identity (seeded per identity).")] = 1,
    protocol: Annotated[str | None, typer.Option(
        "--protocol", help="ijbb:ROOT or ijbc:ROOT: the IJB-B/C 1:N protocol on image embeddings of the "
                           "release (`fvtool align ijbc:ROOT`, then `fvtool embed`): templates pooled as in "
                           "1:1 verification; closed-set CMC with both galleries, open-set DIR@FPIR per gallery "
                           "(G1/G2, IJB-B: S1/S2). Options as in verify: ijbc:ROOT,detector=0,image_norm=1.",
        show_default=False)] = None,
    fpir: Annotated[list[float] | None, typer.Option(
        "--fpir", help="With --open-set or --protocol: FPIR targets for DIR (repeatable). Default: 0.01 and 0.1.",
        show_default=False)] = None,
) -> None:
    from fvtool.identification.stage import IdentifyOptions, identify, print_summary, raise_for_failures
    from fvtool.workspace import Workspace

    if not embeddings:
        embeddings = [Workspace.current().require_latest("embed", "an embeddings file", "fvtool embed")]
    if protocol is not None:
        if open_set or classifier or name:
            from fvtool.errors import InputError

            raise InputError("--protocol runs the IJB 1:N protocol; --open-set, --classifier and --name do not apply")
        _ijb(embeddings, protocol, fpir, output)
        return
    if heldout and (open_set or part not in (None, "train")):
        raise typer.BadParameter("--heldout uses the --split's training identities and their held-out images; "
                                 "--open-set and --part do not apply")
    if open_set:
        _open_set(embeddings, unseen_fraction, gallery_images, fpir, seed, split, part or "test", output, classifier,
                  name)
        return
    run = identify(embeddings, IdentifyOptions(
        classifiers=tuple(classifier or ("logreg",)), train_fraction=train_fraction, min_images=min_images,
        seed=seed, C=logreg_c, max_iter=max_iter, split=split, part="train" if heldout else (part or "test"),
        heldout=heldout, output=output, name=name, show_progress=not quiet))
    print_summary(run)
    for o in run.outputs:
        print(o.path)
    raise_for_failures(run)


def _open_set(embeddings: list[Path], unseen_fraction: float, gallery_images: int, fpir: list[float] | None,
              seed: int, split: Path | None, part: str, output: Path | None, classifier: list[str] | None,
              name: str | None) -> None:
    from fvtool.console import console
    from fvtool.errors import InputError
    from fvtool.identification.open_set import DEFAULT_FPIRS
    from fvtool.identification.open_set_stage import OpenSetOptions, identify_open_set, summary_table

    if classifier or name:
        raise InputError("--open-set searches a gallery of templates: --classifier and --name do not apply")
    if output is not None and output.suffix == ".json" and len(embeddings) > 1:
        raise InputError(f"--output {output} is one file; with several embeddings files give a folder")
    results = []
    for p in embeddings:
        dest, m = identify_open_set(p, OpenSetOptions(
            unseen_fraction=unseen_fraction, gallery_images=gallery_images, seed=seed,
            fpirs=tuple(fpir or DEFAULT_FPIRS), split=split, part=part, output=output))
        results.append(m)
        print(dest)
    console.print(summary_table(results))


def _ijb(embeddings: list[Path], protocol: str, fpir: list[float] | None, output: Path | None) -> None:
    from fvtool.console import console
    from fvtool.identification.open_set import DEFAULT_FPIRS
    from fvtool.identification.open_set_stage import identify_protocol, summary_table

    results = []
    for p in embeddings:
        for dest, m in identify_protocol(p, protocol, fpirs=tuple(fpir or DEFAULT_FPIRS), output=output):
            results.append(m)
            print(dest)
    console.print(summary_table(results))
