"""The one Typer app. Each stage's command lives in `fvtool/commands/<stage>.py` as a thin
wrapper that parses options and calls the stage's library function; no stage imports the CLI.

`main()` is the console-script entry point: it turns `FvtoolError`s into one clear message and
their exit code (see fvtool/errors.py), and Ctrl-C into exit code 130 with the stage's hint on how to
continue where it has one (`fvtool.errors.on_interrupt`).
"""

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.exceptions import TyperException

from fvtool import __version__
from fvtool.console import exit_on_error
from fvtool.errors import EXIT_USAGE
from fvtool.workspace import set_workspace_override


def _no_flag_placeholder() -> None:
    """Boolean flags take no value, so `--help` must not show a `<bool>` placeholder after them.

    Typer 0.2x's rich help writes `display_type_rich()` for every option, flags included (its plain-text
    help already skips flags, `TyperOption.get_help_record`); this makes the rich help agree, for every
    command at once. A flag with an explicit metavar keeps it."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_fvtool_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._fvtool_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_flag_placeholder()

app = typer.Typer(
    name="fvtool",
    help=(
        "Face-verification experiments, stage by stage: align -> pairs -> train -> embed -> verify -> report.\n\n"
        "Each stage reads and writes files. Outputs go to a workspace folder (default ./fvwork, or "
        "$FVTOOL_WORKSPACE, or --workspace) and later stages pick the latest earlier output when no path is given."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

#: command modules, in pipeline order; each defines `register(app)`.
COMMAND_MODULES = ("align", "pairs", "train", "embed", "verify", "identify", "report", "demo", "interop")


def _version(value: bool) -> None:
    if value:
        print(f"fvtool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    workspace: Annotated[
        Path | None,
        typer.Option("--workspace", "-w", help="Workspace folder for default outputs (default ./fvwork).",
                     envvar="FVTOOL_WORKSPACE"),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    set_workspace_override(workspace)


for _name in COMMAND_MODULES:
    importlib.import_module(f"fvtool.commands.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    with exit_on_error():
        try:
            rv = app(args=argv, standalone_mode=False)
        except typer.Abort:
            raise KeyboardInterrupt from None
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except TyperException as e:  # usage errors (Typer's vendored Click): message + exit code 2
            show = getattr(e, "show", None)  # the usage errors have it; TyperException itself does not
            if callable(show):
                show()
            sys.exit(getattr(e, "exit_code", EXIT_USAGE))
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
