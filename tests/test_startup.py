"""Start-up cost: what `--help` and a backbone lookup import.

Why these tests: a study script chains dozens of fvtool commands and the suite runs hundreds;
`fvtool --help` used to import numpy/h5py (the verify and pairs modules) and any backbone lookup
imported every backbone module, torchvision included. Timings are not asserted (the machine is
shared); the imports are, in a fresh interpreter, because they decide the timings
(bench/bench_cli_overhead.py measures them).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fvtool.cli import COMMAND_MODULES

HEAVY = ("numpy", "h5py", "torch", "torchvision", "PIL", "sklearn", "matplotlib")


def _imported_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; return the HEAVY modules it left in sys.modules."""
    wrapper = (f"import sys, json\n{code}\n"
               f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _helps() -> list[list[str]]:
    """--help of the app, of every command and of every subcommand of a command group."""
    from typer.main import get_command

    from fvtool.cli import app

    root = get_command(app)
    out = [["--help"]]
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        out.append([name, "--help"])
        out += [[name, sub, "--help"] for sub in getattr(cmd, "commands", {})]
    return out


def test_help_imports_no_numpy_h5py_torch() -> None:
    helps = _helps()
    assert len(helps) > len(COMMAND_MODULES)  # the groups' subcommands are in
    code = ("from fvtool.cli import app\n"
            f"for args in {helps!r}:\n"
            "    try:\n"
            "        app(args=args, standalone_mode=False)\n"
            "    except SystemExit:\n"
            "        pass\n")
    assert _imported_after(code) == []


def test_command_modules_keep_real_annotations() -> None:
    """fvtool/commands/__init__.py: postponed (string) annotations cost every start-up their eval."""
    import importlib

    for name in ("fvtool.cli", *(f"fvtool.commands.{m}" for m in COMMAND_MODULES)):
        assert not hasattr(importlib.import_module(name), "annotations"), f"{name}: from __future__ import annotations"


def test_fvtool_help_process_imports_no_torch() -> None:
    """The real console entry point (python -m fvtool --help), checked with -X importtime."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "fvtool", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "align" in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "fvtool.cli" in imported
    assert not imported & {"torch", "numpy", "h5py"}


def test_backbone_lookup_imports_only_its_module() -> None:
    code = ("from fvtool.models.registry import backbone_names, build_backbone\n"
            "assert 'torch' not in sys.modules  # listing names imports nothing\n"
            "assert 'resnet_small' in backbone_names()\n"
            "build_backbone('resnet_small', embedding_size=8, input_size=32)\n")
    left = _imported_after(code)
    assert "torch" in left and "torchvision" not in left and "timm" not in left


def test_backbone_index_matches_the_decorators() -> None:
    """BACKBONE_MODULES names exactly what each module registers (a drifted index would make a
    lookup import the wrong module or miss a backbone)."""
    import importlib

    from fvtool.models.registry import BACKBONE_MODULES, BACKBONES, backbone_names, backbone_specs

    assert sorted(backbone_specs()) == backbone_names()
    for module, names in BACKBONE_MODULES.items():
        mod = importlib.import_module(f"fvtool.models.{module}")
        defined = {spec.name for spec in backbone_specs().values() if spec.factory.__module__ == mod.__name__}
        assert defined == set(names), module
    with pytest.raises(ValueError, match="not listed"):
        BACKBONES.add("not-in-the-index", backbone_specs()["resnet_small"])
