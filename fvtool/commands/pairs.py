"""`fvtool pairs ...`: evaluation protocols, identity splits, training pair lists, leakage check.

Thin wrappers over fvtool/protocols/*: parse options, pick workspace defaults (input = the latest
aligned dataset, outputs under <workspace>/protocols/ and <workspace>/splits/), call the library,
print a summary, record the output in latest.json.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from fvtool.console import console
from fvtool.errors import InputError
from fvtool.workspace import Workspace

if TYPE_CHECKING:
    from fvtool.data.dataset import ImageSet
    from fvtool.protocols.model import Protocol
    from fvtool.protocols.splits import Split

# The protocol and dataset modules import numpy: each command imports what it uses, so `fvtool --help` and
# `fvtool pairs --help` do not pay for it (tests/test_startup.py).

pairs_app = typer.Typer(
    name="pairs",
    help=(
        "Evaluation protocols and identity splits: LFW official pairs, generated identity-disjoint k-fold pairs, "
        "all-pairs (MEDS-II / BLUFR style), train/val/test identity splits, training pair lists, and the "
        "leakage check. Input defaults to the latest aligned dataset of the workspace; outputs go to "
        "<workspace>/protocols/ and <workspace>/splits/."
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DataArg = Annotated[
    Path | None,
    typer.Argument(help="Aligned folder (with manifest.csv), manifest file, identity folder, or a dataset as "
                        "shipped (insightface .rec, VGGFace2 train/ or test/, CASIA-WebFace, MEDS-II; "
                        "docs/datasets.md). Default: the latest `fvtool align` output of the workspace.",
                   show_default=False),
]
OutOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: in the workspace).",
                                             show_default=False)]
NameOpt = Annotated[str | None, typer.Option("--name", help="Name stored in the file and used for the default "
                                                            "output file name.", show_default=False)]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Random seed: same seed, same file.")]


def register(app: typer.Typer) -> None:
    app.add_typer(pairs_app, name="pairs")


# ---- helpers ---------------------------------------------------------------------------------
def _dataset(path: Path | None) -> "ImageSet":
    from fvtool.data.dataset import load_image_set, warn_problems

    if path is None:
        path = Workspace.current().require_latest("align", "a dataset path", "fvtool align DATA")
    with console.status(f"reading {path}"):
        images = load_image_set(path)
    console.print(f"dataset {images.root}: {len(images)} images, {len(set(images.identities))} identities "
                  f"({images.source})")
    warn_problems(images)
    return images


def _floats3(text: str, option: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{option} takes three comma-separated numbers, e.g. 0.8,0.1,0.1") from None
    if len(parts) != 3:
        raise typer.BadParameter(f"{option} takes three comma-separated numbers, got {text!r}")
    return parts  # type: ignore[return-value]


def _out(output: Path | None, kind: str, name: str) -> Path:
    return output if output is not None else Workspace.current().dir(kind) / f"{name}.json"


def _save_protocol(proto: "Protocol", output: Path | None) -> Path:
    from fvtool.protocols.model import write_protocol

    path = _out(output, "protocol", proto.name)
    write_protocol(path, proto)
    Workspace.current().record("protocol", path)
    return path


def _save_split(split: "Split", output: Path | None) -> Path:
    from fvtool.protocols.splits import write_split

    path = _out(output, "split", split.name)
    write_split(path, split)
    Workspace.current().record("split", path)
    return path


_HEADINGS = {
    "multi_image_identities": "ids >=2 img",
    "identities": "ids",
    "images_used": "imgs used",
    "identities_in_same": "ids in same",
    "identities_in_different": "ids in diff",
    "single_image_identities_used": "1-img ids used",
    "different": "diff",
}


def _counts_table(title: str, rows: list[dict], columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(_HEADINGS.get(c, c), justify="right", overflow="fold")
    for r in rows:
        t.add_row(*[_fmt(r.get(c)) for c in columns])
    return t


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _protocol_summary(proto: "Protocol", path: Path | None = None) -> None:
    c = proto.counts()
    where = f" -> {path}" if path else ""
    console.print(
        f"[bold]{proto.name}[/] ({proto.kind}){where}\n"
        f"  {c['images']:,} images, {c['identities']:,} identities, {c['folds']} "
        f"{'folds' if proto.kind == 'pairs' else 'trials'}; {c['pairs']:,} comparisons = "
        f"{c['genuine']:,} genuine + {c['impostor']:,} impostor; lowest measurable FAR "
        f"{_fmt(c['min_far'])} (1 / impostors)"
    )


def _split_summary(split: "Split", path: Path | None = None) -> None:
    c = split.counts()
    rows = [{"part": p, **c[p]} for p in ("train", "val", "test", "heldout") if p in c]
    console.print(f"[bold]{split.name}[/] ({split.kind} split)" + (f" -> {path}" if path else ""))
    console.print(_counts_table("", rows, ["part", "identities", "images"]))


def _default_name(images: "ImageSet", suffix: str) -> str:
    return f"{images.root.resolve().name}-{suffix}"


# ---- commands --------------------------------------------------------------------------------
@pairs_app.command("lfw")
def lfw_cmd(
    pairs_file: Annotated[
        Path | None,
        typer.Argument(help="LFW pairs file (pairs.txt, pairsDevTrain.txt, pairsDevTest.txt) or an fvtool "
                            "protocol JSON (with --export). Default: the packaged official file chosen by --view.",
                       show_default=False),
    ] = None,
    view: Annotated[str, typer.Option("--view", help="Packaged official file when no PAIRS_FILE is given: "
                                                     "2 (pairs.txt), 1-train (pairsDevTrain.txt), 1-test "
                                                     "(pairsDevTest.txt).")] = "2",
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Dataset whose images the pairs must name "
                                              "(aligned folder, manifest or identity folder). Default: latest "
                                              "aligned dataset.", show_default=False)] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Do not check the images against a dataset "
                                                              "(only the file itself is validated).")] = False,
    output: OutOpt = None,
    export: Annotated[Path | None, typer.Option("--export", help="Also write the protocol back as an LFW pairs "
                                                "text file here (byte-identical to the official file).",
                                                show_default=False)] = None,
    fold: Annotated[list[int] | None, typer.Option("--fold", help="Keep only this fold (1-based; repeatable), e.g. "
                                                   "--fold 10 to evaluate a model trained on the identities "
                                                   "outside fold 10 (the 'unrestricted' setting).",
                                                   show_default=False)] = None,
    refold: Annotated[int | None, typer.Option("--refold", help="Deal the (selected) pairs into K new "
                                               "cross-validation folds, stratified by genuine/impostor, e.g. "
                                               "--fold 10 --refold 10: fold 10's 600 pairs as 10 folds of 30 + 30, "
                                               "so verify's k-fold accuracy cross-validates its threshold on the "
                                               "test fold alone. The new folds are not identity-disjoint.",
                                               min=2, show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of --refold's shuffle.")] = 0,
    name: NameOpt = None,
) -> None:
    """Import (and validate) LFW View 2 pairs.txt or View 1 pairsDevTrain/Test.txt into a protocol JSON.

    Malformed lines are reported with their line numbers; images the dataset lacks are reported by
    name with their total count. Example: `fvtool pairs lfw --data fvwork/aligned/lfw`.
    """
    from fvtool.protocols.lfw import check_images, fold_identity_overlap, read_packaged, write_lfw_pairs
    from fvtool.protocols.presets import read_any_protocol

    packaged = {"2": "pairs.txt", "1-train": "pairsDevTrain.txt", "1-test": "pairsDevTest.txt"}
    if pairs_file is None:
        if view not in packaged:
            raise typer.BadParameter(f"--view must be one of {', '.join(packaged)}")
        proto = read_packaged(packaged[view])
    else:
        proto = read_any_protocol(pairs_file)
    if name:
        proto.name = name
    overlap = fold_identity_overlap(proto)
    if overlap:
        console.print(f"[yellow]warning:[/] {len(overlap)} identities occur in more than one fold "
                      f"(e.g. {', '.join(list(overlap)[:3])}): folds are not identity-disjoint")
    if not no_check:
        if data is None and Workspace.current().latest("align") is None:
            raise InputError("no dataset to check the images against: pass --data DIR (or run `fvtool align`), "
                             "or --no-check to validate the file only")
        images = _dataset(data)
        check_images(proto, images.keys, source=proto.source)
        proto.extra["validated_against"] = {"data": str(images.root.resolve()), "images": len(images)}
        console.print(f"all {len(proto.images):,} images of {proto.source} are in the dataset")
    lfw = proto.extra.get("lfw", {})
    if lfw:
        tag = "official (md5 matches)" if lfw.get("official") else "not the official file (md5 differs)"
        console.print(f"LFW View {lfw.get('view')} file {lfw.get('file')}: md5 {lfw.get('md5')}, {tag}")
    if fold:
        proto = proto.select_folds([f - 1 for f in fold], name=name)
    if refold is not None:
        proto = proto.refold(refold, seed=seed, name=name)
        console.print(f"refolded into {refold} stratified folds (seed {seed}); they are not identity-disjoint")
    path = _save_protocol(proto, output)
    _protocol_summary(proto, path)
    if export is not None:
        write_lfw_pairs(export, proto)
        console.print(f"wrote LFW pairs text {export}")


@pairs_app.command("generate")
def generate_cmd(
    data: DataArg = None,
    folds: Annotated[int, typer.Option("--folds", "-k", help="Number of identity-disjoint folds.")] = 10,
    n: Annotated[int, typer.Option("--n", "-n", help="Same-person pairs per fold.")] = 300,
    n_diff: Annotated[int | None, typer.Option("--n-diff", help="Different-person pairs per fold "
                                               "(default: same as --n).", show_default=False)] = None,
    split: Annotated[Path | None, typer.Option("--split", help="Identity split file: draw pairs only from the "
                                               "identities of one of its parts (--part), so the protocol "
                                               "shares no identity with the training part.",
                                               show_default=False)] = None,
    part: Annotated[str, typer.Option("--part", help="Part of --split to use: train, val or test.")] = "test",
    seed: SeedOpt = 0,
    output: OutOpt = None,
    name: NameOpt = None,
) -> None:
    """Generate k identity-disjoint folds of n same + n different pairs (LFW View 2 style) from any dataset.

    Identities with one image appear only in different-person pairs; no pair occurs twice.
    Example: `fvtool pairs generate data/att_faces --folds 5 --n 100 --seed 1`.
    """
    from fvtool.protocols.generate import generate_kfold
    from fvtool.protocols.splits import read_split

    images = _dataset(data)
    keys, identities = images.keys, images.identities
    suffix = f"k{folds}-n{n}-s{seed}"
    extra = None
    if split is not None:
        s = read_split(split)
        sel = s.rows(part, keys, identities)
        if not sel:
            raise InputError(f"{split}: no image of the dataset belongs to its {part!r} part")
        keys, identities = [keys[i] for i in sel], [identities[i] for i in sel]
        suffix = f"{s.name}-{part}-{suffix}"
        extra = {"split": str(split), "part": part}
    proto, stats = generate_kfold(keys, identities, folds=folds, n_same=n, n_diff=n_diff, seed=seed,
                                  name=name or _default_name(images, suffix),
                                  source=str(images.root.resolve()))
    if extra:
        proto.extra.update(extra)
    console.print(_counts_table("per-fold statistics", stats,
                                ["fold", "identities", "multi_image_identities", "images", "same", "different",
                                 "images_used", "identities_in_same", "identities_in_different",
                                 "single_image_identities_used"]))
    _protocol_summary(proto, _save_protocol(proto, output))


@pairs_app.command("allpairs")
def allpairs_cmd(
    data: DataArg = None,
    split: Annotated[Path | None, typer.Option("--split", help="Identity split file: compare only the images "
                                               "of one of its parts (--part).", show_default=False)] = None,
    part: Annotated[str, typer.Option("--part", help="Part of --split to use: train, val or test.")] = "test",
    trials: Annotated[int, typer.Option("--trials", help="Number of random trials (BLUFR style: each trial "
                                        "compares all images of --test-identities random identities). "
                                        "0 = one trial over the whole set (or the --split part).")] = 0,
    test_identities: Annotated[float, typer.Option("--test-identities", help="Identities per trial: a count "
                                                   "(e.g. 3000) or a fraction (e.g. 0.5).")] = 0.5,
    max_per_identity: Annotated[int | None, typer.Option("--max-per-identity", help="Keep at most N images "
                                                         "per identity (the first N in key order): on LFW "
                                                         "one person would otherwise own most genuine pairs.",
                                                         show_default=False)] = None,
    seed: SeedOpt = 0,
    output: OutOpt = None,
    name: NameOpt = None,
) -> None:
    """All-pairs protocol (MEDS-II / BLUFR / MS-Celeb style): every unordered pair of a set of images.

    Stored as the image list plus trials, never as N^2 rows; prints genuine/impostor counts and the
    lowest measurable FAR. Example: `fvtool pairs allpairs data/lfw` (87,549,528 pairs on full LFW).
    """
    from fvtool.protocols.allpairs import allpairs_protocol, allpairs_trials, per_trial_counts
    from fvtool.protocols.splits import read_split

    images = _dataset(data)
    src = str(images.root.resolve())
    if trials > 0:
        if split is not None or max_per_identity is not None:
            raise typer.BadParameter("--trials cannot be combined with --split or --max-per-identity")
        count: int | float = test_identities if 0 < test_identities < 1 else int(test_identities)
        proto = allpairs_trials(images.keys, images.identities, trials=trials, test_identities=count, seed=seed,
                                name=name or _default_name(images, f"allpairs-t{trials}-s{seed}"), source=src)
        rows = [{"trial": t, **c} for t, c in enumerate(per_trial_counts(proto))]
        console.print(_counts_table("per-trial counts", rows,
                                    ["trial", "images", "identities", "pairs", "genuine", "impostor", "min_far"]))
    else:
        subset = None
        suffix = "allpairs"
        if split is not None:
            s = read_split(split)
            subset = s.part(part)
            suffix = f"allpairs-{s.name}-{part}"
        proto = allpairs_protocol(images.keys, images.identities, name=name or _default_name(images, suffix),
                                  source=src, subset=subset, max_per_identity=max_per_identity,
                                  extra={"split": str(split), "part": part} if split is not None else None)
    _protocol_summary(proto, _save_protocol(proto, output))


@pairs_app.command("split")
def split_cmd(
    data: DataArg = None,
    fractions: Annotated[str | None, typer.Option("--fractions", help="train,val,test fractions of the "
                                                  "identities, e.g. 0.8,0.1,0.1 (the default).",
                                                  show_default=False)] = None,
    counts: Annotated[str | None, typer.Option("--counts", help="train,val,test identity counts instead of "
                                               "fractions, e.g. 1000,100,500.", show_default=False)] = None,
    min_images: Annotated[int, typer.Option("--min-images", help="Only identities with at least this many "
                                            "images take part (for --lfw-fold: training identities only).")] = 1,
    lfw_fold: Annotated[int | None, typer.Option("--lfw-fold", help="LFW 'unrestricted' split for View 2 fold K "
                                                 "(1..10, as in the LFW papers): test = identities of fold K, "
                                                 "train = every other identity.", show_default=False)] = None,
    lfw_outside_folds: Annotated[bool, typer.Option("--lfw-outside-folds", help="Train on the identities that "
                                                    "no View 2 fold uses; test = all fold identities.")] = False,
    protocol: Annotated[str, typer.Option("--protocol", help="Pairs protocol for --lfw-fold/--lfw-outside-folds: "
                                          "'lfw' (packaged official pairs.txt) or a file.")] = "lfw",
    lfw_val: Annotated[int, typer.Option("--lfw-val", help="With --lfw-fold/--lfw-outside-folds: hold out this "
                                         "many training identities (>= 2 images, drawn with --seed) as val, for "
                                         "an unbiased threshold and model selection without the test fold.")] = 0,
    no_images: Annotated[bool, typer.Option("--no-images", help="Store identity lists only, not the image keys "
                                            "of each part.")] = False,
    heldout_images: Annotated[int, typer.Option("--heldout-images", min=0, help="Withhold this many images of "
                                                "every training identity that has more (drawn with --seed) from "
                                                "training: `fvtool identify --heldout` then measures recognition "
                                                "of the training identities on them (example study 4 holds out "
                                                "2). 0: none.")] = 0,
    seed: SeedOpt = 0,
    output: OutOpt = None,
    name: NameOpt = None,
) -> None:
    """Identity split train/val/test (seeded), or the LFW View 2 'unrestricted' training split of a fold.

    Examples: `fvtool pairs split --fractions 0.8,0.1,0.1 --seed 0`;
    `fvtool pairs split data/lfw --lfw-fold 10 --min-images 2` (1,505 training identities, 7,829 images).
    """
    from fvtool.protocols.lfw import read_packaged
    from fvtool.protocols.presets import read_any_protocol
    from fvtool.protocols.splits import lfw_unrestricted_split, split_identities

    images = _dataset(data)
    src = str(images.root.resolve())
    if lfw_fold is not None or lfw_outside_folds:
        if lfw_fold is not None and lfw_outside_folds:
            raise typer.BadParameter("use either --lfw-fold or --lfw-outside-folds")
        proto = read_packaged("pairs.txt") if protocol == "lfw" else read_any_protocol(Path(protocol))
        fold = None
        if lfw_fold is not None:
            if not 1 <= lfw_fold <= proto.n_folds:
                raise typer.BadParameter(f"--lfw-fold must be 1..{proto.n_folds}")
            fold = lfw_fold - 1
        s = lfw_unrestricted_split(proto, images.keys, images.identities, fold=fold, min_images=min_images,
                                   val_identities=lfw_val, seed=seed, with_images=not no_images, name=name,
                                   source=src)
        missing = s.extra.get("test_identities_missing_from_dataset", 0)
        if missing:
            console.print(f"[yellow]warning:[/] {missing} identities of the protocol are not in the dataset")
    else:
        if lfw_val:
            raise typer.BadParameter("--lfw-val needs --lfw-fold or --lfw-outside-folds (else use --counts)")
        if fractions is not None and counts is not None:
            raise typer.BadParameter("use either --fractions or --counts")
        fr = _floats3(fractions, "--fractions") if fractions else None
        ct = None
        if counts:
            ct = tuple(int(x) for x in _floats3(counts, "--counts"))
        if fr is None and ct is None:
            fr = (0.8, 0.1, 0.1)
        s = split_identities(images.keys, images.identities, fractions=fr, counts=ct, seed=seed,
                             min_images=min_images, with_images=not no_images,
                             name=name or _default_name(images, f"split-s{seed}"), source=src)
        if s.extra.get("excluded_identities"):
            console.print(f"{s.extra['excluded_identities']} identities have fewer than {min_images} images "
                          "and are in no part")
    if heldout_images:
        from fvtool.protocols.splits import hold_out_images

        if no_images:
            raise typer.BadParameter("--heldout-images needs the image keys of each part (drop --no-images)")
        s = hold_out_images(s, images.keys, images.identities, heldout_images, seed)
    path = _save_split(s, output)
    _split_summary(s, path)


@pairs_app.command("train-pairs")
def train_pairs_cmd(
    data: DataArg = None,
    split: Annotated[Path | None, typer.Option("--split", help="Identity split: training pairs from its train "
                                               "identities (val pairs from val). Default: the latest split.",
                                               show_default=False)] = None,
    n: Annotated[int, typer.Option("--n", "-n", help="Same-person training pairs (and as many different-person "
                                   "pairs).")] = 5000,
    n_val: Annotated[int, typer.Option("--n-val", help="Same (and different) validation pairs from the split's "
                                       "val identities.")] = 500,
    random_split: Annotated[bool, typer.Option("--random-split", help="Instead: draw --pairs balanced pairs over "
                                               "ALL identities and cut them 72/18/10 into train/val/test. "
                                               "Shares identities between train and test (leakage): for "
                                               "reproducing studies that did this only.")] = False,
    total_pairs: Annotated[int, typer.Option("--pairs", help="Pool size for --random-split.")] = 10000,
    test_output: Annotated[Path | None, typer.Option("--test-output", help="--random-split: where to write its test "
                           "part as an evaluation protocol for `fvtool verify` (refolded into --test-folds "
                           "stratified folds; recorded as the workspace's latest protocol). Default: beside the "
                           "pairs file, NAME-test.json.", show_default=False)] = None,
    test_folds: Annotated[int, typer.Option("--test-folds", min=2, help="--random-split: cross-validation folds "
                          "of the test part, so verify's k-fold accuracy picks its threshold on test pairs of "
                          "other folds.")] = 10,
    fractions: Annotated[str, typer.Option("--fractions", help="train,val,test fractions for --random-split.")]
    = "0.72,0.18,0.10",
    seed: SeedOpt = 0,
    output: OutOpt = None,
    name: NameOpt = None,
) -> None:
    """Balanced same/different pair lists for siamese models trained on labelled pairs.

    Written as an fvtool-protocol whose folds are named in extra.fold_names (train, val[, test]); `fvtool
    train --train-pairs FILE` trains on its train part and validates on its val part. With --random-split
    the test part is also written as its own evaluation protocol (--test-output) for `fvtool verify`.
    Example: `fvtool pairs train-pairs --n 5000 --n-val 500` (uses the latest split).
    """
    from fvtool.protocols.model import write_protocol
    from fvtool.protocols.splits import read_split
    from fvtool.protocols.training import LEAKAGE_WARNING, random_pair_split, random_split_test_part, training_pairs

    images = _dataset(data)
    src = str(images.root.resolve())
    if random_split:
        console.print(Panel(LEAKAGE_WARNING, title="WARNING: identity leakage", style="bold red"))
        proto, leak = random_pair_split(images.keys, images.identities, n_pairs=total_pairs,
                                        fractions=_floats3(fractions, "--fractions"), seed=seed,
                                        name=name or _default_name(images, f"random-pair-split-s{seed}"), source=src)
        console.print(f"[bold red]leakage:[/] {leak['test_identities_also_in_train']:,} of "
                      f"{leak['test_identities']:,} test identities and {leak['test_images_also_in_train']:,} of "
                      f"{leak['test_images']:,} test images also occur in train pairs")
    else:
        split_path = split or Workspace.current().require_latest("split", "--split", "fvtool pairs split")
        s = read_split(split_path)
        proto = training_pairs(images.keys, images.identities, train_identities=s.train, n_same=n,
                               val_identities=s.val, n_val=n_val if s.val else 0, seed=seed,
                               name=name or f"{s.name}-train-pairs-s{seed}", source=src)
        proto.extra["split"] = {"file": str(Path(split_path).resolve()), "name": s.name, "sha256": s.sha256()}
    # training input, not an evaluation protocol: kept beside the splits and not recorded as the
    # latest protocol (so `verify` and `pairs check` never pick it up by default)
    path = output or Workspace.current().dir("split") / f"{proto.name}.json"
    write_protocol(path, proto)
    rows = []
    for f, fname in enumerate(proto.extra["fold_names"]):
        sel = proto.fold == f
        rows.append({"split": fname, "pairs": int(sel.sum()), "same": int(proto.same[sel].sum()),
                     "different": int((~proto.same[sel]).sum())})
    console.print(f"[bold]{proto.name}[/] (training pairs) -> {path}")
    console.print(_counts_table("", rows, ["split", "pairs", "same", "different"]))
    if random_split:
        test = random_split_test_part(proto, test_folds, seed)
        test_path = _save_protocol(test, test_output or path.with_name(f"{path.stem}-test.json"))
        console.print(f"test part as an evaluation protocol ({test_folds} stratified folds; shares identities with "
                      f"the train part) -> {test_path}")



@pairs_app.command("check")
def check_cmd(
    training: Annotated[Path | None, typer.Argument(help="Training side: a split file (train+val parts) or a "
                                                         "training-pairs protocol. Default: the latest split.",
                                                    show_default=False)] = None,
    protocol: Annotated[str | None, typer.Argument(help="Evaluation side: 'lfw', a protocol file (JSON or LFW "
                                                        "pairs text) or a split file (its test part). Default: "
                                                        "the latest protocol.", show_default=False)] = None,
    fold: Annotated[int | None, typer.Option("--fold", help="Check against fold K only (1-based, LFW style).",
                                             show_default=False)] = None,
    trial: Annotated[int | None, typer.Option("--trial", help="Check against trial T only (1-based, all-pairs).",
                                              show_default=False)] = None,
    parts: Annotated[str, typer.Option("--parts", help="Parts of the training split to check.")] = "train,val",
) -> None:
    """Leakage guard: fail (exit code 5) when training identities or images occur in the evaluation protocol.

    Example: `fvtool pairs check fvwork/splits/lfw-view2-fold9-unrestricted.json lfw --fold 10`.
    """
    from fvtool.protocols.leakage import check as leakage_check
    from fvtool.protocols.lfw import read_packaged
    from fvtool.protocols.presets import read_any_protocol

    ws = Workspace.current()
    tpath = training or ws.require_latest("split", "TRAINING", "fvtool pairs split")
    train_obj = _read_split_or_protocol(tpath)
    if protocol is None:
        eval_obj: Protocol | Split = read_any_protocol(ws.require_latest("protocol", "PROTOCOL", "fvtool pairs ..."))
    elif protocol == "lfw":
        eval_obj = read_packaged("pairs.txt")
    else:
        eval_obj = _read_split_or_protocol(Path(protocol))
    report = leakage_check(train_obj, eval_obj, parts=tuple(p.strip() for p in parts.split(",") if p.strip()),
                           fold=None if fold is None else fold - 1, trial=None if trial is None else trial - 1)
    s = report.summary()
    console.print(f"[green]no leakage[/]: {s['training']} ({s['training_identities']:,} identities) and "
                  f"{s['evaluation']} ({s['evaluation_identities']:,} identities) share no identity"
                  + ("" if s["training_images"] is None else " and no image"))


def _read_split_or_protocol(path: Path) -> "Protocol | Split":
    from fvtool.protocols.presets import read_any_protocol
    from fvtool.protocols.splits import FORMAT as SPLIT_FORMAT
    from fvtool.protocols.splits import read_split

    if not path.is_file():
        raise InputError(f"{path} does not exist")
    with open(path, "rb") as f:
        is_json = f.read(64).lstrip().startswith(b"{")
    head = None
    if is_json:
        try:
            head = json.loads(path.read_text(encoding="utf-8")).get("format")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            head = None  # read_protocol below reports the problem with the file name
    if head == SPLIT_FORMAT:
        return read_split(path)
    return read_any_protocol(path)


@pairs_app.command("info")
def info_cmd(
    files: Annotated[list[Path], typer.Argument(help="Protocol JSON, LFW pairs text or split files.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the counts as JSON on stdout.")] = False,
) -> None:
    """Print the counts of protocol and split files (pairs, genuine, impostor, lowest measurable FAR).

    Example: `fvtool pairs info fvwork/protocols/*.json`.
    """
    from fvtool.protocols.allpairs import per_trial_counts
    from fvtool.protocols.lfw import OFFICIAL_MD5
    from fvtool.protocols.splits import FORMAT as SPLIT_FORMAT
    from fvtool.protocols.splits import Split

    out = {}
    for f in files:
        obj = _read_split_or_protocol(f)
        if isinstance(obj, Split):
            out[str(f)] = {"format": SPLIT_FORMAT, "name": obj.name, "kind": obj.kind, "counts": obj.counts(),
                           "sha256": obj.sha256()}
            if not as_json:
                _split_summary(obj, f)
            continue
        entry = {"format": "fvtool-protocol", "name": obj.name, "kind": obj.kind, "counts": obj.counts(),
                 "sha256": obj.sha256(), "source": obj.source, "seed": obj.seed}
        lfw = obj.extra.get("lfw")
        if lfw:
            entry["lfw_md5"] = lfw["md5"]
            entry["lfw_official"] = lfw["md5"] in OFFICIAL_MD5.values()
        if obj.kind == "allpairs" and len(obj.trials) > 1:
            entry["trials"] = per_trial_counts(obj)
        out[str(f)] = entry
        if not as_json:
            _protocol_summary(obj, f)
            if obj.extra.get("warning"):
                console.print(f"[bold red]warning:[/] {obj.extra['warning']}")
    if as_json:
        print(json.dumps(out, indent=2))
