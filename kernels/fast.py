"""Table-driven transition kernels (the fast path of :mod:`kernels.transition`).

Per action, everything that does not depend on the measure is precomputed on
the grid by :mod:`pipeline.tables`:

E : (A, KQ, KQ) float64
    ``exp(u_i^T M u_j - max_j' u_i^T M u_j')`` between grid keys ``i = c*Q + q``
    (cell c, positional-encoding row q); the shift is the row max over the
    whole grid, which leaves the attention ratio unchanged.
VX, WX : (A, K, d) float64
    ``V g_c`` and ``W g_c`` for every cell.
F, F_off : flat float64, (n_cls,) int64
    Optional *field tables*: for class s and multiset rank r, the attention
    numerator (d entries) and denominator that its particles exert on every
    grid key, per action, laid out ``[r][key][d + 1][A]`` from ``F_off[s]``.
    ``F_off[0] = -1`` means none: fields are summed from the particles.

A state's occupied (cell, class) pairs collapse into *targets* (cell,
dynamics id): classes with the same positional encoding and the same
attention sources move alike, whatever their labels. Per target and action
the update is ``x = g_c + num/den; x += W g_c; x += b``, clipped and
quantized; the new multisets are ranked again. An action whose denominator
underflows for some target (scores far below the grid row max) is recomputed
exactly by :func:`kernels.transition._move`, which subtracts the max over
the occupied sources.
"""

import numba as nb
import numpy as np

from kernels.ranking import unrank_multiset
from kernels.transition import _move, _occupied

TINY = 1e-280


@nb.njit(cache=True, error_model="numpy")
def _targets(n_occ, occ_cell, occ_cls, cls_dyn, t_cell, t_dyn, pair_t):
    """Distinct (cell, dynamics id) of the occupied pairs; pair_t[j] = its target."""
    n_t = 0
    for j in range(n_occ):
        c = occ_cell[j]
        g = cls_dyn[occ_cls[j]]
        found = -1
        for t in range(n_t):
            if t_cell[t] == c and t_dyn[t] == g:
                found = t
                break
        if found < 0:
            t_cell[n_t] = c
            t_dyn[n_t] = g
            found = n_t
            n_t += 1
        pair_t[j] = found
    return n_t


@nb.njit(cache=True, error_model="numpy")
def _step_state(ranks, cells, occ_cell, occ_cls, occ_cnt, occ_start, t_cell, t_dyn, pair_t,
                acc, newcell, bad, order, cnt, racc, prev, mono, u, mu, vx, scores, xnew, new_cell1,
                coords, k, lo, hi, delta, cls_m, cls_off, cls_mass, cls_pe, cls_mask,
                binom, binomT, Ms, Vs, Ws, bs, cls_q, n_q, cls_dyn, dyn_q, src_ptr, src_cls,
                E, VX, WX, F, F_off, out_ranks):
    """New per-class ranks ``out_ranks[a, s]`` of one decoded state under every action."""
    n_cls = cls_m.shape[0]
    n_a = Ms.shape[0]
    d = coords.shape[1]
    dd = d + cls_pe.shape[1]
    n_occ = _occupied(cells, cls_m, cls_off, occ_cell, occ_cls, occ_cnt)
    s = 0
    for j in range(n_occ):
        while s <= occ_cls[j]:
            occ_start[s] = j
            s += 1
    while s <= n_cls:
        occ_start[s] = n_occ
        s += 1
    n_t = _targets(n_occ, occ_cell, occ_cls, cls_dyn, t_cell, t_dyn, pair_t)
    width = (d + 1) * n_a
    kq = E.shape[1]
    # attention numerators and denominators of every target under every action
    for t in range(n_t):
        g = t_dyn[t]
        key = t_cell[t] * n_q + dyn_q[g]
        row = acc[t]
        for x in range(width):
            row[x] = 0.0
        for p in range(src_ptr[g], src_ptr[g + 1]):
            s2 = src_cls[p]
            if F_off[0] >= 0:
                base = F_off[s2] + (ranks[s2] * kq + key) * width
                for x in range(width):
                    row[x] += F[base + x]
            else:
                for j in range(occ_start[s2], occ_start[s2 + 1]):
                    w = occ_cnt[j] * cls_mass[s2]
                    c2 = occ_cell[j]
                    key2 = c2 * n_q + cls_q[s2]
                    for a in range(n_a):
                        e = w * E[a, key, key2]
                        for comp in range(d):
                            row[comp * n_a + a] += e * VX[a, c2, comp]
                        row[d * n_a + a] += e
    for a in range(n_a):
        bad[a] = 0
    kmax = k - 1
    for t in range(n_t):
        c = t_cell[t]
        row = acc[t]
        nc = newcell[t]
        for a in range(n_a):
            nc[a] = 0
        for comp in range(d):
            g = coords[c, comp]
            for a in range(n_a):  # branch-free, so LLVM can vectorize over actions
                den = row[d * n_a + a]
                ok = den > TINY
                bad[a] |= not ok
                v = g + row[comp * n_a + a] / (den if ok else 1.0)
                v += WX[a, c, comp]
                v += bs[a, comp]
                v = min(max(v, lo), hi)
                j = int((v - lo) / delta + 0.5)  # v >= lo, so truncation is the floor
                nc[a] = nc[a] * k + min(j, kmax)
    # exact recompute where a denominator underflowed
    for a in range(n_a):
        if bad[a]:
            for j in range(n_occ):
                for p in range(d):
                    u[j, p] = coords[occ_cell[j], p]
                for p in range(dd - d):
                    u[j, d + p] = cls_pe[occ_cls[j], p]
            _move(n_occ, occ_cell, occ_cls, occ_cnt, u, coords, k, lo, hi, delta, cls_mass,
                  cls_mask, Ms[a], Vs[a], Ws[a], bs[a], mu, vx, scores, xnew, new_cell1)
            for j in range(n_occ):
                newcell[pair_t[j], a] = new_cell1[j]
    # rank the moved multisets, class by class. Where an action keeps the class's
    # cells in order (the usual case) the rank is summed for all actions at once;
    # otherwise the moved cells are sorted first.
    for s in range(n_cls):
        j0 = occ_start[s]
        j1 = occ_start[s + 1]
        for a in range(n_a):
            racc[a] = 0
            prev[a] = -1
            mono[a] = 1
        pos = 1
        for j in range(j0, j1):
            nc = newcell[pair_t[j]]
            for a in range(n_a):
                c = nc[a]
                mono[a] &= c >= prev[a]
                prev[a] = c
            for _ in range(occ_cnt[j]):
                bt = binomT[pos]
                off = pos - 1
                for a in range(n_a):
                    racc[a] += bt[nc[a] + off]
                pos += 1
        for a in range(n_a):
            if mono[a]:
                out_ranks[a, s] = racc[a]
                continue
            n = 0
            for j in range(j0, j1):
                c = newcell[pair_t[j], a]
                i = n
                while i > 0 and order[i - 1] > c:
                    order[i] = order[i - 1]
                    cnt[i] = cnt[i - 1]
                    i -= 1
                order[i] = c
                cnt[i] = occ_cnt[j]
                n += 1
            r = 0
            pos = 1
            for i in range(n):
                c = order[i]
                for _ in range(cnt[i]):
                    r += binomT[pos, c + pos - 1]
                    pos += 1
            out_ranks[a, s] = r


