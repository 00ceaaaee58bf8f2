"""Transition and terminal-cost kernels of the quantized lifted MDP (SPEC §2).

A quantized measure is decoded into its occupied (cell, class) pairs, ordered
class-major and by ascending cell, each with a particle count. Under action
``a`` every pair moves as one to the cell of the layer map of SPEC §1
evaluated at its grid point with the current quantized masses; the moved
multisets are ranked again. The attention sums run over the occupied pairs in
that order.

Shared arguments (all plain arrays, built by :mod:`pipeline.problem`):

coords : (K, d) float64
    Grid point of every flat cell (C order).
k, lo, hi, delta : int, float, float, float
    Grid points per coordinate, box, grid spacing ``(hi - lo) / (k - 1)``.
cls_m : (n_cls,) int64
    Particle budget ``m_s`` per class.
cls_off : (n_cls + 1,) int64
    Offsets of each class's cells in a state's concatenated cell list.
cls_mass : (n_cls,) float64
    Mass of one quantized particle of the class, ``w_s / m_s``.
cls_pe : (n_cls, d_e) float64
    Positional encoding of the class's position.
cls_mask : (n_cls, n_cls) uint8
    ``cls_mask[s, s2] = 1`` when a particle of class s attends to class s2.
mult, counts : (n_cls,) int64
    Mixed-radix multipliers and multiset counts per class.
binom : (K + m_max, m_max + 1) int64
    Binomial table for ranking.
Ms : (A, D, D), Vs, Ws : (A, d, d), bs : (A, d) float64
    The weights of every action, ``D = d + d_e``.
"""

import numba as nb
import numpy as np

from kernels.ranking import rank_multiset, unrank_multiset, unrank_state


@nb.njit(cache=True)
def _occupied(cells, cls_m, cls_off, occ_cell, occ_cls, occ_cnt):
    """Run-length encode the sorted per-class cells; return the pair count."""
    n = 0
    for s in range(cls_m.shape[0]):
        prev = -1
        for j in range(cls_off[s], cls_off[s + 1]):
            c = cells[j]
            if c != prev:
                occ_cell[n] = c
                occ_cls[n] = s
                occ_cnt[n] = 1
                n += 1
                prev = c
            else:
                occ_cnt[n - 1] += 1
    return n


@nb.njit(cache=True)
def _cell_of(v, lo, delta, k):
    j = np.floor((v - lo) / delta + 0.5)
    if j < 0.0:
        return 0
    if j > k - 1:
        return k - 1
    return int(j)


@nb.njit(cache=True)
def _move(n_occ, occ_cell, occ_cls, occ_cnt, u, coords, k, lo, hi, delta,
          cls_mass, cls_mask, M, V, W, b, mu, vx, scores, xnew, new_cell):
    """Move every occupied pair under one action; write its new flat cell."""
    d = coords.shape[1]
    dd = u.shape[1]
    for j in range(n_occ):
        for p in range(dd):
            acc = 0.0
            for q in range(dd):
                acc += M[p, q] * u[j, q]
            mu[j, p] = acc
        x = coords[occ_cell[j]]
        for p in range(d):
            acc = 0.0
            for q in range(d):
                acc += V[p, q] * x[q]
            vx[j, p] = acc
    for j in range(n_occ):
        sj = occ_cls[j]
        mx = -np.inf
        for jj in range(n_occ):
            if cls_mask[sj, occ_cls[jj]]:
                sc = 0.0
                for p in range(dd):
                    sc += u[j, p] * mu[jj, p]
                scores[jj] = sc
                if sc > mx:
                    mx = sc
        den = 0.0
        for p in range(d):
            xnew[p] = 0.0
        for jj in range(n_occ):
            if cls_mask[sj, occ_cls[jj]]:
                w = occ_cnt[jj] * cls_mass[occ_cls[jj]] * np.exp(scores[jj] - mx)
                den += w
                for p in range(d):
                    xnew[p] += w * vx[jj, p]
        x = coords[occ_cell[j]]
        flat = 0
        for p in range(d):
            wx = 0.0
            for q in range(d):
                wx += W[p, q] * x[q]
            v = x[p] + xnew[p] / den + wx + b[p]
            if v < lo:
                v = lo
            elif v > hi:
                v = hi
            flat = flat * k + _cell_of(v, lo, delta, k)
        new_cell[j] = flat


@nb.njit(cache=True)
def _rank_moved(n_occ, occ_cls, occ_cnt, new_cell, cls_m, cls_off, mult, binom, buf):
    """Rank the measure whose pair j now sits in ``new_cell[j]``."""
    idx = 0
    j = 0
    for s in range(cls_m.shape[0]):
        n = cls_off[s]
        while j < n_occ and occ_cls[j] == s:
            c = new_cell[j]
            for _ in range(occ_cnt[j]):
                # insertion into the sorted run buf[cls_off[s]:n]
                i = n
                while i > cls_off[s] and buf[i - 1] > c:
                    buf[i] = buf[i - 1]
                    i -= 1
                buf[i] = c
                n += 1
            j += 1
        idx += rank_multiset(buf, cls_off[s], cls_m[s], binom) * mult[s]
    return idx


