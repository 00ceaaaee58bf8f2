"""The three quantizers of SPEC §2: state grid, measure space, (actions in problem.py)."""

import math
from dataclasses import dataclass

import numpy as np

import kernels
import kernels.fast as fast
from pipeline import tables
from pipeline.errors import QliftError
from pipeline.problem import positional_encoding
from pipeline.true_system import attend_mask, pointwise_loss

INT64_MAX = np.iinfo(np.int64).max


def grid_index(v, lo, delta, k):
    """Per-coordinate cell index ``clamp(floor((v - lo)/delta + 0.5), 0, k-1)``."""
    j = np.floor((np.asarray(v, dtype=np.float64) - lo) / delta + 0.5)
    return np.clip(j, 0, k - 1).astype(np.int64)


def flat_cells(x, lo, delta, k):
    """Flat C-order cell index of every row of ``x`` (n, d)."""
    j = grid_index(x, lo, delta, k)
    flat = np.zeros(x.shape[0], np.int64)
    for p in range(x.shape[1]):
        flat = flat * k + j[:, p]
    return flat


def binomial_table(n_rows, r_max):
    """``binom[n, r] = C(n, r)`` for n < n_rows, r <= r_max, capped at int64 max."""
    tab = np.zeros((n_rows, r_max + 1), np.int64)
    for n in range(n_rows):
        for r in range(min(n, r_max) + 1):
            tab[n, r] = min(math.comb(n, r), INT64_MAX)
    return tab