@nb.njit(cache=True)
def _buffers(n_tot, n_cls, n_a, d, dd):
    """Per-block scratch arrays of :func:`_step_state`."""
    cells = np.empty(n_tot, np.int64)
    occ_cell = np.empty(n_tot, np.int64)
    occ_cls = np.empty(n_tot, np.int64)
    occ_cnt = np.empty(n_tot, np.int64)
    occ_start = np.empty(n_cls + 1, np.int64)
    t_cell = np.empty(n_tot, np.int64)
    t_dyn = np.empty(n_tot, np.int64)
    pair_t = np.empty(n_tot, np.int64)
    acc = np.empty((n_tot, (d + 1) * n_a))
    newcell = np.empty((n_tot, n_a), np.int64)
    bad = np.empty(n_a, np.int64)
    order = np.empty(n_tot, np.int64)
    cnt = np.empty(n_tot, np.int64)
    racc = np.empty(n_a, np.int64)
    prev = np.empty(n_a, np.int64)
    mono = np.empty(n_a, np.bool_)
    u = np.empty((n_tot, dd))
    mu = np.empty((n_tot, dd))
    vx = np.empty((n_tot, d))
    scores = np.empty(n_tot)
    xnew = np.empty(d)
    new_cell1 = np.empty(n_tot, np.int64)
    return (cells, occ_cell, occ_cls, occ_cnt, occ_start, t_cell, t_dyn, pair_t, acc, newcell, bad, order, cnt, racc, prev, mono, u, mu, vx, scores, xnew, new_cell1)


