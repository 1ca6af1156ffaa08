"""One module per CLI command (or command group), each with `register(app)`; see fvtool/cli.py.

Start-up rules, because every `fvtool ... --help` and every command pays for what these modules
import (tests/test_startup.py, bench/bench_cli_overhead.py):
- at module level import only typer, rich and light fvtool modules (errors, workspace, console,
  the `options` modules of the stages); the stage's library (numpy, h5py, torch) is imported
  inside the command function;
- no `from __future__ import annotations`: Typer reads every parameter's annotation, and string
  annotations are compiled and evaluated one by one when the app is built (about 15% of
  `fvtool --help`); types only needed by helpers are quoted instead.
"""
