"""`fvtool embed [RUN_OR_CKPT]`: a trained run + a dataset -> one embeddings HDF5 file.

`fvtool embed RUN --shard I/N` embeds shard I of N (on many machines/GPUs), and
`fvtool embed merge SHARD... -o OUT.h5` joins the shards (fvtool/embed_shards.py).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from fvtool.console import console
from fvtool.errors import RERUN_TO_RESUME, InputError, on_interrupt
from fvtool.runtime import set_threads
from fvtool.workspace import Workspace

if TYPE_CHECKING:
    from fvtool.embedding import EmbedResult


def embed_command(
    run: Annotated[list[str] | None, typer.Argument(help="Run folder or checkpoint file. Default: the workspace's "
                   "latest training run (its best.pt, else last.pt). `merge SHARD...` joins shard files instead.",
                   show_default=False)] = None,
    data: Annotated[str | None, typer.Option("--data", help="Folder/manifest to embed, or a dataset as shipped "
                    "(insightface .rec, VGGFace2 part, MEDS-II, the course's ver_data; docs/datasets.md). Default: "
                    "the workspace's latest aligned data, else the run's training data.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output HDF5 (default <workspace>/embeddings/"
                   "<run>.h5, or <run>-<data>.h5 for other data than the run's).")] = None,
    tta: Annotated[str, typer.Option("--tta", help="Test-time augmentation: none, flip-sum (e(x) + e(flip x), then "
                   "L2-normalised: the insightface convention) or flip-concat (\\[e(x), e(flip x)], each "
                   "normalised).")] = "none",
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="Which checkpoint of a run folder: best or "
                          "last.")] = "best",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 256,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[str, typer.Option("--amp", help="Mixed precision for inference: off, auto (bf16 on CUDA), bf16, "
                   "fp16. Embeddings are stored as float32 either way.")] = "off",
    input_size: Annotated[int | None, typer.Option("--input-size", help="With a run: check only (refuse if it was "
                          "trained at another size). With --model: the model's square input side (default: the "
                          "ONNX graph's fixed size, else 112).", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", help="Embed with a model from outside fvtool instead of a "
                     "run: FILE.onnx (onnxruntime, CPU or CUDA provider), a TorchScript file (needs --trust-model), "
                     "or BACKBONE:weights=FILE[,embedding_size=D] (a registry backbone with a plain state dict, "
                     "e.g. iresnet50:weights=backbone.pth). Needs --data. Nothing is downloaded.",
                     show_default=False)] = None,
    trust_model: Annotated[bool, typer.Option("--trust-model", help="Allow a TorchScript --model. A TorchScript "
                           "file is a program: loading it runs code from the file with your permissions, so use "
                           "it only for files from a source you trust.")] = False,
    mean: Annotated[str, typer.Option("--mean", help="With --model: per-channel mean subtracted from 0..255 pixels, "
                    "one value or R,G,B (insightface zoo and facenet: 127.5).")] = "127.5",
    std: Annotated[str | None, typer.Option("--std", help="With --model: per-channel divisor after the mean, one "
                   "value or R,G,B (insightface: 127.5; facenet-pytorch: 128). Default 127.5.",
                   show_default=False)] = None,
    scale: Annotated[float | None, typer.Option("--scale", help="With --model: multiply by this instead of dividing "
                     "by --std (scale = 1/std, e.g. 0.0078125).", show_default=False)] = None,
    channels: Annotated[str, typer.Option("--channels", help="With --model: the channel order the model takes, rgb "
                        "or bgr (insightface's older zoo models take BGR).")] = "rgb",
    crop: Annotated[float, typer.Option("--crop", help="With --model: keep this central fraction of each source "
                    "image before resizing to --input-size (1 = whole image).")] = 1.0,
    allow_resize: Annotated[bool, typer.Option("--allow-resize", help="Embed data whose source images have another "
                            "size than the training data's (faces then sit at another scale).")] = False,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Embed only shard I of N (I from 0), e.g. 0/4 ... 3/4 "
                     "on four machines; output <run>.shard-I-of-N.h5. Join them with `fvtool embed merge`. Use the "
                     "same --batch-size for every shard.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Identity split file (fvtool pairs split): embed only "
                     "the images of its --part, e.g. the test identities your protocols score. Default: every "
                     "image.")] = None,
    part: Annotated[str, typer.Option("--part", help="Part of --split to embed: train, val, test, or heldout (the "
                    "images of training identities withheld from training, `fvtool pairs split --heldout-images`); "
                    "several joined by commas, e.g. train,heldout for `fvtool identify --heldout`.")] = "test",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Embed a dataset with a trained run, or with a foreign model (--model: ONNX, TorchScript, registry
    backbone + weights); resumable (rerun the same command after an interruption).
    `fvtool embed merge SHARD... [-o OUT.h5]` joins the files of `--shard I/N` runs."""
    from fvtool.embed_shards import parse_shard

    args = list(run or [])
    if args and args[0] == "merge":
        if shard is not None or data is not None or split is not None:
            raise InputError("embed merge takes shard files and -o only (--shard/--data/--split belong to the "
                             "embedding runs)")
        _merge(args[1:], out)
        return
    if len(args) > 1:
        raise InputError(f"embed takes one run folder or checkpoint (got {len(args)}: {' '.join(args)}); to join "
                         "shard files: fvtool embed merge SHARD... -o OUT.h5")
    run_arg = args[0] if args else None
    shard_ix = parse_shard(shard) if shard is not None else None
    if model is not None:
        if run_arg is not None:
            raise InputError(f"give a run ({run_arg}) or --model, not both")
        set_threads(threads)
        _embed_foreign(model, data, out, input_size=input_size, trust=trust_model, mean=mean, std=std, scale=scale,
                       channels=channels, crop=crop, tta=tta, batch_size=batch_size, device=device, amp=amp,
                       allow_resize=allow_resize, quiet=quiet, shard=shard_ix, split=split, part=part)
        return

    from fvtool.embedding import embed_dataset
    from fvtool.training.checkpoint import resolve_checkpoint

    if checkpoint not in ("best", "last"):
        raise InputError(f"--checkpoint {checkpoint!r}: choose best or last")
    set_threads(threads)
    ws = Workspace.current()
    source = Path(run_arg) if run_arg else ws.require_latest("train", "a run folder or checkpoint", "fvtool train")
    ckpt = resolve_checkpoint(source, prefer=checkpoint)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    if data is None:
        latest = ws.latest("align")
        data = str(latest) if latest is not None else None
    if out is None:
        name = run_dir.name
        if data is not None:
            from fvtool.training.checkpoint import json_field, load_checkpoint

            trained_on = (json_field(load_checkpoint(ckpt), "config") or {}).get("data")
            if trained_on and Path(trained_on).resolve() != Path(data).resolve():
                name = f"{name}-{Path(data).resolve().name}"
        if split is not None:
            name = f"{name}-{part.replace(',', '+')}"
        suffix = f".shard-{shard_ix[0]}-of-{shard_ix[1]}" if shard_ix else ""
        out = ws.dir("embed") / f"{name}{suffix}.h5"
    console.print(f"embedding with {ckpt} -> {out}")
    with on_interrupt(f"{RERUN_TO_RESUME} (the finished chunks in {out}.partial are kept)"):
        res = embed_dataset(ckpt, data, out, tta=tta, batch_size=batch_size, device=device, amp=amp,
                            allow_resize=allow_resize, input_size=input_size, prefer=checkpoint,
                            show_progress=not quiet, shard=shard_ix, split=split, part=part)
    _finish(res, shard_ix)


