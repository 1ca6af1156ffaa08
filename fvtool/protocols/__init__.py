"""Evaluation protocols (pair lists, all-pairs definitions) and identity splits."""
