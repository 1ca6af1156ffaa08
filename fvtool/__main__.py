"""`python -m fvtool` (and `torchrun -m fvtool`) runs the CLI."""

from fvtool.cli import main

if __name__ == "__main__":
    main()
