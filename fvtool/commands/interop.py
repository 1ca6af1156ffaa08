"""`fvtool interop ...` and `fvtool export`: other tools' files in, fvtool's models and scores out.

Thin wrappers over fvtool/interop/*: import foreign embeddings, read/write/evaluate insightface
.bin verification sets, export/import bob score files, export a trained embedder to ONNX.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fvtool.console import console
from fvtool.errors import InputError
from fvtool.workspace import Workspace

interop_app = typer.Typer(
    name="interop",
    help="Bridges to other tools: import embeddings (npy/npz/csv/h5), insightface .bin sets (read safely, write, "
         "evaluate a run with insightface's 10-fold rule), insightface RecordIO training sets (write, check), "
         "bob.bio score files (export, verify).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RunArg = Annotated[str | None, typer.Argument(help="Run folder or checkpoint file (default: the workspace's latest "
                                              "`train` run).", show_default=False)]
PreferOpt = Annotated[str, typer.Option("--checkpoint", help="Which checkpoint of a run folder: best or last.")]


def register(app: typer.Typer) -> None:
    app.add_typer(interop_app, name="interop")
    app.command("export")(export_cmd)


def _run(run: str | None) -> str:
    return run or str(Workspace.current().require_latest("train", "a run folder", "fvtool train"))


@interop_app.command("import")
def import_cmd(
    source: Annotated[Path, typer.Argument(help="Embeddings from another tool: .npy (with --keys), .npz (arrays "
                                           "'embeddings', 'keys', optional 'identities'), .csv (a key/path/file "
                                           "column, optional identity column, numbers) or .h5.")],
    keys: Annotated[Path | None, typer.Option("--keys", help="For .npy: text file with one image key per line, in "
                                              "row order.", show_default=False)] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Data root the keys are relative to; "
                                                   "absolute keys inside it are made relative.",
                                                   show_default=False)] = None,
    emb_dataset: Annotated[str, typer.Option("--emb-dataset", help="For .h5: the embeddings dataset.")] = "embeddings",
    keys_dataset: Annotated[str, typer.Option("--keys-dataset", help="For .h5: the keys dataset.")] = "keys",
    ids_dataset: Annotated[str | None, typer.Option("--ids-dataset", help="For .h5: an identities dataset (default: "
                                                    "'identities' if present, else the keys' first folder).",
                                                    show_default=False)] = None,
    model: Annotated[str, typer.Option("--model", help="Name of the model that made them (recorded).")] = "",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output HDF5 (default: <workspace>/embeddings/<source stem>.h5).", show_default=False
    )] = None,
) -> None:
    """Import another tool's embeddings into an fvtool embeddings file, checked like `embed` output.

    Example: `fvtool interop import facenet.npz --data-root data/lfw --model facenet-vggface2`,
    then `fvtool verify --protocol lfw`.
    """
    from fvtool.data.embeddings import write_embeddings
    from fvtool.interop.import_embeddings import import_embeddings

    es = import_embeddings(source, keys_file=keys, data_root=data_root, emb_dataset=emb_dataset,
                           keys_dataset=keys_dataset, ids_dataset=ids_dataset, model_name=model)
    ws = Workspace.current()
    out = output or ws.dir("embed") / f"{source.stem}.h5"
    write_embeddings(out, es)
    ws.record("embed", out)
    console.print(f"imported {len(es.keys)} embeddings of dimension {es.dim} "
                  f"({len(set(es.identities))} identities) -> [bold]{out}[/]")


@interop_app.command("bin-read")
def bin_read_cmd(
    path: Annotated[Path, typer.Argument(help="An insightface verification set (lfw.bin, cfp_fp.bin, ...).")],
) -> None:
    """Check a .bin set safely (no unpickling of objects) and print its pair counts."""
    from fvtool.interop.insightface_bin import read_bin

    vb = read_bin(path)
    same = sum(vb.issame)
    console.print(f"{path}: {vb.n_pairs} pairs ({same} same, {vb.n_pairs - same} different), "
                  f"{len(vb.images)} encoded images")


@interop_app.command("bin-write")
def bin_write_cmd(
    protocol: Annotated[str, typer.Argument(help="A pairs protocol: file (fvtool JSON or LFW pairs.txt) or `lfw`.")],
    data: Annotated[Path, typer.Option("--data", help="Aligned folder holding the protocol's images (e.g. 112x112 "
                                       "similarity crops for insightface models).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .bin file to write.")],
) -> None:
    """Write a pairs protocol and its aligned images as an insightface .bin verification set."""
    from fvtool.data.dataset import load_image_set
    from fvtool.interop.bin_eval import protocol_to_bin
    from fvtool.protocols.presets import resolve_protocol

    images = load_image_set(data)
    proto, _ = resolve_protocol(protocol, keys=images.keys, identities=images.identities)
    n = protocol_to_bin(proto, data, output)
    console.print(f"wrote {n} pairs of {proto.name!r} -> [bold]{output}[/]")


@interop_app.command("rec-write")
def rec_write_cmd(
    data: Annotated[Path, typer.Argument(help="Images to pack: an aligned folder, an identity folder, or any layout "
                                         "`fvtool` reads (docs/datasets.md).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write train.rec, train.idx, property and "
                                         "identities.txt into.")],
    size: Annotated[int, typer.Option("--size", help="Side of the stored square crops in pixels (insightface sets: "
                                      "112). Images of another size are resized; JPEGs of this size are stored "
                                      "byte for byte.")] = 112,
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality for images that must be re-encoded.")] = 95,
    workers: Annotated[int | None, typer.Option("--workers", help="Decoding threads (default: all cores).",
                                                show_default=False)] = None,
) -> None:
    """Pack images as an insightface RecordIO set (MXNet MXIndexedRecordIO layout, readable without MXNet).

    Record 0 is insightface's header (image range, identity range), images are grouped by identity
    with class ids 0..K-1 in sorted name order, one identity record per class follows. Exit code 4
    when some images could not be decoded (they are listed and left out).
    """
    from fvtool.data.dataset import load_image_set, warn_problems
    from fvtool.data.insightface_rec import write_rec_set
    from fvtool.errors import EXIT_PARTIAL

    if not 8 <= size <= 1024:
        raise InputError(f"--size {size} is outside 8..1024")
    if not 1 <= quality <= 100:
        raise InputError(f"--quality {quality} is outside 1..100")
    images = load_image_set(data)
    warn_problems(images)
    if output.exists() and not output.is_dir():
        raise InputError(f"output {output} exists and is not a folder")
    n, problems = write_rec_set(images, output, size=size, quality=quality, workers=workers)
    console.print(f"wrote {n} images of {len(set(images.identities))} identities at {size}x{size} -> "
                  f"[bold]{output}[/]")
    if problems:
        for p in problems[:10]:
            console.print(f"[yellow]left out {p.where}: {p.reason}[/]")
        if len(problems) > 10:
            console.print(f"[yellow]... and {len(problems) - 10} more left out[/]")
        raise typer.Exit(EXIT_PARTIAL)


@interop_app.command("rec-info")
def rec_info_cmd(
    path: Annotated[Path, typer.Argument(help="A .rec file or a folder holding train.rec (+ train.idx, property).")],
) -> None:
    """Check an insightface RecordIO set without MXNet: record framing, headers, labels; print counts and
    every bad record (exit code 4 when there are any). JPEGs are decoded by `align` and the cache build."""
    from fvtool.data.dataset import report_problems
    from fvtool.data.insightface_rec import load_rec_set
    from fvtool.errors import EXIT_PARTIAL

    images = load_rec_set(path)
    store = images.store
    console.print(f"{store.path}: {len(images)} image records of {len(set(images.identities))} identities"
                  + (f", pre-aligned {images.prealigned}x{images.prealigned}" if images.prealigned else ""))
    if images.problems:
        console.print(f"[yellow]{report_problems(images, limit=50)}[/]")
        raise typer.Exit(EXIT_PARTIAL)


@interop_app.command("pair-scores")
def pair_scores_cmd(
    pairs: Annotated[Path, typer.Argument(help="Pair list: `image_a image_b` lines (the course's unlabelled test "
                                          "list) or `image_a image_b label` lines; comma or whitespace separated.")],
    embeddings: Annotated[Path, typer.Argument(help="Embeddings of the list's images (`fvtool embed --data "
                                               "ver_data`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Submission CSV to write (`ID,Label`: pair index, "
                                         "score).")],
    metric: Annotated[str, typer.Option("--metric", help="cosine, euclidean or sqeuclidean (distances are negated "
                                        "so that higher always means more alike).")] = "cosine",
) -> None:
    """Score every pair of a list into a submission CSV (the course's verification competition format)."""
    from fvtool.data.embeddings import read_embeddings
    from fvtool.protocols.model import resolve_keys
    from fvtool.protocols.pair_list import read_pair_list, write_submission
    from fvtool.verification.scoring import Scoring, pair_scores, prepare

    pl = read_pair_list(pairs)
    es = read_embeddings(embeddings)
    scoring = Scoring(metric=metric)
    ia = resolve_keys(pl.a, es.keys, what=f"pair list {pairs.name}")
    ib = resolve_keys(pl.b, es.keys, what=f"pair list {pairs.name}")
    scores = pair_scores(prepare(es.embeddings, scoring), ia, ib, scoring)
    write_submission(output, scores)
    console.print(f"scored {len(scores)} pairs ({scoring.describe()['score']}) -> [bold]{output}[/]")
    if pl.labels is not None:
        from fvtool.verification.metrics import eer

        console.print(f"the list is labelled: EER {100 * eer(scores[~pl.labels], scores[pl.labels]).value:.2f}% "
                      f"(`fvtool verify --protocol {pairs}` gives the full report)")


@interop_app.command("bin-eval")
def bin_eval_cmd(
    path: Annotated[Path, typer.Argument(help="An insightface verification set (.bin).")],
    run: RunArg = None,
    prefer: PreferOpt = "best",
    folds: Annotated[int, typer.Option("--folds", help="Folds (insightface: 10, contiguous blocks).")] = 10,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Evaluate a run on a .bin set with insightface's rule (flip-sum embeddings, 10-fold accuracy)."""
    from fvtool.interop.bin_eval import evaluate_bin

    r = evaluate_bin(path, _run(run), prefer=prefer, folds=folds, device=device)
    t = Table(title=f"{path.name}: {r.n_pairs} pairs")
    for c in ("accuracy (mean ± std)", "exact-threshold accuracy", "EER (bob)"):
        t.add_column(c)
    ex = r.kfold["exact"]
    t.add_row(f"{100 * r.accuracy_mean:.2f} ± {100 * r.accuracy_std:.2f}%",
              f"{100 * ex['accuracy_mean']:.2f} ± {100 * ex['accuracy_std']:.2f}%", f"{100 * r.eer:.2f}%")
    console.print(t)


@interop_app.command("bob-export")
def bob_export_cmd(
    verify_dir: Annotated[Path | None, typer.Argument(help="A `verify` output folder (default: the latest).",
                                                      show_default=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Score file (default: <verify "
                                                "folder>/scores-<4|5>col.txt).", show_default=False)] = None,
    columns: Annotated[int, typer.Option("--columns", help="bob format: 4 or 5 columns.")] = 5,
) -> None:
    """Write a verify run's comparisons as a bob.bio score file (pairs protocols)."""
    from fvtool.interop.bob_scores import rows_from_verify_scores, write_scores

    vdir = verify_dir or Workspace.current().require_latest("verify", "a verify folder", "fvtool verify")
    rows = rows_from_verify_scores(Path(vdir) / "scores.npz")
    out = output or Path(vdir) / f"scores-{columns}col.txt"
    write_scores(out, rows, columns=columns)
    imp, gen = rows.split()
    console.print(f"wrote {len(rows.score)} scores ({len(gen)} genuine, {len(imp)} impostor) -> [bold]{out}[/]")


@interop_app.command("bob-verify")
def bob_verify_cmd(
    scores: Annotated[Path, typer.Argument(help="A bob.bio 4- or 5-column score file.")],
    far: Annotated[list[float] | None, typer.Option("--far", help="FAR target (repeatable).",
                                                    show_default=False)] = None,
) -> None:
    """Metrics of a bob score file with fvtool's rules (EER, ROCCH-EER, FRR@FAR, AUC)."""
    from fvtool.interop.bob_scores import read_scores
    from fvtool.verification.metrics import auc, eer, eer_rocch, frr_at_fars

    rows = read_scores(scores)
    imp, gen = rows.split()
    if len(imp) == 0 or len(gen) == 0:
        raise InputError(f"{scores}: needs both genuine and impostor comparisons ({len(gen)} / {len(imp)})")
    e = eer(imp, gen)
    t = Table(title=f"{scores.name}: {len(gen)} genuine, {len(imp)} impostor")
    for c in ("EER (bob)", "threshold", "EER (ROCCH)", "AUC"):
        t.add_column(c)
    t.add_row(f"{100 * e.value:.3f}%", f"{e.threshold:.6g}", f"{100 * eer_rocch(imp, gen):.3f}%",
              f"{auc(imp, gen):.5f}")
    console.print(t)
    targets = far or [1e-2, 1e-3, 1e-4]
    ops = Table(title="FRR at FAR")
    for c in ("FAR target", "attained FAR", "FRR", "threshold"):
        ops.add_column(c)
    for target, op in zip(targets, frr_at_fars(imp, gen, targets), strict=True):
        ops.add_row(f"{target:g}", f"{op.far:.3g}", f"{100 * op.frr:.3f}%" if op.measurable else "n/m",
                    f"{op.threshold:.6g}")
    console.print(ops)


def export_cmd(
    run: RunArg = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="ONNX file (default: <run>/model.onnx).",
                                                show_default=False)] = None,
    prefer: PreferOpt = "best",
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 17,
) -> None:
    """Export a trained embedder to ONNX and check that ONNX Runtime (or the ONNX checker) gives PyTorch's outputs.

    The graph takes normalised images [B, 3, S, S] (S and the normalisation are in the model's metadata)
    and returns embeddings [B, D]. Example: `fvtool export fvwork/runs/arcface -o arcface.onnx`.
    """
    from fvtool.interop.onnx_export import export_onnx

    r = _run(run)
    out = output or (Path(r) / "model.onnx" if Path(r).is_dir() else Path(r).with_suffix(".onnx"))
    res = export_onnx(r, out, prefer=prefer, opset=opset)
    diff = "n/a (onnxruntime not installed)" if res.max_abs_diff is None else f"{res.max_abs_diff:.2e}"
    console.print(f"exported {res.metadata['backbone']} ({res.input_size}px -> {res.embedding_size}-d) -> "
                  f"[bold]{res.path}[/]; checked with {res.checker}, max |onnx - torch| = {diff}")