@nb.njit(parallel=True, cache=True)
def transition_batch(states, coords, k, lo, hi, delta, cls_m, cls_off, cls_mass,
                     cls_pe, cls_mask, mult, counts, binom, Ms, Vs, Ws, bs, out_next):
    """Next-state index of every state of ``states`` under every action.

    Parameters
    ----------
    states : (B,) int64
        Global state indices.
    out_next : (B, A) int32 or int64
        Output: ``out_next[i, a] = F(states[i], a)``.

    The other arguments are described in the module docstring.
    """
    n_b = states.shape[0]
    n_a = Ms.shape[0]
    n_tot = cls_off[-1]
    n_cells = coords.shape[0]
    d = coords.shape[1]
    d_e = cls_pe.shape[1]
    dd = d + d_e
    n_blocks = min(n_b, 64)
    for blk in nb.prange(n_blocks):
        i0 = blk * n_b // n_blocks
        i1 = (blk + 1) * n_b // n_blocks
        cells = np.empty(n_tot, np.int64)
        occ_cell = np.empty(n_tot, np.int64)
        occ_cls = np.empty(n_tot, np.int64)
        occ_cnt = np.empty(n_tot, np.int64)
        u = np.empty((n_tot, dd))
        mu = np.empty((n_tot, dd))
        vx = np.empty((n_tot, d))
        scores = np.empty(n_tot)
        xnew = np.empty(d)
        new_cell = np.empty(n_tot, np.int64)
        buf = np.empty(n_tot, np.int64)
        for i in range(i0, i1):
            unrank_state(states[i], cls_m, cls_off, mult, counts, n_cells, binom, cells)
            n_occ = _occupied(cells, cls_m, cls_off, occ_cell, occ_cls, occ_cnt)
            for j in range(n_occ):
                for p in range(d):
                    u[j, p] = coords[occ_cell[j], p]
                for p in range(d_e):
                    u[j, d + p] = cls_pe[occ_cls[j], p]
            for a in range(n_a):
                _move(n_occ, occ_cell, occ_cls, occ_cnt, u, coords, k, lo, hi, delta,
                      cls_mass, cls_mask, Ms[a], Vs[a], Ws[a], bs[a], mu, vx, scores,
                      xnew, new_cell)
                out_next[i, a] = _rank_moved(n_occ, occ_cls, occ_cnt, new_cell, cls_m,
                                             cls_off, mult, binom, buf)


@nb.njit(cache=True)
def _terminal_of(cells, cls_m, cls_off, cls_mass, loss_tab, occ_cell, occ_cls, occ_cnt):
    """Terminal cost of one decoded state: mass x loss over occupied (cell, class) pairs."""
    n_occ = _occupied(cells, cls_m, cls_off, occ_cell, occ_cls, occ_cnt)
    acc = 0.0
    for j in range(n_occ):
        s = occ_cls[j]
        acc += occ_cnt[j] * cls_mass[s] * loss_tab[s, occ_cell[j]]
    return acc


@nb.njit(parallel=True, cache=True)
def terminal_cost_batch(states, cls_m, cls_off, cls_mass, mult, counts, n_cells, binom,
                        loss_tab, out_cost):
    """Terminal cost of every state of ``states``.

    .. math::

        V_T(\\mu) = \\sum_{(c, s)\\ \\text{occupied}} n_{c,s}\\, \\frac{w_s}{m_s}\\,
        \\ell(g_c, y_s)

    Parameters
    ----------
    states : (B,) int64
    loss_tab : (n_cls, K) float64
        ``loss_tab[s, c] = l(g_c, y_s)``.
    out_cost : (B,) float64
    """
    n_b = states.shape[0]
    n_tot = cls_off[-1]
    n_blocks = min(n_b, 64)
    for blk in nb.prange(n_blocks):
        i0 = blk * n_b // n_blocks
        i1 = (blk + 1) * n_b // n_blocks
        cells = np.empty(n_tot, np.int64)
        occ_cell = np.empty(n_tot, np.int64)
        occ_cls = np.empty(n_tot, np.int64)
        occ_cnt = np.empty(n_tot, np.int64)
        for i in range(i0, i1):
            unrank_state(states[i], cls_m, cls_off, mult, counts, n_cells, binom, cells)
            out_cost[i] = _terminal_of(cells, cls_m, cls_off, cls_mass, loss_tab, occ_cell,
                                       occ_cls, occ_cnt)


@nb.njit(parallel=True, cache=True)
def terminal_cost_ranks(ranks, cls_m, cls_off, cls_mass, n_cells, binom, loss_tab, out_cost):
    """Like :func:`terminal_cost_batch`, for per-class rank vectors ``ranks`` (B, n_cls)."""
    n_b = ranks.shape[0]
    n_cls = cls_m.shape[0]
    n_tot = cls_off[-1]
    n_blocks = min(n_b, 64)
    for blk in nb.prange(n_blocks):
        i0 = blk * n_b // n_blocks
        i1 = (blk + 1) * n_b // n_blocks
        cells = np.empty(n_tot, np.int64)
        occ_cell = np.empty(n_tot, np.int64)
        occ_cls = np.empty(n_tot, np.int64)
        occ_cnt = np.empty(n_tot, np.int64)
        for i in range(i0, i1):
            for s in range(n_cls):
                unrank_multiset(ranks[i, s], cls_m[s], n_cells, binom, cells, cls_off[s])
            out_cost[i] = _terminal_of(cells, cls_m, cls_off, cls_mass, loss_tab, occ_cell,
                                       occ_cls, occ_cnt)
