"""The identify stage: embeddings file(s) -> closed-set identification accuracy as JSON.

Why one function with all the I/O (as `verification/stage.py`): `closed_set.py` stays pure
(arrays in, numbers out, tested against scikit-learn and numpy re-computations), and reading the
embeddings, restricting them to a split part, naming and writing the outputs, and recording them
in the workspace live here, once. The output schema is documented in docs/formats.md
("Identify output"); `fvtool report` reads it.

One JSON per (embeddings file, classifier), default
`<workspace>/identify/<embeddings stem>[-<split name>-<part>]-<classifier>.json`. Several
classifiers on one file share one split, so their numbers compare image for image.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fvtool import __version__
from fvtool.atomic import canonical_sha256, sha256_file, write_json
from fvtool.console import console, progress
from fvtool.data.embeddings import EmbeddingSet, read_embeddings
from fvtool.errors import FvtoolError, InputError, PartialFailure
from fvtool.identification.closed_set import (
    CLASSIFIERS,
    DEFAULT_C,
    DEFAULT_MAX_ITER,
    TOP_K,
    ClosedSetResult,
    ClosedSetSplit,
    closed_set_accuracy,
    heldout_split,
    split_closed_set,
)
from fvtool.protocols.splits import HELDOUT, Split, read_split
from fvtool.workspace import Workspace

FORMAT = "fvtool-identify"
VERSION = 1


@dataclass
class IdentifyOptions:
    classifiers: Sequence[str] = ("logreg",)
    train_fraction: float = 0.5
    min_images: int = 2
    seed: int = 0
    C: float = DEFAULT_C
    max_iter: int = DEFAULT_MAX_ITER
    split: Path | None = None  # restrict to the identities of one part of an identity split
    part: str = "test"
    heldout: bool = False  # recognition of the split's training identities on their held-out images
    output: Path | None = None  # a .json file (one file x one classifier) or a folder
    name: str | None = None  # <workspace>/identify/<name>.json (one file x one classifier)
    show_progress: bool = True


@dataclass
class IdentifyOutput:
    path: Path
    result: dict[str, Any]


@dataclass
class IdentifyRun:
    outputs: list[IdentifyOutput] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)  # (embeddings file, message)


def _check_options(paths: Sequence[Path], opts: IdentifyOptions) -> None:
    if not paths:
        raise InputError("no embeddings file given")
    if not opts.classifiers:
        raise InputError("no classifier given")
    bad = [c for c in opts.classifiers if c not in CLASSIFIERS]
    if bad:
        raise InputError(f"unknown classifier(s) {', '.join(bad)} (choose from {', '.join(CLASSIFIERS)})")
    single = len(paths) == 1 and len(set(opts.classifiers)) == 1
    if opts.name is not None and not single:
        raise InputError("--name names one output: give one embeddings file and one classifier (or use --output DIR)")
    if opts.name is not None and opts.output is not None:
        raise InputError("give --name or --output, not both")
    if opts.output is not None and opts.output.suffix == ".json" and not single:
        raise InputError(f"--output {opts.output} is one file; with several embeddings files or classifiers "
                         "give a folder")
    if opts.heldout and opts.split is None:
        raise InputError("--heldout classifies the held-out images of a split's training identities: give the "
                         "split the model was trained with (--split, made with `fvtool pairs split "
                         "--heldout-images K`)")


def _default_stem(path: Path, classifier: str, subset: str) -> str:
    return f"{path.stem}{subset}-{classifier}"


def output_paths(paths: Sequence[Path], opts: IdentifyOptions, subset: str) -> dict[tuple[Path, str], Path]:
    """Where each (embeddings file, classifier) result goes; two results never share a file."""
    ws = Workspace.current()
    out: dict[tuple[Path, str], Path] = {}
    for p in paths:
        for c in dict.fromkeys(opts.classifiers):
            if opts.name is not None:
                dest = ws.dir("identify") / f"{opts.name.removesuffix('.json')}.json"
            elif opts.output is not None and opts.output.suffix == ".json":
                dest = opts.output
            else:
                folder = opts.output if opts.output is not None else ws.dir("identify")
                dest = folder / f"{_default_stem(p, c, subset)}.json"
            out[(p, c)] = dest
    seen: dict[Path, tuple[Path, str]] = {}
    for key, dest in out.items():
        d = dest.resolve()
        if d in seen:
            raise InputError(f"{key[0]} and {seen[d][0]} would both write {dest} (same file name); "
                             "rename one or run them separately with --output")
        seen[d] = key
    return out


def _heldout_rows(es: EmbeddingSet, opts: IdentifyOptions, split: Split,
                  path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rows (training images of the split's train part, then its held-out images) and their test flags."""
    train = np.array(split.rows("train", es.keys, es.identities), dtype=np.int64)
    held = np.array(split.rows(HELDOUT, es.keys, es.identities), dtype=np.int64)
    how = f"embed them with `fvtool embed RUN --split {opts.split} --part train,heldout`"
    if len(held) == 0:
        raise InputError(f"{path}: no embedding of the held-out images of {opts.split} "
                         f"({sum(len(v) for v in (split.heldout or {}).values())} images); {how}")
    if len(train) == 0:
        raise InputError(f"{path}: no embedding of the training images of {opts.split}: the classifier is fitted "
                         f"on them; {how}")
    rows = np.concatenate([train, held])
    info = {"split": str(Path(opts.split).resolve()), "name": split.name, "sha256": split.sha256(), "part": HELDOUT,
            "part_identities": len(split.train), "identities": len({es.identities[i] for i in rows}),
            "images": len(rows), "heldout": split.extra.get("heldout")}
    return rows, np.r_[np.zeros(len(train), bool), np.ones(len(held), bool)], info


