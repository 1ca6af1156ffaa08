"""`fvtool verify [EMBEDDINGS] --protocol lfw|meds|ms1m|FILE`: scores + metrics of an embeddings file.

Thin wrapper over `fvtool.verification.stage.verify`: picks the workspace defaults (the latest
`embed` output; the latest recorded protocol, else the LFW preset), prints the summary table.
"""

from pathlib import Path
from typing import Annotated

import typer

from fvtool.verification.options import FTA_RULES, IDENTITY_RULES, METRICS, THRESHOLD_RULES
from fvtool.workspace import Workspace


def register(app: typer.Typer) -> None:
    app.command("verify", help=(
        "Score an embeddings file on a protocol and report EER, FRR at fixed FARs, k-fold accuracy (LFW), "
        "AUC, DET/ROC points; optionally identity-bootstrap confidence intervals and a paired comparison "
        "with a second embeddings file. Outputs: <workspace>/verify/<embeddings>-<protocol>/ "
        "(metrics.json, scores, det.csv, roc.csv; see docs/formats.md)."
    ))(verify_command)


def verify_command(
    embeddings: Annotated[Path | None, typer.Argument(
        help="Embeddings HDF5 (from `fvtool embed`). Default: the latest embed output of the workspace.",
        show_default=False)] = None,
    protocol: Annotated[str | None, typer.Option(
        "--protocol", "-p",
        help="Preset (lfw: View 2 10-fold accuracy + EER; meds: all pairs, FRR@FAR=1e-5; ms1m: all pairs, "
             "FRR@FAR=1e-4) or a protocol file (fvtool-protocol JSON or LFW pairs.txt). Default: the latest "
             "protocol of the workspace, else lfw.", show_default=False)] = None,
    metric: Annotated[str, typer.Option("--metric", help=f"Score: {', '.join(METRICS)} (distances are negated "
                                        "into similarities).")] = "cosine",
    raw: Annotated[bool, typer.Option("--raw", help="Euclidean metrics on raw (not L2-normalised) embeddings; "
                                      "cosine always normalises.")] = False,
    far: Annotated[list[float] | None, typer.Option(
        "--far", help="FAR target (repeatable); the first is the primary operating point. Default: the "
                      "preset's targets, then 1e-2 1e-3 1e-4 1e-5.", show_default=False)] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Identity-bootstrap replicates for confidence "
                                           "intervals of EER and FRR@FAR (0: none; 1000 is typical).")] = 0,
    seed: Annotated[int, typer.Option(
        "--seed", min=0, help="Seed of the bootstrap draws: same seed, same intervals.")] = 0,
    level: Annotated[float, typer.Option("--level", help="Confidence level of the intervals, in (0, 1).")] = 0.95,
    compare: Annotated[Path | None, typer.Option(
        "--compare", help="A second embeddings file (same images): paired identity-bootstrap comparison "
                          "(difference with interval) of EER and FRR@FAR.", show_default=False)] = None,
    fta: Annotated[str, typer.Option("--fta", help=f"Failed alignments ({' or '.join(FTA_RULES)}): include = "
                                     "score their fallback embeddings (LFW convention); exclude = drop their "
                                     "comparisons and also report ISO transaction-level rates.")] = "include",
    threshold: Annotated[float | None, typer.Option(
        "--threshold", help="Also report FAR, FRR, HTER (and accuracy on pair lists) at this fixed score "
                            "threshold (accept iff score >= threshold).", show_default=False)] = None,
    threshold_from: Annotated[Path | None, typer.Option(
        "--threshold-from", help="Same, at the threshold a verify run on a dev/validation protocol chose "
                                 "(its folder or metrics.json; same model and --metric): the honest way to "
                                 "report accuracy on a test set.", show_default=False)] = None,
    threshold_rule: Annotated[str, typer.Option(
        "--threshold-rule", help=f"Which threshold of --threshold-from: {' or '.join(THRESHOLD_RULES)} (lowest "
                                 "FAR + FRR, i.e. best balanced accuracy; or the EER point).")] = "min_hter",
    out: Annotated[Path | None, typer.Option("--output", "-o", help="Output folder (default: "
                                             "<workspace>/verify/<embeddings stem>-<protocol name>/).",
                                             show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, or cuda[:i] to run the all-pairs block "
                                        "products on a GPU with torch.")] = "cpu",
    allow_unhashed: Annotated[bool, typer.Option(
        "--allow-unhashed", help="Score a protocol file that carries no sha256 (hand-written or stripped): "
                                 "edits to it cannot be detected, so metrics.json then says so in 'warnings'. "
                                 "Files written by fvtool always carry the hash.")] = False,
    identity_mismatch: Annotated[str, typer.Option(
        "--identity-mismatch", help=f"Embeddings identities that group the protocol images into other people "
                                    f"than the protocol's identities ({' or '.join(IDENTITY_RULES)}): refuse = "
                                    "stop (usually the wrong file); warn = score anyway, with the counts in "
                                    "metrics.json 'warnings'.")] = "refuse",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    from fvtool.verification.stage import VerifyOptions, print_summary, verify  # numpy, h5py: not for --help

    ws = Workspace.current()
    if embeddings is None:
        embeddings = ws.require_latest("embed", "an embeddings file", "fvtool embed")
    if protocol is None:
        latest = ws.latest("protocol")
        protocol = str(latest) if latest is not None else "lfw"
    result = verify(embeddings, protocol, VerifyOptions(
        metric=metric, normalise=not raw, far_targets=far or None, bootstrap=bootstrap, seed=seed, level=level,
        compare=compare, out=out, device=device, fta=fta, threshold=threshold, threshold_from=threshold_from,
        threshold_rule=threshold_rule, show_progress=not quiet, allow_unhashed=allow_unhashed,
        identity_mismatch=identity_mismatch,
    ))
    print_summary(result)
