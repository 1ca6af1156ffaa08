"""Hostile and malformed inputs (issue #19): every crafted file or option gets exit code 3 (2 for
usage) with a message naming the file and the problem, never a traceback (exit 1), never a silent
wrong number, and nothing is written outside the chosen output folder.

Each case builds its tiny input directly (h5py/json) and calls the CLI in-process; the embed cases
share one tiny trained run, and the concurrency test runs two `fvtool embed` subprocesses on it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_exit import run_cli as _run

from fvtool.atomic import TMP_MARK, canonical_sha256, output_lock, remove_stale_temporaries, write_text
from fvtool.data.embeddings import EmbeddingSet, read_embeddings, write_embeddings
from fvtool.errors import EXIT_BAD_INPUT, EXIT_USAGE
from fvtool.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_thread")

N_IDS, PER = 6, 4


# ---- builders ---------------------------------------------------------------------------------


def _emb_set(dim: int = 8, seed: int = 0) -> EmbeddingSet:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_IDS, dim))
    x = np.repeat(centres, PER, axis=0) + 0.3 * rng.normal(size=(N_IDS * PER, dim))
    ids = [f"p{i}" for i in range(N_IDS) for _ in range(PER)]
    keys = [f"p{i}/{j}.jpg" for i in range(N_IDS) for j in range(PER)]
    return EmbeddingSet(x.astype(np.float32), keys, ids, ["ok"] * len(keys), attrs={"backbone": "toy"})


def _write_h5(path: Path, *, emb=None, keys=None, ids=None, group: str | None = None) -> Path:
    """An fvtool-embeddings file written by hand, so that any dataset can be wrong."""
    es = _emb_set()
    st = h5py.string_dtype("utf-8")
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["version"] = "fvtool-embeddings", 1
        values = {"embeddings": es.embeddings if emb is None else emb,
                  "keys": np.array(es.keys if keys is None else keys, dtype=object),
                  "identities": np.array(es.identities if ids is None else ids, dtype=object),
                  "status": np.array(["ok"] * len(es.keys if keys is None else keys), dtype=object)}
        for name, v in values.items():
            if name == group:
                f.create_group(name).create_dataset("x", data=np.zeros(3))
            elif v.dtype == object:
                f.create_dataset(name, data=v, dtype=st)
            else:
                f.create_dataset(name, data=v)
    return path


def _proto_dict(es: EmbeddingSet, name: str = "toy") -> dict:
    """A pairs protocol (hash version 2) over `es`: per identity one genuine and one impostor pair per
    image, 3 folds."""
    a, b, same = [], [], []
    for i in range(len(es.keys)):
        j = i + 1 if (i + 1) % PER else i - 1
        if i < j:
            a.append(i), b.append(j), same.append(1)
        k = (i + PER) % len(es.keys)
        a.append(i), b.append(k), same.append(0)
    fold = [i % 3 for i in range(len(a))]
    d = {"format": "fvtool-protocol", "version": 1, "name": name, "kind": "pairs", "source": "", "seed": None,
         "created": "", "fvtool_version": "", "counts": None, "hash_version": 2, "extra": {},
         "images": list(es.keys), "identities": list(es.identities),
         "pairs": {"a": a, "b": b, "same": same, "fold": fold}}
    return _rehash(d)


def _rehash(d: dict) -> dict:
    """What an attacker can do: the hash is a checksum, not a signature."""
    content = {k: d[k] for k in ("kind", "images", "identities", "pairs", "name", "extra")}
    d["sha256"] = canonical_sha256(content)
    return d


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture
def env(tmp_path: Path):
    """Inputs in tmp/in, outputs in tmp/out; yields a checker of exit code, message and writes."""
    inp = tmp_path / "in"
    inp.mkdir()
    emb = inp / "emb.h5"
    write_embeddings(emb, _emb_set())
    proto = inp / "proto.json"
    write_text(proto, json.dumps(_proto_dict(read_embeddings(emb))))
    out = tmp_path / "out"

    class Env:
        def __init__(self) -> None:
            self.inp, self.emb, self.proto, self.out, self.ws = inp, emb, proto, out, tmp_path / "fvwork"

        def expect(self, args: list[object], code: int, *words: str, capsys) -> str:
            before = _files(tmp_path)
            got = _run(*args)
            err = capsys.readouterr().err
            assert got == code, err
            assert "Traceback" not in err
            flat = "".join(err.split())  # rich wraps long lines, even inside a path
            for w in words:
                assert "".join(w.split()) in flat, f"{w!r} not in {err!r}"
            new = _files(tmp_path) - before
            stray = [p for p in new if not (p.is_relative_to(self.out) or p.is_relative_to(self.ws))]
            assert not stray, f"written outside the output folder: {stray}"
            if code:
                assert not (self.out / "metrics.json").exists()
            return err

    return Env()


def _protocol_file(env, edit: Callable[[dict], object], rehash: bool = True, text: Callable[[str], str] | None = None,
                   name: str = "crafted.json") -> Path:
    d = _proto_dict(read_embeddings(env.emb))
    edit(d)
    if rehash:
        _rehash(d)
    s = json.dumps(d)
    if text is not None:
        s = text(s)
    p = env.inp / name
    p.write_text(s)
    return p


# ---- protocol files -------------------------------------------------------------------------------

def _set_pair(field: str, value: object) -> Callable[[dict], None]:
    def edit(d: dict) -> None:
        d["pairs"][field][1] = value
    return edit


PROTOCOL_CASES = {
    # name -> (edit, rehash, text substitution, words the message must hold)
    "name-traversal": (lambda d: d.update(name="../../escaped"), True, None, ["not a plain file name"]),
    "name-absolute": (lambda d: d.update(name="/tmp/escaped"), True, None, ["not a plain file name"]),
    "name-control-char": (lambda d: d.update(name="a\nb"), True, None, ["control character"]),
    "name-not-hashed-v1": (lambda d: d.update(name="renamed"), False, None, ["hash mismatch"]),
    "null-identity": (lambda d: d["identities"].__setitem__(2, None), True, None, ["'identities'", "None"]),
    "images-null": (lambda d: d.update(images=None), True, None, ["'images'", "list of strings"]),
    "index-1e30": (_set_pair("a", 1e30), True, None, ["'pairs.a'", "1e+30"]),
    "index-abc": (_set_pair("b", "abc"), True, None, ["'pairs.b'", "'abc'"]),
    "index-float": (_set_pair("a", 1.5), True, None, ["'pairs.a'", "1.5"]),
    "fold-1e400": (_set_pair("fold", 7777777), True, lambda s: s.replace("7777777", "1e400"),
                   ["'pairs.fold'", "inf"]),
    "nan-literal": (_set_pair("b", 7777777), True, lambda s: s.replace("7777777", "NaN"), ["'pairs.b'", "nan"]),
    "fold-1e12": (_set_pair("fold", 10**12), True, None, ["fold ids must be"]),
    "fold-1e4": (_set_pair("fold", 10**4), True, None, ["fold ids must be"]),
    "fold-negative": (_set_pair("fold", -1), True, None, ["'pairs.fold'", "-1"]),
    "self-pair": (lambda d: d["pairs"]["b"].__setitem__(0, d["pairs"]["a"][0]), True, None,
                  ["compare an image with itself"]),
    "image-twice": (lambda d: d["images"].__setitem__(1, d["images"][0]), True, None, ["listed twice"]),
    "label-flipped": (lambda d: d["pairs"]["same"].__setitem__(0, 0), True, None, ["contradicts"]),
    "label-flipped-no-rehash": (lambda d: d["pairs"]["same"].__setitem__(0, 0), False, None, ["hash mismatch"]),
    "sha256-removed": (lambda d: d.pop("sha256"), False, None, ["no sha256", "--allow-unhashed"]),
    "sha256-empty": (lambda d: d.update(sha256=""), False, None, ["no sha256"]),
    "truncated": (lambda d: None, True, lambda s: s[: len(s) // 2], ["not a valid protocol file"]),
    "not-an-object": (lambda d: None, True, lambda s: "[1, 2]", ["LFW header"]),  # not JSON-object: LFW text
    "hash-version-9": (lambda d: d.update(hash_version=9), False, None, ["hash_version 9"]),
}


@pytest.mark.parametrize("case", sorted(PROTOCOL_CASES))
def test_crafted_protocol_files_exit_3(env, case, capsys) -> None:
    edit, rehash, text, words = PROTOCOL_CASES[case]
    p = _protocol_file(env, edit, rehash, text)
    # no -o: the default output path is the one a crafted name would steer
    env.expect(["verify", env.emb, "--protocol", p, "-q"], EXIT_BAD_INPUT, str(p), *words, capsys=capsys)
    assert not (env.inp.parent / "escaped").exists() and not Path("/tmp/escaped").exists()


def test_unhashed_protocol_only_with_option_and_a_warning(env, capsys) -> None:
    p = _protocol_file(env, lambda d: d.pop("sha256"), rehash=False)
    env.expect(["verify", env.emb, "--protocol", p, "-o", env.out, "-q", "--allow-unhashed"], 0, "no sha256",
               capsys=capsys)
    m = json.loads((env.out / "metrics.json").read_text())
    assert m["protocol"]["unhashed"] is True and any("no sha256" in w for w in m["warnings"])
    # a genuine file: no warning
    env.expect(["verify", env.emb, "--protocol", env.proto, "-o", env.out / "ok", "-q"], 0, capsys=capsys)
    m = json.loads((env.out / "ok" / "metrics.json").read_text())
    assert m["protocol"]["unhashed"] is False and m["warnings"] == []


def test_old_hash_version_1_files_still_read(env) -> None:
    """Files written before the hash covered name and extra verify with the version-1 rule."""
    from fvtool.protocols.model import read_protocol

    d = _proto_dict(read_embeddings(env.emb))
    del d["hash_version"]
    d["sha256"] = canonical_sha256({k: d[k] for k in ("kind", "images", "identities", "pairs")})
    p = env.inp / "v1.json"
    p.write_text(json.dumps(d))
    assert read_protocol(p).name == "toy"
    d["pairs"]["same"][0] = 0
    p.write_text(json.dumps(d))
    with pytest.raises(Exception, match="hash mismatch"):
        read_protocol(p)


# ---- split files ----------------------------------------------------------------------------------

def _split_file(env, name: str) -> Path:
    from fvtool.protocols.splits import Split

    s = Split(kind="identity", name="ok", train=["p0", "p1", "p2"], val=[], test=["p3", "p4", "p5"])
    d = s.to_dict()
    d["name"] = name
    d["sha256"] = canonical_sha256({**s.content(), "name": name, "extra": d["extra"]})
    p = env.inp / "split.json"
    p.write_text(json.dumps(d))
    return p


@pytest.mark.parametrize("command", ["identify", "train-pairs"])
def test_split_name_traversal_exit_3(env, command, embedded_data, capsys) -> None:
    p = _split_file(env, "../../../escaped")
    args = (["identify", env.emb, "--split", p, "-q"] if command == "identify" else
            ["pairs", "train-pairs", embedded_data, "--split", p, "-n", "5", "--n-val", "0"])
    env.expect(args, EXIT_BAD_INPUT, str(p), "not a plain file name", capsys=capsys)
    assert not (env.inp.parent / "escaped").exists() and not (env.inp.parent.parent / "escaped").exists()


# ---- embeddings files -----------------------------------------------------------------------------

def _emb_case(env, case: str) -> Path:
    es = _emb_set()
    p = env.inp / f"{case}.h5"
    if case == "embeddings-group":
        return _write_h5(p, group="embeddings")
    if case == "keys-group":
        return _write_h5(p, group="keys")
    if case == "duplicate-keys":
        keys = list(es.keys)
        keys[5] = keys[4]
        return _write_h5(p, keys=keys)
    if case == "complex":
        return _write_h5(p, emb=es.embeddings.astype(np.complex64) + 1j)
    if case == "strings":
        return _write_h5(p, emb=np.array([["a"] * 8] * len(es.keys), dtype="S1"))
    if case == "truncated":
        write_embeddings(p, es)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 3])
        return p
    x = es.embeddings.copy()
    x[7] = {"nan-row": np.nan, "inf-row": np.inf, "zero-row": 0.0}[case]
    return _write_h5(p, emb=x)


EMB_CASES = {"embeddings-group": "is an HDF5 group", "keys-group": "is an HDF5 group",
             "duplicate-keys": "duplicate image key", "complex": "complex-valued", "strings": "non-numeric",
             "truncated": "cannot read HDF5", "nan-row": "NaN or inf", "inf-row": "NaN or inf",
             "zero-row": "all zero"}


@pytest.mark.parametrize("case", sorted(EMB_CASES))
def test_crafted_embeddings_in_verify_exit_3(env, case, capsys) -> None:
    p = _emb_case(env, case)
    env.expect(["verify", p, "--protocol", env.proto, "-o", env.out, "-q"], EXIT_BAD_INPUT, str(p), EMB_CASES[case],
               capsys=capsys)


@pytest.mark.parametrize("case", ["embeddings-group", "keys-group", "duplicate-keys", "complex", "truncated"])
def test_crafted_embeddings_in_identify_exit_3(env, case, capsys) -> None:
    p = _emb_case(env, case)
    env.expect(["identify", p, "-o", env.out, "-q"], EXIT_BAD_INPUT, str(p), EMB_CASES[case], capsys=capsys)


def test_duplicate_keys_name_the_first_few(env, capsys) -> None:
    es = _emb_set()
    keys = list(es.keys)
    keys[5], keys[9] = keys[4], keys[8]
    p = _write_h5(env.inp / "dups.h5", keys=keys)
    env.expect(["verify", p, "--protocol", env.proto, "-q"], EXIT_BAD_INPUT, "2 duplicate image key(s)",
               repr(keys[4]), repr(keys[8]), capsys=capsys)


def test_identities_contradicting_the_protocol(env, capsys) -> None:
    es = _emb_set()
    ids = list(es.identities)
    ids[0] = "p1"  # an image of p0 filed under p1: the protocol's genuine/impostor labels disagree
    p = _write_h5(env.inp / "wrongids.h5", ids=ids)
    env.expect(["verify", p, "--protocol", env.proto, "-o", env.out, "-q"], EXIT_BAD_INPUT, str(p),
               "contradict the protocol", "--identity-mismatch warn", capsys=capsys)
    env.expect(["verify", p, "--protocol", env.proto, "-o", env.out, "-q", "--identity-mismatch", "warn"], 0,
               "contradict", capsys=capsys)
    m = json.loads((env.out / "metrics.json").read_text())
    assert len(m["warnings"]) == 1 and f"of {len(es.keys)} protocol images" in m["warnings"][0]
    # other names for the same people are not a contradiction
    renamed = _write_h5(env.inp / "renamed.h5", ids=[f"person-{i}" for i in es.identities])
    env.expect(["verify", renamed, "--protocol", env.proto, "-o", env.out / "r", "-q"], 0, capsys=capsys)


# ---- options and output paths ---------------------------------------------------------------------

@pytest.mark.parametrize("level", ["2", "0", "1", "-0.5"])
def test_verify_level_outside_0_1(env, level, capsys) -> None:
    env.expect(["verify", env.emb, "--protocol", env.proto, "-o", env.out, "-q", "--level", level], EXIT_BAD_INPUT,
               f"--level {float(level)}", "(0, 1)", capsys=capsys)


def test_verify_output_is_an_existing_file(env, capsys) -> None:
    env.out.mkdir()
    target = env.out / "taken"
    target.write_text("mine")
    env.expect(["verify", env.emb, "--protocol", env.proto, "-o", target, "-q"], EXIT_BAD_INPUT, str(target),
               "existing file", capsys=capsys)
    assert target.read_text() == "mine"


@pytest.mark.parametrize("damage", ["no-scoring", "null-threshold", "list"])
def test_threshold_from_a_damaged_metrics_json(env, damage, capsys) -> None:
    dev = env.out / "dev"
    env.expect(["verify", env.emb, "--protocol", env.proto, "-o", dev, "-q"], 0, capsys=capsys)
    m = json.loads((dev / "metrics.json").read_text())
    if damage == "no-scoring":
        del m["scoring"]
    elif damage == "null-threshold":
        m["min_hter"]["threshold"] = None
    else:
        m = [m]
    bad = env.inp / "metrics.json"
    bad.write_text(json.dumps(m))
    env.expect(["verify", env.emb, "--protocol", env.proto, "-o", env.out / "t", "-q", "--threshold-from", bad],
               EXIT_BAD_INPUT, str(bad), "metrics.json", capsys=capsys)


def test_report_reads_only_files_inside_a_verify_folder(env, capsys) -> None:
    """A verify folder from someone else: its metrics.json must not point the report at other files."""
    res = env.out / "verify" / "theirs"
    env.expect(["verify", env.emb, "--protocol", env.proto, "-o", res, "-q"], 0, capsys=capsys)
    m = json.loads((res / "metrics.json").read_text())
    m["files"]["det"] = "../../in/proto.json"
    (res / "metrics.json").write_text(json.dumps(m))
    env.expect(["report", res, "-o", env.out / "report"], EXIT_BAD_INPUT, "files.det", "not a plain file name",
               capsys=capsys)


@pytest.mark.parametrize("option", [("--level", "abc"), ("--seed", "-1")])
def test_bad_option_values_are_usage(env, option, capsys) -> None:
    env.expect(["verify", env.emb, "--protocol", env.proto, *option], EXIT_USAGE, option[0], capsys=capsys)


@pytest.mark.parametrize("what", ["embeddings", "protocol"])
def test_a_folder_where_a_file_is_read(env, what, capsys) -> None:
    folder = env.inp / "folder"
    folder.mkdir()
    args = [folder, "--protocol", env.proto] if what == "embeddings" else [env.emb, "--protocol", folder]
    env.expect(["verify", *args, "-q"], EXIT_BAD_INPUT, f"{what} file {folder} is a folder", capsys=capsys)


# ---- interop import ---------------------------------------------------------------------------------

def _import_case(env, case: str) -> tuple[Path, list[str]]:
    es = _emb_set()
    keys_txt = env.inp / "keys.txt"
    keys_txt.write_text("\n".join(es.keys))
    if case == "object-npy":
        p = env.inp / "obj.npy"
        np.save(p, np.array([{"a": 1}] * len(es.keys), dtype=object), allow_pickle=True)
        return p, ["--keys", str(keys_txt)]
    if case == "complex-npy":
        p = env.inp / "c.npy"
        np.save(p, es.embeddings.astype(np.complex64))
        return p, ["--keys", str(keys_txt)]
    if case == "pickle-npz":
        p = env.inp / "evil.npz"
        np.savez(p, embeddings=es.embeddings, keys=np.array(es.keys, dtype=object))
        return p, []
    if case == "traversal-keys":
        p = env.inp / "trav.npz"
        np.savez(p, embeddings=es.embeddings, keys=np.array(["../../etc/passwd", *es.keys[1:]]))
        return p, []
    if case in ("embeddings-group", "keys-group", "truncated"):
        src = _emb_case(env, case)
        return src, []
    raise AssertionError(case)


IMPORT_CASES = {"object-npy": "without unpickling", "complex-npy": "complex-valued", "pickle-npz": "without unpickling",
                "traversal-keys": "not a relative path", "embeddings-group": "is an HDF5 group",
                "keys-group": "is an HDF5 group", "truncated": "cannot read"}


@pytest.mark.parametrize("case", sorted(IMPORT_CASES))
def test_interop_import_of_crafted_files_exit_3(env, case, capsys) -> None:
    p, extra = _import_case(env, case)
    env.expect(["interop", "import", p, *extra, "-o", env.out / "x.h5"], EXIT_BAD_INPUT, str(p), IMPORT_CASES[case],
               capsys=capsys)
    assert not (env.out / "x.h5").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickles_are_never_run(env, capsys) -> None:
    """A .bin set, a checkpoint and an .npz that each carry a code-running pickle: refused, not run."""
    payload = pickle.dumps(([_Evil()], [True]))
    binf = env.inp / "lfw.bin"
    binf.write_bytes(payload)
    env.expect(["interop", "bin-read", binf], EXIT_BAD_INPUT, str(binf), capsys=capsys)
    ckpt = env.inp / "evil.pt"
    ckpt.write_bytes(pickle.dumps({"state": _Evil()}))
    env.expect(["embed", ckpt, "--data", env.inp, "-o", env.out / "e.h5", "-q"], EXIT_BAD_INPUT, str(ckpt),
               capsys=capsys)
    assert not Path("PWNED").exists() and not (env.inp / "PWNED").exists()


# ---- embed: output paths, locking, concurrency ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(embedded_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run folder, data): 4 identities x 3 images, a 16 px network trained for one epoch."""
    import torch

    from fvtool.training.config import TrainConfig
    from fvtool.training.engine import train

    data = tmp_path_factory.mktemp("data") / "faces"
    for ident in sorted(p.name for p in embedded_data.iterdir() if p.is_dir())[:4]:
        (data / ident).mkdir(parents=True)
        for f in sorted((embedded_data / ident).iterdir())[:3]:
            shutil.copy(f, data / ident / f.name)
    run = tmp_path_factory.mktemp("run") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(data=str(data), input_size=16, embedding_size=8, epochs=1, batch_size=6, lr=0.05,
                          threads=1, crop=0.8), run, show_progress=False, cache_dir=run.parent / "cache")
    finally:
        torch.set_num_threads(n)
    return run, data


