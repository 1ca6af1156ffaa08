"""fvtool: face-verification experiments, stage by stage (align, pairs, train, embed, verify, report)."""

__version__ = "0.1.0"
