"""`fvtool report`: compare verify outputs and training runs in tables, figures and one HTML page."""

from pathlib import Path
from typing import Annotated

import typer

from fvtool.console import console
from fvtool.errors import InputError


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{option} {text!r}: write comma-separated numbers, e.g. 1e-3,1e-4,1e-5") from None
    if not vals or not all(0 < v < 1 for v in vals):
        raise InputError(f"{option} {text!r}: every FAR must be in (0, 1)")
    return vals


def report(
    inputs: Annotated[
        list[str] | None,
        typer.Argument(help="Verify output folders and/or training run folders (globs fine, e.g. 'fvwork/verify/*'); "
                            "a folder holding several of them counts as all of them. Default: every verify output in "
                            "the workspace and the runs they came from."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Report folder (default <workspace>/report). Replaced as a whole when the "
                                         "report is complete; an existing folder that is not a report is refused."),
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option("--baseline", help="Label of the run the others are compared with (paired difference and CI), "
                                        "within each protocol. Default: the first run of each protocol."),
    ] = None,
    det_axes: Annotated[
        str, typer.Option("--det-axes", help="DET axes: probit (normal deviate, DETware/bob style) or log "
                                             "(log-log, NIST FRVT style).")
    ] = "probit",
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Rename runs: OLD=NEW (OLD = automatic label or folder name), or NEW alone "
                                     "(assigned to the runs in order). Repeatable."),
    ] = None,
    fars: Annotated[
        str, typer.Option("--fars", help="FAR targets for the table columns and the paired comparison; a target "
                                         "verify did not compute is computed from its stored scores (pairs "
                                         "protocols).")
    ] = "1e-3,1e-4,1e-5",
    mark_fars: Annotated[
        str, typer.Option("--mark-fars", help="FAR operating points marked on the DET curves.")
    ] = "1e-4,1e-5",
    threshold: Annotated[
        str, typer.Option("--threshold", help="Decision threshold drawn in the score histograms and used to judge the "
                                              "example pairs: eer or far=<FAR> (e.g. far=1e-3).")
    ] = "eer",
    examples: Annotated[
        int, typer.Option("--examples", min=0, help="Example pairs per run in the pair grid (0: no grid).")
    ] = 16,
    data_root: Annotated[
        Path | None,
        typer.Option("--data-root", help="Where the example-pair images are (default: the data root recorded by "
                                         "verify/embed)."),
    ] = None,
    formats: Annotated[
        str, typer.Option("--formats", help="Figure file formats besides the embedded PNG: svg, pdf or both "
                                            "(comma-separated), or none.")
    ] = "svg",
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Identity-bootstrap replicates for the paired comparison and for "
                                                     "CIs a verify output lacks (0: neither).")
    ] = 1000,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, help="Seed of the bootstrap draws (same seed, same intervals).")] = 0,
    identify: Annotated[
        list[Path] | None,
        typer.Option("--identify", help="`fvtool identify` result JSONs or folders of them: closed-set top-1/top-5 "
                                        "columns beside the runs whose embeddings file they measured (matched by "
                                        "hash). Repeatable. Default: <workspace>/identify/ and the identify/ folder "
                                        "beside each verify output's folder.", show_default=False),
    ] = None,
    title: Annotated[str, typer.Option("--title", help="Report title.")] = "fvtool report",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Compare runs: tables (Markdown, CSV, HTML), DET/ROC overlays at the operating points, score histograms,
    training curves, example pairs, reconstruction grids, and one self-contained report.html."""
    from fvtool.reporting.stage import ReportOptions, make_report, print_warnings

    fmt = tuple(f.strip() for f in formats.split(",") if f.strip() and f.strip() != "none")
    bad = [f for f in fmt if f not in ("svg", "pdf")]
    if bad:
        raise InputError(f"--formats: unknown format(s) {', '.join(bad)} (choose svg, pdf or none)")
    if det_axes not in ("probit", "log"):
        raise InputError(f"--det-axes {det_axes!r}: choose probit or log")
    options = ReportOptions(
        baseline=baseline, det_axes=det_axes, labels=tuple(label or ()), fars=_floats(fars, "--fars"),
        mark_fars=_floats(mark_fars, "--mark-fars"), threshold=threshold, examples=examples, data_root=data_root,
        formats=("png", *fmt), bootstrap=bootstrap, seed=seed, title=title, show_progress=not quiet,
        identify=identify,
    )
    result = make_report(inputs or [], out, options)
    print_warnings(result.warnings)
    console.print(result.summary())
    print(result.html)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