def test_embed_output_is_a_folder(env, tiny_run, capsys) -> None:
    run, data = tiny_run
    target = env.out / "folder.h5"
    target.mkdir(parents=True)
    env.expect(["embed", run, "--data", data, "-o", target, "-q"], EXIT_BAD_INPUT, str(target), "is a folder",
               capsys=capsys)
    assert list(env.out.iterdir()) == [target] and not list(target.iterdir())  # no .partial beside or inside


def test_train_output_is_an_existing_file(env, tiny_run, capsys) -> None:
    _, data = tiny_run
    env.out.mkdir()
    target = env.out / "run"
    target.write_text("mine")
    env.expect(["train", "--data", data, "-o", target, "--epochs", "1"], EXIT_BAD_INPUT, str(target),
               "is an existing file", capsys=capsys)
    assert target.read_text() == "mine"


def test_embed_refuses_an_output_another_process_is_writing(env, tiny_run, capsys) -> None:
    run, data = tiny_run
    out = env.out / "e.h5"
    with output_lock(out):  # what a running `fvtool embed -o e.h5` holds
        env.expect(["embed", run, "--data", data, "-o", out, "-q"], EXIT_BAD_INPUT, str(out),
                   "being written by another fvtool process", f"pid {os.getpid()}", capsys=capsys)
        assert not out.exists() and not out.with_name("e.h5.partial").exists()
    env.expect(["embed", run, "--data", data, "-o", out, "-q"], 0, capsys=capsys)
    assert read_embeddings(out).attrs["tta"] == "none" and not list(env.out.glob("*.lock"))