def _embed_foreign(spec: str, data: str | None, out: Path | None, *, input_size: int | None, trust: bool, mean: str,
                   std: str | None, scale: float | None, channels: str, crop: float, tta: str, batch_size: int,
                   device: str, amp: str, allow_resize: bool, quiet: bool, shard: tuple[int, int] | None,
                   split: str | None, part: str) -> None:
    """`fvtool embed --model SPEC --data D`: preprocessing from the options, output name from the model."""
    from fvtool.embedding import embed_with_model
    from fvtool.interop.foreign_model import Preprocess, onnx_input_size

    if data is None:
        raise InputError("--model needs --data (the aligned images to embed)")
    if std is not None and scale is not None:
        raise InputError("give --std or --scale, not both (scale = 1/std)")
    if scale is not None and not scale > 0:
        raise InputError(f"--scale {scale}: must be positive")
    std_t = (1.0 / scale,) * 3 if scale is not None else Preprocess.triple(std or "127.5", "--std")
    size = input_size or onnx_input_size(spec) or 112
    pre = Preprocess(input_size=size, mean=Preprocess.triple(mean, "--mean"), std=std_t,  # type: ignore[arg-type]
                     channels=channels, crop=crop)
    ws = Workspace.current()
    if out is None:
        stem = Path(spec.partition(":weights=")[0] if ":" in spec and not Path(spec).is_file() else spec).stem
        name = f"{stem}-{Path(data).resolve().name}" + (f"-{part.replace(',', '+')}" if split is not None else "")
        suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard else ""
        out = ws.dir("embed") / f"{name}{suffix}.h5"
    console.print(f"embedding with {spec} ({pre.describe()}, {size}x{size}) -> {out}")
    with on_interrupt(f"{RERUN_TO_RESUME} (the finished chunks in {out}.partial are kept)"):
        res = embed_with_model(spec, data, out, preprocess=pre, trust_model=trust, tta=tta, batch_size=batch_size,
                               device=device, amp=amp, allow_resize=allow_resize, show_progress=not quiet,
                               shard=shard, split=split, part=part)
    _finish(res, shard)


