"""Plain numpy/python reference implementations of SPEC §1-2, for the tests.

Deliberately written from the SPEC without calling the kernels or the
pipeline's own layer: particle by particle, with Python combinatorics.
"""

import itertools
import math

import numpy as np


def multisets(n_cells, m):
    """All sorted m-multisets of range(n_cells), with their SPEC rank."""
    out = {}
    for ms in itertools.combinations_with_replacement(range(n_cells), m):
        r = sum(math.comb(c + i, i + 1) for i, c in enumerate(ms))
        out[r] = ms
    return out


def pe(kind, d_e, p):
    if kind == "none":
        return np.zeros(0)
    if kind == "onehot":
        e = np.zeros(d_e)
        e[p] = 1.0
        return e
    e = np.zeros(d_e)
    for j in range(d_e // 2):
        e[2 * j] = math.sin(p / 10000 ** (2 * j / d_e))
        e[2 * j + 1] = math.cos(p / 10000 ** (2 * j / d_e))
    return e


def allowed(mask, g, p, g2, p2):
    if mask == "none":
        return True
    if mask == "sequence":
        return g == g2
    return g == g2 and p2 <= p


def loss(kind, x, y, targets=None, w=None, c0=0.0):
    if kind == "target":
        return float(np.sum((x - np.asarray(targets[y])) ** 2))
    z = float(np.dot(w, x)) - c0
    sigma = 1.0 if y == 1 else -1.0
    if kind == "zero_one":
        return float((1.0 if z > 0 else -1.0) != sigma)
    return math.log1p(math.exp(-sigma * z)) if -sigma * z < 30 else -sigma * z


def layer_loop(xs, ps, gs, masses, theta, lo, hi, mask, pe_kind, d_e):
    """One layer of SPEC §1, one particle at a time."""
    M, V, W, b = theta["M"], theta["V"], theta["W"], theta["b"]
    n = len(xs)
    u = [np.concatenate([xs[i], pe(pe_kind, d_e, ps[i])]) for i in range(n)]
    out = []
    for i in range(n):
        keys = [j for j in range(n) if allowed(mask, gs[i], ps[i], gs[j], ps[j])]
        sc = {j: float(u[i] @ M @ u[j]) for j in keys}
        mx = max(sc.values())
        num = np.zeros(len(xs[i]))
        den = 0.0
        for j in keys:
            a = masses[j] * math.exp(sc[j] - mx)
            num += a * (V @ xs[j])
            den += a
        out.append(np.clip(xs[i] + num / den + W @ xs[i] + b, lo, hi))
    return out


class QuantizedReference:
    """The triply quantized MDP of SPEC §2, built from the problem's plain fields."""

    def __init__(self, prob, q):
        self.prob, self.q = prob, q
        self.k, self.d = q.k, prob.d
        self.delta = (prob.hi - prob.lo) / (q.k - 1)
        self.K = q.k ** prob.d
        self.classes = [tuple(int(v) for v in row) for row in q.classes]
        n = prob.train["x"].shape[0]
        self.w = [int(c) / n for c in q.cls_n]
        self.m = [int(b) for b in q.arrays["cls_m"]]
        self.tables = [multisets(self.K, m) for m in self.m]
        self.inverse = [{v: r for r, v in t.items()} for t in self.tables]
        self.counts = [len(t) for t in self.tables]

    def point(self, c):
        idx = np.unravel_index(c, (self.k,) * self.d)
        return np.array([self.prob.lo + j * self.delta for j in idx])

    def cell(self, x):
        idx = [min(max(math.floor((v - self.prob.lo) / self.delta + 0.5), 0), self.k - 1) for v in x]
        return int(np.ravel_multi_index(idx, (self.k,) * self.d))

    def decode(self, state):
        out = []
        for s in reversed(range(len(self.classes))):
            state, r = divmod(state, self.counts[s])
            out.append(self.tables[s][r])
        return out[::-1]

    def encode(self, cells_per_class):
        idx = 0
        for s, cells in enumerate(cells_per_class):
            idx = idx * self.counts[s] + self.inverse[s][tuple(sorted(cells))]
        return idx

    def theta(self, a):
        acts = self.prob.actions
        return {"M": acts["Ms"][a], "V": acts["Vs"][a], "W": acts["Ws"][a], "b": acts["bs"][a]}

    def step(self, state, a):
        cells = self.decode(state)
        xs, ps, gs, ms, owner = [], [], [], [], []
        for s, ms_cells in enumerate(cells):
            g, p, _ = self.classes[s]
            for c in ms_cells:
                xs.append(self.point(c))
                ps.append(p)
                gs.append(g)
                ms.append(self.w[s] / self.m[s])
                owner.append(s)
        new = layer_loop(xs, ps, gs, ms, self.theta(a), self.prob.lo, self.prob.hi,
                         self.prob.mask, self.prob.pe, self.prob.d_e)
        out = [[] for _ in self.classes]
        for s, x in zip(owner, new):
            out[s].append(self.cell(x))
        return self.encode(out)

    def terminal(self, state):
        pr = self.prob
        tot = 0.0
        for s, ms_cells in enumerate(self.decode(state)):
            y = self.classes[s][2]
            for c in ms_cells:
                tot += self.w[s] / self.m[s] * loss(pr.loss, self.point(c), y, pr.targets, pr.w, pr.c0)
        return tot

    def exhaustive(self, mu0, layers):
        """min over all |A|^T action sequences of the quantized cost from mu0."""
        n_a = self.prob.n_actions
        memo = {}
        best, best_seq = math.inf, None
        for seq in itertools.product(range(n_a), repeat=layers):
            s, cost = mu0, 0.0
            for a in seq:
                key = (s, a)
                if key not in memo:
                    memo[key] = self.step(s, a)
                s = memo[key]
                cost += self.prob.stage[a]
            cost += self.terminal(s)
            if cost < best - 1e-12:
                best, best_seq = cost, seq
        return best, best_seq

    def sequence_cost(self, mu0, seq):
        s, cost = mu0, 0.0
        for a in seq:
            s = self.step(s, a)
            cost += self.prob.stage[a]
        return cost + self.terminal(s)


def true_cost_loop(prob, actions, split):
    """J of SPEC §1 on a data split, particle by particle."""
    xs = [row.copy() for row in split["x"]]
    n = len(xs)
    ps, gs = [int(v) for v in split["pos"]], [int(v) for v in split["seq"]]
    acts = prob.actions
    cost = 0.0
    for a in actions:
        theta = {"M": acts["Ms"][a], "V": acts["Vs"][a], "W": acts["Ws"][a], "b": acts["bs"][a]}
        xs = layer_loop(xs, ps, gs, [1.0 / n] * n, theta, prob.lo, prob.hi, prob.mask, prob.pe,
                        prob.d_e)
        cost += prob.lam * sum(v * v for v in prob.theta(a).values())
    return cost + sum(loss(prob.loss, x, int(y), prob.targets, prob.w, prob.c0)
                      for x, y in zip(xs, split["label"])) / n
