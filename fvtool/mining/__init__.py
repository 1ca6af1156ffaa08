"""Miners: which triplets/pairs of a batch a triplet or pair loss trains on (see `base`, `registry`)."""

from fvtool.mining.base import Miner, Pairs, Triplets
from fvtool.mining.registry import build_miner, miner_specs, resolve_miner_name

__all__ = ["Miner", "Pairs", "Triplets", "build_miner", "miner_specs", "resolve_miner_name"]