def _finish(res: "EmbedResult", shard_ix: tuple[int, int] | None) -> None:
    """Record the output and print the summary (runs and foreign models alike)."""
    ws = Workspace.current()
    if shard_ix is None:  # a shard is not a whole embeddings file: later stages must not pick it up
        ws.record("embed", res.path)
    t = Table(title="embed summary", title_justify="left", show_header=False)
    t.add_column("what", no_wrap=True)
    t.add_column("value", overflow="fold")
    t.add_row("output", str(res.path))
    t.add_row("images", f"{res.n} x {res.dim}-d" + (f" (resumed at {res.resumed_at})" if res.resumed_at else ""))
    if shard_ix is not None:
        a = res.attrs
        t.add_row("shard", f"{a['shard']}: rows {a['shard_start']}-{a['shard_stop'] - 1} of {a['shard_total']}")
    t.add_row("model", f"{res.attrs.get('model', res.attrs['backbone'])} @ {res.attrs['input_size']}px, "
                       f"tta {res.attrs['tta']}")
    t.add_row("data", res.attrs["data_root"] + (f" ({res.attrs['split_part']} part of {res.attrs['split_name']})"
                                                 if "split_part" in res.attrs else ""))
    t.add_row("time", f"{res.seconds:.1f} s ({res.img_per_s:.0f} img/s)")
    console.print(t)
    if shard_ix is not None:
        console.print(f"next: when all {shard_ix[1]} shards are done, [bold]fvtool embed merge "
                      f"{str(res.path).replace(f'shard-{shard_ix[0]}-of', '*')} -o OUT.h5[/]")
    else:
        console.print(f"next: [bold]fvtool verify {res.path} --protocol <lfw|meds|FILE>[/]")


def _merge(shards: list[str], out: Path | None) -> None:
    """`fvtool embed merge`: check coverage and sameness, write one embeddings file, record it."""
    import re

    from fvtool.embed_shards import merge_shards

    if not shards:
        raise InputError("embed merge: give the shard files, e.g. fvtool embed merge fvwork/embeddings/run.shard-*.h5")
    if out is None:
        stem = re.sub(r"\.shard-\d+-of-\d+$", "", Path(shards[0]).stem)
        if stem == Path(shards[0]).stem:
            raise InputError(f"embed merge: {shards[0]} is not named <name>.shard-I-of-N.h5; give -o OUT.h5")
        out = Path(shards[0]).with_name(f"{stem}.h5")
    res = merge_shards(list(shards), out)
    Workspace.current().record("embed", res.path)
    console.print(f"merged {len(res.shards)} shards -> {res.path} ({res.n} x {res.dim}-d)")
    console.print(f"next: [bold]fvtool verify {res.path} --protocol <lfw|meds|FILE>[/]")


def register(app: typer.Typer) -> None:
    app.command("embed", help=embed_command.__doc__)(embed_command)
