"""`fvtool identify --open-set`: embeddings file -> gallery/probe split -> CMC and DIR@FPIR as JSON.

The output format (`fvtool-openset`, docs/formats.md "Open-set output") is shared with the IJB-B/C
1:N protocol (fvtool/protocols/ijb.py), so `fvtool report` draws one CMC figure and one DIR table for
both. The numbers come from `open_set.py` (pure; tested against bob.measure's definitions).
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
from fvtool.atomic import sha256_file, write_json
from fvtool.data.embeddings import EmbeddingSet, read_embeddings
from fvtool.errors import InputError
from fvtool.identification.open_set import (
    DEFAULT_FPIRS,
    DEFAULT_RANKS,
    search_result,
    search_scores,
    split_open_set,
    templates,
)
from fvtool.verification.scoring import check_embeddings, l2_normalise
from fvtool.workspace import Workspace

FORMAT = "fvtool-openset"
VERSION = 1


@dataclass
class OpenSetOptions:
    unseen_fraction: float = 0.3
    gallery_images: int = 1
    seed: int = 0
    fpirs: Sequence[float] = DEFAULT_FPIRS
    ranks: Sequence[int] = DEFAULT_RANKS
    split: Path | None = None  # restrict to one part of an identity split first
    part: str = "test"
    output: Path | None = None  # a .json file
    extra: dict[str, Any] = field(default_factory=dict)


def envelope(path: Path, es: EmbeddingSet, protocol: dict[str, Any], result: dict[str, Any],
             elapsed: float) -> dict[str, Any]:
    return {
        "format": FORMAT, "version": VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "fvtool_version": __version__,
        "elapsed_s": round(elapsed, 3),
        "embeddings": {"path": str(path.resolve()), "name": path.stem, "sha256": sha256_file(path),
                       "n": len(es.keys), "dim": es.dim, "attrs": es.attrs_json()},
        "protocol": protocol, **result,
    }


def identify_open_set(path: str | Path, options: OpenSetOptions | None = None) -> tuple[Path, dict[str, Any]]:
    """Split one embeddings file into gallery and probes, search, write the JSON; returns (path, JSON)."""
    opts = options or OpenSetOptions()
    t0 = time.perf_counter()
    path = Path(path)
    es = read_embeddings(path)
    rows = np.arange(len(es.keys))
    subset = None
    if opts.split is not None:
        from fvtool.protocols.splits import read_split

        sp = read_split(opts.split)
        rows = np.asarray(sp.rows(opts.part, es.keys, es.identities), dtype=np.int64)
        if len(rows) == 0:
            raise InputError(f"{path}: no embedding belongs to part {opts.part!r} of {opts.split}")
        subset = {"split": str(Path(opts.split).resolve()), "name": sp.name, "part": opts.part}
    ids = [es.identities[i] for i in rows]
    keys = [es.keys[i] for i in rows]
    s = split_open_set(ids, keys=keys, unseen_fraction=opts.unseen_fraction, gallery_images=opts.gallery_images,
                       seed=opts.seed)
    check_embeddings(es.embeddings, es.keys, rows, what=str(path))
    x = es.embeddings[rows]
    gallery = templates(x, s.gallery_rows)
    probes = l2_normalise(np.asarray(x[s.probe_rows], np.float64))
    scores = search_scores(probes, gallery)
    result = search_result(scores, s.mates, opts.fpirs, opts.ranks)
    protocol = {"task": "open-set identification", "name": f"{path.stem}-openset", "source": "split",
                "unseen_fraction": s.unseen_fraction, "gallery_images": s.gallery_images, "seed": s.seed,
                "unseen_identities": len(s.unseen_ids), "template": "normalised mean of normalised embeddings",
                "scoring": "cosine", "subset": subset}
    m = envelope(path, es, protocol, result, time.perf_counter() - t0)
    name = f"{path.stem}" + (f"-{subset['name']}-{opts.part}" if subset else "") + "-openset.json"
    if opts.output is not None and opts.output.suffix == ".json":
        dest = opts.output
    else:
        dest = (opts.output or Workspace.current().dir("identify")) / name
    write_json(dest, m)
    Workspace.current().record("identify", dest)
    return dest, m


def identify_protocol(path: str | Path, spec: str, *, fpirs: Sequence[float] = DEFAULT_FPIRS,
                      ranks: Sequence[int] = DEFAULT_RANKS, output: Path | None = None) -> list[tuple[Path, dict]]:
    """IJB-B/C 1:N (`ijbc:ROOT`): closed-set G1+G2 and open-set G1, G2 results, one JSON each."""
    from fvtool.protocols.ijb import identification

    t0 = time.perf_counter()
    path = Path(path)
    es = read_embeddings(path)
    parts = identification(spec, es, fpirs, ranks)
    elapsed = time.perf_counter() - t0
    folder = output or Workspace.current().dir("identify")
    if folder.suffix == ".json":
        raise InputError(f"--output {folder}: the IJB 1:N protocol writes several files; give a folder")
    out = []
    for r in parts:
        protocol = r.pop("protocol")
        m = envelope(path, es, protocol, r, elapsed)
        dest = folder / f"{path.stem}-{protocol['name']}.json"
        write_json(dest, m)
        Workspace.current().record("identify", dest)
        out.append((dest, m))
    return out


def summary_table(results: Sequence[dict[str, Any]]):
    """Rank-k identification rates and DIR@FPIR, one row per result."""
    from rich.table import Table

    ranks = list(results[0]["cmc"]["at"])
    fpirs = [d["fpir_target"] for d in results[0]["dir"]]
    t = Table(title="open-set identification (CMC on mated probes; DIR at FPIR on all probes)",
              header_style="bold")
    t.add_column("embeddings / protocol", overflow="fold")
    for r in ranks:
        t.add_column(f"rank-{r}", justify="right")
    for f in fpirs:
        t.add_column(f"DIR@FPIR={f:g}", justify="right")
    t.add_column("gallery / mated / non-mated", justify="right")
    for m in results:
        c = m["counts"]
        row = [f"{m['embeddings']['name']} / {m['protocol']['name']}"]
        row += ["n/a" if m["cmc"]["at"][r] is None else f"{100 * m['cmc']['at'][r]:.2f}%" for r in ranks]
        row += [("n/a" if d["dir"] is None else f"{100 * d['dir']:.2f}%" + ("" if d["measurable"] else " (n/m)"))
                for d in m["dir"]]
        row.append(f"{c['gallery']:,} / {c['mated_probes']:,} / {c['nonmated_probes']:,}")
        t.add_row(*row)
    t.caption = "n/m: FPIR target below 1 / #non-mated probes (not measurable)"
    return t
