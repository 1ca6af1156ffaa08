"""Sharded embedding: `embed --shard I/N` + `embed merge` equals an unsharded embed bit for bit; shards lie on
the unsharded batch grid; merge refuses gaps, overlaps, other checkpoints/data and files that are not shards."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fvtool.cli import main
from fvtool.data.embeddings import read_embeddings
from fvtool.embed_shards import batch_grid, coverage_problems, merge_shards, parse_shard, shard_range
from fvtool.embedding import embed_dataset
from fvtool.errors import InputError
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train
from fvtool.workspace import Workspace

BATCH, CHUNK = 7, 16  # chunk not a multiple of the batch: the grid restarts at every chunk


@pytest.fixture(scope="module")
def setup(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    data = root / "data"
    for ident in sorted(p.name for p in embedded_data.iterdir() if p.is_dir())[:9]:
        shutil.copytree(embedded_data / ident, data / ident)  # 90 images
    runs = {}
    for seed in (0, 1):
        cfg = TrainConfig(data=str(data), input_size=16, embedding_size=8, epochs=1, batch_size=10, lr=0.05,
                          threads=1, seed=seed, val_protocol="none")
        runs[seed] = root / f"run{seed}"
        train(cfg, runs[seed], show_progress=False, cache_dir=root / "cache")
    full = root / "full.h5"
    embed_dataset(runs[0], data, full, batch_size=BATCH, chunk=CHUNK, show_progress=False, cache_dir=root / "cache")
    return {"root": root, "data": data, "run": runs[0], "other_run": runs[1], "full": full}


def _shard(setup: dict[str, Path], i: int, n: int, run: Path | None = None, name: str = "") -> Path:
    out = setup["root"] / f"{name or 'run'}.shard-{i}-of-{n}.h5"
    embed_dataset(run or setup["run"], setup["data"], out, batch_size=BATCH, chunk=CHUNK, show_progress=False,
                  cache_dir=setup["root"] / f"cache-shard{i}", shard=(i, n))  # each "machine" its own cache
    return out


def test_grid_and_shard_ranges() -> None:
    assert batch_grid(40, 7, 16).tolist() == [0, 7, 14, 16, 23, 30, 32, 39, 40]
    for n_rows, b, chunk, n in ((90, 7, 16, 3), (1000, 64, 256, 7), (5, 2, 4, 5), (13233, 256, 2048, 8)):
        grid = set(batch_grid(n_rows, b, chunk).tolist())
        ranges = [shard_range(n_rows, i, n, batch_size=b, chunk=chunk) for i in range(n)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n_rows
        assert all(ranges[i][1] == ranges[i + 1][0] for i in range(n - 1))  # contiguous, disjoint
        assert all(a in grid and c in grid for a, c in ranges)
        sizes = [c - a for a, c in ranges]
        assert max(sizes) - min(sizes) <= 2 * b  # balanced up to the grid
    assert parse_shard("2/8") == (2, 8) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("8/8", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_sharded_embed_and_merge_equal_the_unsharded_embed(setup: dict[str, Path]) -> None:
    shards = [_shard(setup, i, 3) for i in range(3)]
    starts = [read_embeddings(s).attrs["shard_start"] for s in shards]
    assert starts == [0, 30, 62]  # first grid points >= 0, 30, 60: 0, 16+14, 48+14
    merged = setup["root"] / "merged.h5"
    res = merge_shards([shards[2], shards[0], shards[1]], merged)  # any order
    a, b = read_embeddings(setup["full"]), read_embeddings(merged)
    assert res.n == 90 and a.embeddings.dtype == b.embeddings.dtype == np.float32
    assert np.array_equal(a.embeddings, b.embeddings)  # bit-identical
    assert (a.keys, a.identities, a.status) == (b.keys, b.identities, b.status)
    skip = {"created"}
    assert {k: v for k, v in a.attrs.items() if k not in skip} == {k: v for k, v in b.attrs.items() if k not in skip}
    with h5py.File(merged) as f:
        assert f["embeddings"].chunks is not None


def test_merge_refuses_gaps_overlaps_and_other_jobs(setup: dict[str, Path]) -> None:
    s = [_shard(setup, i, 3) for i in range(3)]
    out = setup["root"] / "bad.h5"
    with pytest.raises(InputError, match=r"rows 30-61 of 90 are in no shard"):
        merge_shards([s[0], s[2]], out)
    with pytest.raises(InputError, match=r"rows 62-89 of 90 are in no shard"):
        merge_shards([s[0], s[1]], out)
    with pytest.raises(InputError, match=r"rows 30-61 are in both .*shard-1-of-3.h5 and .*shard-1-of-3.h5"):
        merge_shards([s[0], s[1], s[1], s[2]], out)
    half = _shard(setup, 0, 2, name="halves")  # rows 0-45 against thirds: overlaps 1/3
    with pytest.raises(InputError, match=r"rows 30-45 are in both"):
        merge_shards([half, s[1], s[2]], out)
    other = _shard(setup, 1, 3, run=setup["other_run"], name="other")
    with pytest.raises(InputError, match="checkpoint_sha256"):
        merge_shards([s[0], other, s[2]], out)
    with pytest.raises(InputError, match="not a shard"):
        merge_shards([setup["full"]], out)
    assert not out.exists()
    assert coverage_problems([(0, 5, "a"), (5, 5, "empty"), (5, 10, "b")], 10) == []


def test_embed_cli_shards_and_merge(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace.current()
    for i in range(2):
        with pytest.raises(SystemExit) as e:
            main(["embed", str(setup["run"]), "--data", str(setup["data"]), "--shard", f"{i}/2", "--batch-size", "8",
                  "-q"])
        assert e.value.code == 0
    assert ws.latest("embed") is None  # shards are not recorded as the latest embeddings
    shards = sorted(ws.dir("embed").glob("*.shard-*-of-2.h5"))
    assert len(shards) == 2
    with pytest.raises(SystemExit) as e:
        main(["embed", "merge", *map(str, shards), "-q"])
    assert e.value.code == 0
    merged = ws.latest("embed")
    assert merged is not None and merged.name == f"{setup['run'].name}.h5"
    ref = setup["root"] / "full-b8.h5"  # the unsharded embed with the CLI's batch grid
    embed_dataset(setup["run"], setup["data"], ref, batch_size=8, show_progress=False,
                  cache_dir=setup["root"] / "cache")
    np.testing.assert_array_equal(read_embeddings(merged).embeddings, read_embeddings(ref).embeddings)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["embed", "merge", str(shards[0]), "-q"])
    assert e.value.code == 3 and "no shard" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["embed", str(setup["run"]), "--data", str(setup["data"]), "--shard", "12/13", "-q"])
    assert e.value.code == 3 and "is empty" in capsys.readouterr().err


def test_embed_split_part_equals_those_rows_of_the_full_embed(setup: dict[str, Path]) -> None:
    """`--split S --part test` embeds only the test identities' images, with the same numbers as a full embed."""
    from fvtool.protocols.splits import Split, write_split

    full = read_embeddings(setup["full"])
    ids = sorted(set(full.identities))
    split = setup["root"] / "split.json"
    write_split(split, Split(kind="identity", name="six-three", train=ids[:6], val=[], test=ids[6:]))
    part = setup["root"] / "test-part.h5"
    embed_dataset(setup["run"], setup["data"], part, batch_size=BATCH, chunk=CHUNK, show_progress=False,
                  cache_dir=setup["root"] / "cache", split=split, part="test")
    sub = read_embeddings(part)
    rows = [i for i, ident in enumerate(full.identities) if ident in set(ids[6:])]
    assert len(rows) == 30 and sub.keys == [full.keys[i] for i in rows]
    assert set(sub.identities) == set(ids[6:])
    np.testing.assert_allclose(sub.embeddings, full.embeddings[rows], rtol=0, atol=1e-6)
    assert sub.attrs["split_part"] == "test" and sub.attrs["split_name"] == "six-three"
    # the CLI: the default output name carries the part; an empty or unknown part is a clear error (exit 3),
    # nothing written
    with pytest.raises(SystemExit) as e:
        main(["embed", str(setup["run"]), "--data", str(setup["data"]), "--split", str(split), "-q"])
    assert e.value.code == 0
    assert (Workspace.current().dir("embed") / f"{setup['run'].name}-test.h5").exists()
    for bad in ("val", "nope"):
        with pytest.raises(SystemExit) as e:
            main(["embed", str(setup["run"]), "--data", str(setup["data"]), "--split", str(split), "--part", bad,
                  "-o", str(setup["root"] / f"{bad}.h5"), "-q"])
        assert e.value.code == 3 and not (setup["root"] / f"{bad}.h5").exists()
