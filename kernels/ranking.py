"""Bijection between quantized measures and the integers 0..S-1.

A class with budget ``m`` holds a multiset of ``m`` cells out of ``K``. The
sorted multiset ``c_1 <= ... <= c_m`` is mapped to the strictly increasing
sequence ``b_i = c_i + i - 1`` and ranked in the colexicographic
combinatorial number system,

.. math::

    r = \\sum_{i=1}^{m} \\binom{b_i}{i}, \\qquad 0 \\le r < \\binom{m + K - 1}{m}.

Classes are combined in mixed radix, class 0 most significant:
``state = sum_s r_s * mult[s]`` with ``mult[-1] = 1`` and
``mult[s] = mult[s + 1] * count[s + 1]``.

``binom`` is a table ``binom[n, r] = C(n, r)`` (int64, shape
``(K + m_max, m_max + 1)``) built by :func:`pipeline.quantize.binomial_table`.
"""

import numba as nb


@nb.njit(cache=True)
def rank_multiset(cells, start, m, binom):
    """Rank of the sorted multiset ``cells[start:start + m]`` (int64)."""
    r = 0
    for i in range(1, m + 1):
        r += binom[cells[start + i - 1] + i - 1, i]
    return r


@nb.njit(cache=True)
def unrank_multiset(r, m, n_cells, binom, out, start):
    """Write the sorted multiset of rank ``r`` into ``out[start:start + m]``.

    Inverse of :func:`rank_multiset`: for i = m..1 take the largest ``b``
    with ``C(b, i) <= r`` (binary search), subtract, and set
    ``c_i = b - (i - 1)``.
    """
    hi_b = n_cells + m - 2
    for i in range(m, 0, -1):
        lo = i - 1
        hi = min(hi_b, n_cells + i - 2)
        # invariant: binom[lo, i] <= r; find the largest such b in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if binom[mid, i] <= r:
                lo = mid
            else:
                hi = mid - 1
        r -= binom[lo, i]
        out[start + i - 1] = lo - (i - 1)
        hi_b = lo - 1


@nb.njit(cache=True)
def unrank_state(state, cls_m, cls_off, mult, counts, n_cells, binom, out):
    """Write every class's sorted multiset of cells of ``state`` into ``out``.

    Class ``s`` occupies ``out[cls_off[s]:cls_off[s + 1]]`` (``cls_m[s]``
    entries).
    """
    for s in range(cls_m.shape[0]):
        r = (state // mult[s]) % counts[s]
        unrank_multiset(r, cls_m[s], n_cells, binom, out, cls_off[s])


@nb.njit(cache=True)
def state_index(cells, cls_m, cls_off, mult, binom):
    """Index of the state whose classes hold the sorted multisets ``cells``."""
    idx = 0
    for s in range(cls_m.shape[0]):
        idx += rank_multiset(cells, cls_off[s], cls_m[s], binom) * mult[s]
    return idx
