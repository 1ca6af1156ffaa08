"""`fvtool align SRC [-o DST]`: MTCNN detection + crop/similarity alignment of an identity folder.

Thin wrapper over `fvtool.align.stage.align_folder`: parses options, picks the workspace default
output (<workspace>/aligned/<SRC folder name>), prints the end summary, records the output in
latest.json, and exits 4 when some files could not be read.
"""

from pathlib import Path
from typing import Annotated

import typer

from fvtool.align.options import (
    DEFAULT_CENTER_FRACTION,
    DEFAULT_THRESHOLDS,
    FORMATS,
    KEEP_POLICIES,
    MODES,
    AlignOptions,
)
from fvtool.console import console
from fvtool.errors import RERUN_TO_RESUME, InputError, PartialFailure, on_interrupt
from fvtool.runtime import busy_threads
from fvtool.workspace import Workspace

HELP = (
    "Detect faces with MTCNN and align them into a folder that mirrors SRC.\n\n"
    "SRC is a folder of identity sub-folders: LFW (Name/Name_0001.jpg), AT&T (s1/1.pgm) or any ImageFolder "
    "layout. Any common image file is read (JPEG, PNG, PGM, BMP, GIF, TIFF, WebP; grey, alpha, palette, CMYK, "
    "16-bit; EXIF orientation applied).\n\n"
    "Writes DST/<identity>/<file>.<format>, DST/manifest.csv (one row per input file: status ok / fallback / "
    "no_face / unreadable / error, detector probability, box, 5 landmarks, reason) and DST/align.json (source, "
    "options, counts). Rerunning the same command resumes: finished images are kept, the rest is redone.\n\n"
    "Exit code 0 when every file was read, 4 when some were unreadable (listed in the manifest), 3 for a bad "
    "source or options that do not match an earlier run into the same DST.\n\n"
    "Examples:\n\n"
    "fvtool align data/lfw-subset   (similarity 112x112 into <workspace>/aligned/lfw-subset)\n\n"
    "fvtool align ../shared/data/lfw-deepfunneled -o /tmp/lfw112 --mode similarity --size 112\n\n"
    "fvtool align ../shared/data/att_faces --mode crop --size 160 --margin 14 --format png\n\n"
    "fvtool align ijbc:/data/IJB_release/IJBC -o fvwork/aligned/ijbc   (from the release's 5 points)"
)


def _thresholds(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"--thresholds must be three comma-separated numbers such as 0.6,0.7,0.7, "
                         f"got {text!r}") from None
    if len(parts) != 3:
        raise InputError(f"--thresholds needs exactly three numbers (P-net, R-net, O-net), got {text!r}")
    return parts  # type: ignore[return-value]


