import math

import numpy as np
import pytest

import kernels
from pipeline.quantize import binomial_table
from tests.reference import multisets


@pytest.mark.parametrize("n_cells,m", [(1, 3), (2, 1), (3, 2), (5, 3), (9, 4), (4, 6)])
def test_multiset_ranking_is_a_dense_bijection(n_cells, m):
    binom = binomial_table(n_cells + m, m)
    ref = multisets(n_cells, m)
    assert len(ref) == math.comb(m + n_cells - 1, m)
    assert sorted(ref) == list(range(len(ref)))  # dense: exactly 0..count-1
    out = np.empty(m, np.int64)
    for r, ms in ref.items():
        kernels.unrank_multiset(np.int64(r), m, n_cells, binom, out, 0)
        assert tuple(out) == ms
        assert kernels.rank_multiset(out, 0, m, binom) == r


@pytest.mark.parametrize("budgets,n_cells", [([2, 1], 4), ([1, 1, 1], 3), ([3, 2], 5), ([4], 9)])
def test_state_ranking_round_trips_over_classes(budgets, n_cells):
    cls_m = np.array(budgets, np.int64)
    cls_off = np.concatenate([[0], np.cumsum(cls_m)]).astype(np.int64)
    counts = np.array([math.comb(b + n_cells - 1, b) for b in budgets], np.int64)
    mult = np.ones(len(budgets), np.int64)
    for s in range(len(budgets) - 2, -1, -1):
        mult[s] = mult[s + 1] * counts[s + 1]
    n_states = int(np.prod(counts))
    binom = binomial_table(n_cells + max(budgets), max(budgets))
    seen = set()
    out = np.empty(int(cls_off[-1]), np.int64)
    for state in range(n_states):
        kernels.unrank_state(np.int64(state), cls_m, cls_off, mult, counts, n_cells, binom, out)
        for s in range(len(budgets)):
            part = out[cls_off[s]:cls_off[s + 1]]
            assert np.all(np.diff(part) >= 0) and part.min() >= 0 and part.max() < n_cells
        seen.add(tuple(out))
        assert kernels.state_index(out, cls_m, cls_off, mult, binom) == state
    assert len(seen) == n_states
