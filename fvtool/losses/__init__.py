"""Losses, one small module per loss (formula in its docstring), found through `registry`."""