def largest_remainder(n_c, m_s):
    """Round the histogram ``n_c`` (sum N_s) to ``m_s`` particles (SPEC §2.2).

    q_c = m_s n_c / N_s; floors first, the rest to the largest fractional
    parts, ties to the lower cell. Exact integer arithmetic.
    """
    n_s = int(n_c.sum())
    num = m_s * n_c.astype(object)
    q = np.array([int(v // n_s) for v in num], dtype=np.int64)
    rem = np.array([int(v % n_s) for v in num], dtype=np.int64)
    left = m_s - int(q.sum())
    order = sorted(range(len(n_c)), key=lambda c: (-rem[c], c))
    for c in order[:left]:
        q[c] += 1
    return q


@dataclass
class Quantized:
    """The quantized lifted MDP: sizes, class table and the kernels' arrays."""

    k: int
    m: int | None
    n_cells: int
    classes: np.ndarray  # (n_cls, 3) int64 rows (g, p, y), sorted
    cls_n: np.ndarray  # (n_cls,) particles of each class in the data
    counts: list  # multiset count per class (python ints)
    n_states: int
    arrays: dict  # plain arrays for the kernels (see kernels.transition)
    mu0_cells: np.ndarray  # concatenated sorted cells of the initial measure

    @property
    def mu0(self):
        return self.index(self.mu0_cells)

    @property
    def mu0_ranks(self):
        """Per-class multiset ranks of the initial measure, (n_cls,) int64."""
        a = self.arrays
        return np.array([kernels.rank_multiset(self.mu0_cells, a["cls_off"][s], a["cls_m"][s],
                                               a["binom"]) for s in range(len(a["cls_m"]))],
                        np.int64)

    def index(self, cells):
        a = self.arrays
        return int(kernels.state_index(np.asarray(cells, np.int64), a["cls_m"], a["cls_off"],
                                       a["mult"], a["binom"]))

    def cells(self, state):
        a = self.arrays
        out = np.empty(int(a["cls_off"][-1]), np.int64)
        kernels.unrank_state(np.int64(state), a["cls_m"], a["cls_off"], a["mult"], a["counts"],
                             self.n_cells, a["binom"], out)
        return out


def sizes(prob, k, m):
    """(n_cells, classes, class counts, budgets, multiset counts, S) without allocating tables."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise QliftError(f"quant.k={k!r} must be an integer >= 2 (grid points per coordinate)")
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
        raise QliftError(f"quant.m={m!r} must be an integer >= 1, or null for no measure "
                         "quantization")
    n_cells = k ** prob.d
    tr = prob.train
    trip = np.stack([tr["seq"], tr["pos"], tr["label"]], axis=1)
    classes, inv, cls_n = np.unique(trip, axis=0, return_inverse=True, return_counts=True)
    budgets = [int(n) if m is None else min(int(n), m) for n in cls_n]
    counts = [math.comb(b + n_cells - 1, b) for b in budgets]
    return n_cells, classes, inv.reshape(-1), cls_n, budgets, counts, math.prod(counts)


def build(prob, k, m, max_states=None, full=True):
    """Quantize ``prob`` with k grid points per coordinate and m particles per class.

    ``full=False`` (reachable mode) allows a measure space too large for one
    int64 index: states are then per-class rank vectors and ``mult`` is unused.
    """
    n_cells, classes, inv, cls_n, budgets, counts, n_states = sizes(prob, k, m)
    if max(counts) > INT64_MAX:
        raise QliftError(f"a class holds about 10^{len(str(max(counts))) - 1} multisets, beyond "
                         "int64; lower quant.k or quant.m")
    if full and n_states > INT64_MAX:
        raise QliftError(f"the quantized measure space has about 10^{len(str(n_states)) - 1} "
                         "states, beyond int64; lower quant.k or quant.m, or use "
                         "solver.mode=reachable")
    if full and max_states is not None and n_states > max_states:
        raise QliftError(f"the quantized measure space has {n_states} states, over "
                         f"solver.max_states={max_states}; lower quant.k or quant.m, raise "
                         "solver.max_states, or use solver.mode=reachable")
    delta = (prob.hi - prob.lo) / (k - 1)
    n_cls = classes.shape[0]
    cls_m = np.array(budgets, np.int64)
    cls_off = np.concatenate([[0], np.cumsum(cls_m)]).astype(np.int64)
    mult = np.ones(n_cls, np.int64)
    if full:
        for s in range(n_cls - 2, -1, -1):
            mult[s] = mult[s + 1] * counts[s + 1]
    else:
        mult[:] = 0
    jj = np.indices((k,) * prob.d).reshape(prob.d, -1).T
    coords = prob.lo + jj * delta
    g, p, y = classes[:, 0], classes[:, 1], classes[:, 2]
    mask = attend_mask(prob.mask, g, p, g, p).astype(np.uint8)
    loss_tab = np.stack([pointwise_loss(prob, coords, np.full(n_cells, yy)) for yy in y])
    arrays = {
        "coords": np.ascontiguousarray(coords, np.float64),
        "k": np.int64(k), "lo": np.float64(prob.lo), "hi": np.float64(prob.hi),
        "delta": np.float64(delta),
        "cls_m": cls_m, "cls_off": cls_off,
        "cls_mass": (cls_n / cls_n.sum()) / cls_m,
        "cls_pe": np.ascontiguousarray(positional_encoding(prob.pe, prob.d_e, p)),
        "cls_mask": mask,
        "mult": mult, "counts": np.array(counts, np.int64),
        "binom": binomial_table(n_cells + int(cls_m.max()), int(cls_m.max())),
        "loss_tab": np.ascontiguousarray(loss_tab),
        **{key: np.ascontiguousarray(v) for key, v in prob.actions.items()},
        "stage": prob.stage,
    }
    tables.build(arrays)
    # initial quantized measure: largest remainder per class
    cell = flat_cells(prob.train["x"], prob.lo, delta, k)
    mu0 = np.empty(int(cls_off[-1]), np.int64)
    for s in range(n_cls):
        hist = np.bincount(cell[inv == s], minlength=n_cells)
        q = largest_remainder(hist, budgets[s])
        mu0[cls_off[s]:cls_off[s + 1]] = np.repeat(np.arange(n_cells), q)
    return Quantized(k=k, m=m, n_cells=n_cells, classes=classes, cls_n=cls_n, counts=counts,
                     n_states=n_states, arrays=arrays, mu0_cells=mu0)


def transition(arrays, states, out):
    """``out[i, a] = F(states[i], a)`` with the table-driven numba kernel."""
    a = arrays
    fast.transition_fast(states, a["coords"], a["k"], a["lo"], a["hi"], a["delta"], a["cls_m"],
                         a["cls_off"], a["cls_mass"], a["cls_pe"], a["cls_mask"], a["mult"],
                         a["counts"], a["binom"], a["binomT"], a["Ms"], a["Vs"], a["Ws"], a["bs"],
                         a["cls_q"],
                         a["n_q"], a["cls_dyn"], a["dyn_q"], a["src_ptr"], a["src_cls"], a["E"],
                         a["VX"], a["WX"], a["F"], a["F_off"], out)
    return out


def transition_ranks(arrays, ranks, out):
    """``out[i, a, s]``: class s's rank after action a from the rank vector ``ranks[i]``."""
    a = arrays
    fast.transition_ranks(ranks, a["coords"], a["k"], a["lo"], a["hi"], a["delta"], a["cls_m"],
                          a["cls_off"], a["cls_mass"], a["cls_pe"], a["cls_mask"], a["binom"],
                          a["binomT"], a["Ms"], a["Vs"], a["Ws"], a["bs"], a["cls_q"], a["n_q"], a["cls_dyn"],
                          a["dyn_q"], a["src_ptr"], a["src_cls"], a["E"], a["VX"], a["WX"],
                          a["F"], a["F_off"], out)
    return out


def transition_exact(arrays, states, out):
    """Like :func:`transition`, with exp computed per pair and the occupied row max."""
    a = arrays
    kernels.transition_batch(states, a["coords"], a["k"], a["lo"], a["hi"], a["delta"],
                             a["cls_m"], a["cls_off"], a["cls_mass"], a["cls_pe"], a["cls_mask"],
                             a["mult"], a["counts"], a["binom"], a["Ms"], a["Vs"], a["Ws"],
                             a["bs"], out)
    return out


def terminal_ranks(arrays, ranks, out):
    """``out[i] = V_T`` of the per-class rank vector ``ranks[i]``."""
    a = arrays
    kernels.terminal_cost_ranks(ranks, a["cls_m"], a["cls_off"], a["cls_mass"],
                                a["coords"].shape[0], a["binom"], a["loss_tab"], out)
    return out


def terminal(arrays, states, out):
    """``out[i] = V_T(states[i])`` with the numba kernel."""
    a = arrays
    kernels.terminal_cost_batch(states, a["cls_m"], a["cls_off"], a["cls_mass"], a["mult"],
                                a["counts"], a["coords"].shape[0], a["binom"], a["loss_tab"], out)
    return out