def align_command(
    src: Annotated[Path, typer.Argument(help="Folder of identity sub-folders to align, or a dataset as its publisher "
                                        "ships it: an insightface .rec (or its folder; pre-aligned, no detection), "
                                        "a VGGFace2 train/ or test/ folder (its landmarks are used, MTCNN only where "
                                        "they are missing), CASIA-WebFace, MEDS-II (docs/datasets.md), or "
                                        "ijbb:ROOT / ijbc:ROOT (an IJB-B/C release: its loose crops are warped from "
                                        "the given 5 points onto the similarity template at --size, no detection).",
                                        show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", show_default=False,
                     help="Output folder. Default: <workspace>/aligned/<SRC folder name>."),
    ] = None,
    size: Annotated[int, typer.Option("--size", "-s", help="Output side in pixels (square), e.g. 64, 96, 112, 128, "
                                                           "160.")] = 112,
    mode: Annotated[
        str,
        typer.Option("--mode", "-m", help=f"Geometry: {' | '.join(MODES)}. `similarity` maps the 5 landmarks onto "
                                          "the standard ArcFace 112x112 template scaled to --size (eyes level, same "
                                          "height); `crop` is the detector box plus --margin resized, as "
                                          "facenet-pytorch does."),
    ] = "similarity",
    margin: Annotated[float, typer.Option("--margin", help="Crop mode: margin around the box in output pixels "
                                                           "(facenet-pytorch's meaning). Ignored in similarity "
                                                           "mode.")] = 0.0,
    min_face_size: Annotated[int, typer.Option("--min-face-size", help="Smallest face to look for, in source "
                                                                       "pixels. Larger is faster (fewer pyramid "
                                                                       "levels).")] = 20,
    thresholds: Annotated[str, typer.Option("--thresholds", help="MTCNN P-, R-, O-net score thresholds, "
                                                                 "comma-separated.")]
    = ",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
    keep: Annotated[
        str,
        typer.Option("--keep", help=f"Which face to keep when several are found: {' | '.join(KEEP_POLICIES)}. "
                                    "`center` = closest to the image centre (LFW convention: the labelled person "
                                    "is in the middle), `largest` = largest box, `confident` = highest "
                                    "probability."),
    ] = "center",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (CUDA when available).")]
    = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per MTCNN call (equal-size images "
                                                                       "are batched together).")] = 16,
    image_format: Annotated[str, typer.Option("--format", help=f"Output image format: {' | '.join(FORMATS)}.")]
    = "jpg",
    quality: Annotated[int, typer.Option("--quality", help="JPEG quality (1-100); ignored for png.")] = 95,
    on_fail: Annotated[
        str,
        typer.Option("--on-fail", help="When no face is found: `center-crop` writes a centre crop (status "
                                       "fallback, the LFW convention), `skip` writes nothing (status no_face). "
                                       "Either way the manifest has the row."),
    ] = "center-crop",
    center_crop_fraction: Annotated[
        float | None,
        typer.Option("--center-crop-fraction", show_default=False,
                     help="Side of the fallback centre crop as a fraction of the shorter image side. Default: "
                          + ", ".join(f"{v:g} ({k})" for k, v in DEFAULT_CENTER_FRACTION.items())
                          + ", calibrated on LFW so fallbacks frame the face like detected crops."),
    ] = None,
    max_detect_side: Annotated[int, typer.Option("--max-detect-side", help="Images with a longer side are "
                                                                           "downscaled for detection only; the "
                                                                           "crop is taken from the full "
                                                                           "image.")] = 1024,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Keep images finished by an earlier run "
                                                                      "into the same output (the default), or "
                                                                      "redo everything.")] = True,
    threads: Annotated[
        int | None,
        typer.Option("--threads", show_default=False, help="Torch CPU threads for MTCNN. Default: one per usable CPU, "
                                                           "or 1 when the machine is busy (1-minute load average >= "
                                                           "usable CPUs), where more threads wait on each other."),
    ] = None,
    reuse_detections: Annotated[
        Path | None,
        typer.Option("--reuse-detections", show_default=False,
                     help="An earlier `fvtool align` output of the same SRC (folder or manifest): take its "
                          "detections instead of running MTCNN again (e.g. a crop-mode or 64-px variant of an "
                          "aligned dataset in seconds). Detection options must match."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    from fvtool.protocols.ijb import is_ijb_spec

    if is_ijb_spec(str(src)):
        _align_ijb(str(src), output, size, threads, quiet)
        return
    if threads is None:  # MTCNN's threads on a busy machine: 1 instead of one per CPU (fvtool/runtime.py)
        threads, note = busy_threads()
        if note:
            console.print(f"[yellow]note:[/] {note}")
    options = AlignOptions(
        size=size, mode=mode, margin=margin, min_face_size=min_face_size, thresholds=_thresholds(thresholds),
        keep=keep, device=device, batch_size=batch_size, image_format=image_format, quality=quality,
        on_fail=on_fail, center_crop_fraction=center_crop_fraction, max_detect_side=max_detect_side,
        resume=resume, threads=threads, show_progress=not quiet, reuse_detections=reuse_detections,
    )
    from fvtool.align.stage import align_folder, print_summary  # torch + MTCNN: only when aligning

    workspace = Workspace.current()
    dst = output if output is not None else workspace.dir("align") / src.resolve().name
    with on_interrupt(f"{RERUN_TO_RESUME} (finished images are kept)" if resume
                      else "rerun to start again (--no-resume redoes every image)"):
        summary = align_folder(src, dst, options)
    print_summary(summary)
    workspace.record("align", dst)
    bad_source = int(summary.extra.get("source_problems", 0) or 0)
    if bad_source:
        console.print(f"[yellow]{bad_source} entries of {src} could not be read as images (bad records, list or "
                      f"landmark rows); they are listed under source_problems in {dst / 'align.json'}[/]")
    if summary.failed or bad_source:
        raise PartialFailure(
            f"{summary.failed} of {summary.total} files could not be processed "
            f"({summary.counts['unreadable']} unreadable, {summary.counts['error']} errors); "
            f"see the rows with those statuses in {summary.manifest}"
            + (f"; {bad_source} source entries unreadable (align.json)" if bad_source else "")
        )
    console.print(f"[green]aligned[/] {summary.counts['ok'] + summary.counts['fallback']} images into {dst}")


def _align_ijb(spec_text: str, output: Path | None, size: int, threads: int | None, quiet: bool) -> None:
    """`fvtool align ijbc:ROOT`: landmarks given by the benchmark, so no detector runs."""
    from fvtool.protocols.ijb import align_ijb, parse_spec

    spec = parse_spec(spec_text)
    workspace = Workspace.current()
    dst = output if output is not None else workspace.dir("align") / f"{spec.variant}-{size}"
    res = align_ijb(spec, dst, size=size, threads=threads or 2, show_progress=not quiet)
    workspace.record("align", dst)
    console.print(f"[green]aligned[/] {res.n} {spec.variant.upper()} images into {dst} ({res.written} written, "
                  f"{res.reused} kept from an earlier run)")
    console.print(f"next: [bold]fvtool embed RUN --data {dst}[/] (or --model ...), then "
                  f"[bold]fvtool verify EMB --protocol {spec_text}[/]")


def register(app: typer.Typer) -> None:
    app.command("align", help=HELP, no_args_is_help=True)(align_command)