def test_two_concurrent_embeds_to_one_output(env, tiny_run, tmp_path) -> None:
    """Two `fvtool embed` (different --tta, so different contents) to one output at once: either one
    refuses with exit 3 and the file is the other's complete output, or both succeed one after the
    other and the file is one run's complete output; never a mix, never a success over the other's
    content. (Which of two successes wrote last is not observable from outside: a process can still
    be exiting after the other has written.)"""
    from fvtool.embedding import embed_dataset

    run, data = tiny_run
    expected = {}
    for tta in ("none", "flip-sum"):
        ref = tmp_path / f"ref-{tta}.h5"
        embed_dataset(run, data, ref, tta=tta, batch_size=1, show_progress=False, cache_dir=tmp_path / "c")
        expected[tta] = read_embeddings(ref).embeddings
    out = env.out / "both.h5"
    envvars = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                           os.environ.get("PYTHONPATH", "")]),
               "FVTOOL_WORKSPACE": str(env.ws), "OMP_NUM_THREADS": "1"}
    procs = {tta: subprocess.Popen(
        [sys.executable, "-m", "fvtool", "embed", str(run), "--data", str(data), "-o", str(out), "--tta", tta,
         "--threads", "1", "--batch-size", "1", "-q"],
        env=envvars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tta in expected}
    results = {tta: p.communicate(timeout=240) for tta, p in procs.items()}
    codes = {tta: p.returncode for tta, p in procs.items()}
    errs = {tta: " ".join(r[1].split()) for tta, r in results.items()}
    assert set(codes.values()) <= {0, EXIT_BAD_INPUT} and 0 in codes.values(), errs
    for tta, c in codes.items():
        if c == EXIT_BAD_INPUT:
            assert "being written by another fvtool process" in errs[tta], errs[tta]
    got = read_embeddings(out)
    tta = got.attrs["tta"]
    assert codes[tta] == 0  # the file belongs to a run that reported success ...
    np.testing.assert_allclose(got.embeddings, expected[tta], rtol=1e-5, atol=1e-6)  # ... and is all of its output
    assert not out.with_name("both.h5.partial").exists() and not out.with_name("both.h5.lock").exists()


# ---- durability: temporaries, latest.json, fsync ----------------------------------------------------

def test_remove_stale_temporaries_spares_live_owners(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"{TMP_MARK}{os.getpid()}-abc.jpg"
    gone = tmp_path / f"{TMP_MARK}{dead.pid}-def.jpg"
    legacy = tmp_path / f"{TMP_MARK}ghi.jpg"
    for p in (mine, gone, legacy):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 2
    assert mine.exists() and not gone.exists() and not legacy.exists()


def _record_many(root: str, kind: str, n: int) -> None:
    from fvtool.workspace import Workspace as W

    for i in range(n):
        W(Path(root)).record(kind, Path(root) / f"{kind}-{i}")


def test_latest_json_updates_do_not_lose_each_other(tmp_path) -> None:
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), k, 20)) for k in ("align", "train", "embed")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    data = json.loads((tmp_path / "latest.json").read_text())
    assert {k: Path(v).name for k, v in data.items()} == {"align": "align-19", "train": "train-19",
                                                         "embed": "embed-19"}
    assert Workspace(tmp_path).latest("align") is None  # the recorded paths do not exist: not offered


def test_atomic_write_fsyncs_file_and_folder_before_and_after_rename(tmp_path, monkeypatch) -> None:
    calls: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b) -> None:
        calls.append(("replace", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_text(tmp_path / "f.txt", "hello")
    kinds = [c[0] for c in calls]
    assert kinds == ["fsync", "replace", "fsync"]
    assert Path(calls[0][1]).name.startswith(f"{TMP_MARK}{os.getpid()}-") and calls[2][1] == str(tmp_path)
