"""Numba kernels of qlift: plain arrays in, arrays out.

Nothing here knows about configs, Ray or zarr. Callers allocate the outputs
and pass them in; see :mod:`pipeline` for every decision around them.
"""

from kernels.backup import bellman_backup
from kernels.ranking import rank_multiset, state_index, unrank_multiset, unrank_state
from kernels.transition import terminal_cost_batch, terminal_cost_ranks, transition_batch

__all__ = [
    "bellman_backup",
    "rank_multiset",
    "state_index",
    "terminal_cost_batch",
    "terminal_cost_ranks",
    "transition_batch",
    "unrank_multiset",
    "unrank_state",
]