def _subset(es: EmbeddingSet, opts: IdentifyOptions, split: Split | None,
            path: Path) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Rows to use: all, or those whose identity is in part `opts.part` of the split."""
    if split is None:
        return np.arange(len(es.keys)), None
    rows = np.array(split.rows(opts.part, es.keys, es.identities), dtype=np.int64)
    n_part = len(split.part(opts.part))
    if len(rows) == 0:
        raise InputError(f"{path}: no embedding belongs to an identity of part {opts.part!r} of {opts.split} "
                         f"({n_part} identities); is it a split of the same dataset?")
    info = {"split": str(Path(opts.split).resolve()), "name": split.name, "sha256": split.sha256(), "part": opts.part,
            "part_identities": n_part, "identities": len({es.identities[i] for i in rows}),
            "images": len(rows)}
    return rows, info


def result_json(res: ClosedSetResult, path: Path, sha: str, es: EmbeddingSet, rows: np.ndarray,
                subset: dict[str, Any] | None, elapsed: float) -> dict[str, Any]:
    sp = res.split
    keys = [es.keys[i] for i in rows]
    used = np.concatenate([sp.train, sp.test])
    status = [es.status[rows[i]] for i in used]
    return {
        "format": FORMAT, "version": VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "fvtool_version": __version__,
        "elapsed_s": round(elapsed, 3),
        "embeddings": {"path": str(path.resolve()), "name": path.stem, "sha256": sha, "n": len(es.keys),
                       "dim": es.dim, "attrs": es.attrs_json()},
        "subset": subset,
        "protocol": {"task": "closed-set identification"
                     + (" of the training identities (held-out images)" if sp.train_fraction is None else ""),
                     "classifier": res.classifier,
                     "train_fraction": sp.train_fraction, "min_images": sp.min_images, "seed": sp.seed,
                     "normalised": True, "top_k": TOP_K,
                     "split_sha256": canonical_sha256({"train": sorted(keys[i] for i in sp.train),
                                                       "test": sorted(keys[i] for i in sp.test)})},
        "counts": {"images": len(rows), "identities": sp.n_classes + sp.dropped_identities,
                   "classes": sp.n_classes, "train_images": len(sp.train), "test_images": len(sp.test),
                   "dropped_identities": sp.dropped_identities, "dropped_images": sp.dropped_images,
                   "not_ok_images": sum(s != "ok" for s in status)},
        "accuracy": res.accuracy(),
        "chance": res.chance,
        "fit": res.fit,
    }


def _identify_one(path: Path, opts: IdentifyOptions, split: Split | None, dests: dict[tuple[Path, str], Path],
                  run: IdentifyRun, tick) -> None:
    t0 = time.perf_counter()
    es = read_embeddings(path)
    sp: ClosedSetSplit
    if opts.heldout:
        assert split is not None
        rows, is_test, subset = _heldout_rows(es, opts, split, path)
        ids = [es.identities[i] for i in rows]
        keys = [es.keys[i] for i in rows]
        sp = heldout_split(ids, is_test, seed=int((split.extra.get("heldout") or {}).get("seed", 0)))
    else:
        rows, subset = _subset(es, opts, split, path)
        ids = [es.identities[i] for i in rows]
        keys = [es.keys[i] for i in rows]
        sp = split_closed_set(ids, keys=keys, train_fraction=opts.train_fraction, min_images=opts.min_images,
                              seed=opts.seed)
    x = es.embeddings[rows]
    sha = sha256_file(path)
    load_s = time.perf_counter() - t0  # reading + split, shared by the classifiers: counted in each
    for c in dict.fromkeys(opts.classifiers):
        t1 = time.perf_counter()
        res = closed_set_accuracy(x, ids, keys=keys, classifier=c, C=opts.C, max_iter=opts.max_iter, split=sp,
                                  what=str(path))
        m = result_json(res, path, sha, es, rows, subset, load_s + time.perf_counter() - t1)
        dest = dests[(path, c)]
        write_json(dest, m)
        Workspace.current().record("identify", dest)
        run.outputs.append(IdentifyOutput(dest, m))
        if res.fit.get("converged") is False:
            console.print(f"[yellow]warning:[/] {path.name}: logistic regression did not converge in "
                          f"{opts.max_iter} iterations (raise --max-iter, or lower --logreg-c); accuracy "
                          "may be lower than the converged model's")
        tick()


def identify(paths: Sequence[str | Path], options: IdentifyOptions | None = None) -> IdentifyRun:
    """Closed-set accuracy of every classifier on every embeddings file; writes one JSON per pair.

    A file that fails (unreadable, NaN embeddings, too few identities) does not stop the others: with
    several files the failures are collected in `failures`; with one, its error is raised.
    """
    opts = options or IdentifyOptions()
    paths = [Path(p) for p in paths]
    _check_options(paths, opts)
    split = read_split(opts.split) if opts.split is not None else None
    if split is not None:
        split.part(opts.part)  # an unknown part name fails here, before any file is read
    if opts.heldout:
        assert split is not None  # _check_options
        if not split.heldout:
            raise InputError(f"{opts.split}: the split holds no images of its training identities out of training, "
                             "so none can test their recognition; make one with `fvtool pairs split "
                             "--heldout-images K` and train on it")
    part = HELDOUT if opts.heldout else opts.part
    dests = output_paths(paths, opts, f"-{split.name}-{part}" if split is not None else "")
    run = IdentifyRun()
    n_clf = len(dict.fromkeys(opts.classifiers))
    bar = progress(disable=not opts.show_progress)
    with bar:
        task = bar.add_task("identify", total=len(paths) * n_clf, info="")
        for p in paths:
            bar.update(task, info=p.name)
            try:
                _identify_one(p, opts, split, dests, run, lambda: bar.advance(task))
            except FvtoolError as e:
                if len(paths) == 1:
                    raise
                run.failures.append((p, str(e)))
                bar.advance(task, n_clf)
    return run


# ---------------------------------------------------------------------------------------------
# terminal summary


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def summary_table(outputs: Sequence[IdentifyOutput]):
    """One row per (embeddings file, classifier); counts and chance levels in the caption (they are the
    same for every row of one dataset, so the rows stay narrow)."""
    from rich.table import Table

    first = outputs[0].result
    sub = first["subset"]
    where = f" on {sub['name']}/{sub['part']}" if sub else ""
    frac = first["protocol"]["train_fraction"]
    how = ("training images -> held-out images of the training identities" if frac is None
           else f"train fraction {frac:g}")
    t = Table(title=f"closed-set identification{where} ({how}, seed {first['protocol']['seed']})",
              header_style="bold")
    t.add_column("embeddings", overflow="fold")
    t.add_column("classifier", no_wrap=True)
    for col in ("top-1", "top-5", "bal. top-1"):
        t.add_column(col, justify="right", no_wrap=True)
    counts: dict[str, None] = {}
    for o in outputs:
        m = o.result
        c, a, ch = m["counts"], m["accuracy"], m["chance"]
        conv = "" if m["fit"].get("converged", True) else " (not converged)"
        t.add_row(m["embeddings"]["name"], m["protocol"]["classifier"] + conv, f"[bold]{_pct(a['top1'])}[/]",
                  _pct(a["top5"]), _pct(a["balanced_top1"]))
        left = ("held-out images without a training image" if m["protocol"]["train_fraction"] is None
                else f"identities with < {m['protocol']['min_images']} images")
        counts[f"{c['classes']:,} classes, {c['train_images']:,} train / {c['test_images']:,} test images "
               f"({c['dropped_identities']:,} {left} left out): "
               f"chance 1/K = {_pct(ch['uniform_top1'])}, majority class {_pct(ch['majority_top1'])}"] = None
    t.caption = "\n".join(counts)
    return t


def print_summary(run: IdentifyRun) -> None:
    if run.outputs:
        console.print(summary_table(run.outputs))
        folders = sorted({str(o.path.parent) for o in run.outputs})
        console.print(f"outputs ({len(run.outputs)} JSON) in {', '.join(folders)}")
    for p, msg in run.failures:
        console.print(f"[bold red]failed:[/] {p}: {msg}")


def raise_for_failures(run: IdentifyRun) -> None:
    """Exit code 4 when some files failed and others were written, 3 when none was."""
    if not run.failures:
        return
    names = ", ".join(p.name for p, _ in run.failures)
    if run.outputs:
        raise PartialFailure(f"{len(run.failures)} embeddings file(s) failed ({names}); the others' results "
                             "were written")
    raise InputError(f"every embeddings file failed ({names})")