@nb.njit(parallel=True, cache=True, error_model="numpy")
def transition_fast(states, coords, k, lo, hi, delta, cls_m, cls_off, cls_mass, cls_pe,
                    cls_mask, mult, counts, binom, binomT, Ms, Vs, Ws, bs, cls_q, n_q, cls_dyn, dyn_q,
                    src_ptr, src_cls, E, VX, WX, F, F_off, out_next):
    """``out_next[i, a] = F(states[i], a)`` for global state indices (full mode)."""
    n_b = states.shape[0]
    n_a = Ms.shape[0]
    n_cls = cls_m.shape[0]
    n_tot = cls_off[-1]
    n_cells = coords.shape[0]
    d = coords.shape[1]
    dd = d + cls_pe.shape[1]
    n_blocks = min(n_b, 64)
    for blk in nb.prange(n_blocks):
        i0 = blk * n_b // n_blocks
        i1 = (blk + 1) * n_b // n_blocks
        ranks = np.empty(n_cls, np.int64)
        bufs = _buffers(n_tot, n_cls, n_a, d, dd)
        (cells, occ_cell, occ_cls, occ_cnt, occ_start, t_cell, t_dyn, pair_t, acc, newcell,
         bad, order, cnt, racc, prev, mono, u, mu, vx, scores, xnew, new_cell1) = bufs
        out_ranks = np.empty((n_a, n_cls), np.int64)
        for i in range(i0, i1):
            st = states[i]
            for s in range(n_cls):
                ranks[s] = (st // mult[s]) % counts[s]
                unrank_multiset(ranks[s], cls_m[s], n_cells, binom, cells, cls_off[s])
            _step_state(ranks, cells, occ_cell, occ_cls, occ_cnt, occ_start, t_cell, t_dyn,
                        pair_t, acc, newcell, bad, order, cnt, racc, prev, mono, u, mu, vx, scores, xnew, new_cell1,
                        coords, k, lo, hi, delta, cls_m, cls_off, cls_mass, cls_pe, cls_mask,
                        binom, binomT, Ms, Vs, Ws, bs, cls_q, n_q, cls_dyn, dyn_q, src_ptr, src_cls,
                        E, VX, WX, F, F_off, out_ranks)
            for a in range(n_a):
                idx = 0
                for s in range(n_cls):
                    idx += out_ranks[a, s] * mult[s]
                out_next[i, a] = idx


@nb.njit(parallel=True, cache=True, error_model="numpy")
def transition_ranks(ranks_in, coords, k, lo, hi, delta, cls_m, cls_off, cls_mass, cls_pe,
                     cls_mask, binom, binomT, Ms, Vs, Ws, bs, cls_q, n_q, cls_dyn, dyn_q, src_ptr,
                     src_cls, E, VX, WX, F, F_off, out_ranks):
    """Per-class rank vectors in, per-class rank vectors out (reachable mode).

    ranks_in : (B, n_cls) int64; out_ranks : (B, A, n_cls) int64.
    """
    n_b = ranks_in.shape[0]
    n_a = Ms.shape[0]
    n_cls = cls_m.shape[0]
    n_tot = cls_off[-1]
    n_cells = coords.shape[0]
    d = coords.shape[1]
    dd = d + cls_pe.shape[1]
    n_blocks = min(n_b, 64)
    for blk in nb.prange(n_blocks):
        i0 = blk * n_b // n_blocks
        i1 = (blk + 1) * n_b // n_blocks
        bufs = _buffers(n_tot, n_cls, n_a, d, dd)
        (cells, occ_cell, occ_cls, occ_cnt, occ_start, t_cell, t_dyn, pair_t, acc, newcell,
         bad, order, cnt, racc, prev, mono, u, mu, vx, scores, xnew, new_cell1) = bufs
        for i in range(i0, i1):
            for s in range(n_cls):
                unrank_multiset(ranks_in[i, s], cls_m[s], n_cells, binom, cells, cls_off[s])
            _step_state(ranks_in[i], cells, occ_cell, occ_cls, occ_cnt, occ_start, t_cell,
                        t_dyn, pair_t, acc, newcell, bad, order, cnt, racc, prev, mono, u, mu, vx, scores, xnew,
                        new_cell1, coords, k, lo, hi, delta, cls_m, cls_off, cls_mass, cls_pe,
                        cls_mask, binom, binomT, Ms, Vs, Ws, bs, cls_q, n_q, cls_dyn, dyn_q, src_ptr,
                        src_cls, E, VX, WX, F, F_off, out_ranks[i])


@nb.njit(parallel=True, cache=True, error_model="numpy")
def build_fields(counts, cls_m, n_cells, binom, cls_mass, cls_q, n_q, E, VX, F, F_off):
    """Fill the field tables ``F`` (layout in the module docstring)."""
    n_a = E.shape[0]
    kq = E.shape[1]
    d = VX.shape[2]
    width = (d + 1) * n_a
    n_cls = cls_m.shape[0]
    for s in range(n_cls):
        m = cls_m[s]
        q2 = cls_q[s]
        w1 = cls_mass[s]
        for r in nb.prange(counts[s]):
            cells = np.empty(m, np.int64)
            unrank_multiset(r, m, n_cells, binom, cells, 0)
            for key in range(kq):
                base = F_off[s] + (r * kq + key) * width
                for x in range(width):
                    F[base + x] = 0.0
                for j in range(m):
                    c2 = cells[j]
                    key2 = c2 * n_q + q2
                    for a in range(n_a):
                        e = w1 * E[a, key, key2]
                        for comp in range(d):
                            F[base + comp * n_a + a] += e * VX[a, c2, comp]
                        F[base + d * n_a + a] += e
