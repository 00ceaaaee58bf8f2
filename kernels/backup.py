"""Bellman backup over a block of states with precomputed transitions."""

import numba as nb
import numpy as np


@nb.njit(parallel=True, cache=True)
def bellman_backup(next_idx, stage, v_next, out_v, out_pi):
    """One backward-induction step over a block of states.

    .. math::

        V_t[s] = \\min_a \\; c(a) + V_{t+1}[\\mathrm{next}[s, a]],
        \\qquad \\pi_t[s] = \\text{the lowest minimising } a.

    Parameters
    ----------
    next_idx : (B, A) int32 or int64
        Next-state index of each state of the block under each action.
    stage : (A,) float64
        Stage cost of each action.
    v_next : (S,) float64
        Value table of the next layer, indexed by global state.
    out_v : (B,) float64
        Output values.
    out_pi : (B,) int32
        Output minimisers; ties go to the lowest action index.
    """
    n_b, n_a = next_idx.shape
    for i in nb.prange(n_b):
        best = np.inf
        arg = 0
        for a in range(n_a):
            v = stage[a] + v_next[next_idx[i, a]]
            if v < best:
                best = v
                arg = a
        out_v[i] = best
        out_pi[i] = arg
