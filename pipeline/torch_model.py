"""The true system of SPEC §1 in torch (float64): a differentiable forward pass,
a gradient (Adam) baseline, Adam polishing of DP weights, and export of trained
weights as a plain ``torch.nn.Module`` that TorchScript can save and load
without this project.

Only imported when torch is installed.
"""

import math
import time
import warnings

import numpy as np
import torch
from torch import nn

from pipeline import problem as problem_mod

DTYPE = torch.float64
MASK_CODES = {"none": 0, "sequence": 1, "causal": 2}


# --------------------------------------------------------------------------- shared maths
# These two functions are TorchScript-compatible; the exported module calls them, so the
# saved model computes exactly what forward_true computes.

def attend_mask(kind: int, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Boolean (n, n) mask, ``kind`` 0 none, 1 sequence, 2 causal (see MASK_CODES)."""
    n = seq.shape[0]
    if kind == 0:
        return torch.ones((n, n), dtype=torch.bool, device=seq.device)
    same = seq[:, None] == seq[None, :]
    if kind == 1:
        return same
    return same & (pos[None, :] <= pos[:, None])


def layer_step(x: torch.Tensor, e: torch.Tensor, allowed: torch.Tensor, mass: torch.Tensor,
               M: torch.Tensor, V: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
               lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """One layer ``x -> clip(x + Attn + W x + b, lo, hi)`` (same operation order as numpy)."""
    u = torch.cat([x, e], dim=1)
    mu = u @ M.T  # rows: M u_j
    vx = x @ V.T
    sc = (u @ mu.T).masked_fill(~allowed, float("-inf"))
    sc = sc - sc.max(dim=1, keepdim=True).values
    wt = mass[None, :] * torch.exp(sc)
    out = (wt @ vx) / wt.sum(dim=1, keepdim=True)
    return torch.clamp(x + out + x @ W.T + b, lo, hi)


# --------------------------------------------------------------------------- helpers

def _split(prob, split):
    if isinstance(split, str):
        out = getattr(prob, split)
        if out is None:
            raise ValueError(f"the problem has no {split!r} split")
        return out
    return split


def _t(a, dtype=DTYPE):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _slots(prob):
    """[(kind, index tuple)] of the free parameters, in prob.free_names order."""
    dd = prob.d + prob.d_e
    return [problem_mod.parse_param(n, prob.d, dd, "free") for n in prob.free_names]


def full_weights(prob, free_values):
    """T dicts of full torch weights M, V, W, b: prob.base plus the free entries.

    ``free_values`` is (T, n_free); gradients flow to it (and to nothing else).
    """
    fv = torch.as_tensor(free_values, dtype=DTYPE)
    if fv.ndim != 2 or fv.shape[1] != len(prob.free_names):
        raise ValueError(f"free_values has shape {tuple(fv.shape)}; it must be "
                         f"(T, {len(prob.free_names)})")
    slots = _slots(prob)
    base = {k: _t(v) for k, v in prob.base.items()}
    per_kind = {}
    for col, (kind, ij) in enumerate(slots):
        per_kind.setdefault(kind, []).append((col, ij))
    thetas = []
    for t in range(fv.shape[0]):
        theta = {}
        for kind, arr in base.items():
            entries = per_kind.get(kind)
            if not entries:
                theta[kind] = arr
                continue
            cols = torch.tensor([c for c, _ in entries], dtype=torch.long)
            idx = tuple(torch.tensor([ij[a] for _, ij in entries], dtype=torch.long)
                        for a in range(arr.ndim))
            theta[kind] = arr.index_put(idx, fv[t, cols])
        thetas.append(theta)
    return thetas


def free_values_of_actions(prob, actions):
    """(T, n_free) float64 numpy array of the free values of DP action indices."""
    rows = []
    for a in actions:
        th = prob.theta(a)
        rows.append([th[n] for n in prob.free_names])
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(prob.free_names))


# --------------------------------------------------------------------------- true system

def forward_true(prob, thetas, split):
    """x_T (N, d) of the true system for full weights ``thetas`` (T dicts of M, V, W, b)."""
    sp = _split(prob, split)
    x = _t(sp["x"])
    n = x.shape[0]
    e = _t(prob.encode(sp["pos"])).reshape(n, prob.d_e)
    allowed = attend_mask(MASK_CODES[prob.mask], _t(sp["seq"], torch.long),
                          _t(sp["pos"], torch.long))
    mass = torch.full((n,), 1.0 / n, dtype=DTYPE)
    lo = torch.tensor(prob.lo, dtype=DTYPE)
    hi = torch.tensor(prob.hi, dtype=DTYPE)
    for th in thetas:
        x = layer_step(x, e, allowed, mass, torch.as_tensor(th["M"], dtype=DTYPE),
                       torch.as_tensor(th["V"], dtype=DTYPE),
                       torch.as_tensor(th["W"], dtype=DTYPE),
                       torch.as_tensor(th["b"], dtype=DTYPE), lo, hi)
    return x


def pointwise_loss(prob, x, label, surrogate=False):
    """l(x, y) per row as a torch (n,) tensor; ``surrogate`` swaps 0-1 for logistic."""
    label = torch.as_tensor(np.asarray(label), dtype=torch.long)
    if prob.loss == "target":
        diff = x - _t(prob.targets)[label]
        return torch.sum(diff * diff, dim=1)
    sigma = torch.where(label == 1, 1.0, -1.0).to(DTYPE)
    z = x @ _t(prob.w) - prob.c0
    if prob.loss == "zero_one" and not surrogate:
        sign = torch.where(z > 0, 1.0, -1.0).to(DTYPE)
        return (sign != sigma).to(DTYPE)
    m = -sigma * z
    return torch.logaddexp(torch.zeros_like(m), m)


def cost_true(prob, free_values, split, surrogate=False):
    """J of SPEC §1 (0-d tensor) for free values (T, n_free) on ``split``.

    ``split`` is a split dict or "train"/"test". With ``surrogate=True`` a zero_one
    loss is replaced by the logistic loss (same w, c0) so that J is differentiable.
    """
    sp = _split(prob, split)
    fv = torch.as_tensor(free_values, dtype=DTYPE)
    x = forward_true(prob, full_weights(prob, fv), sp)
    stage = prob.lam * torch.sum(fv * fv)
    return stage + torch.mean(pointwise_loss(prob, x, sp["label"], surrogate=surrogate))


def _uses_surrogate(prob):
    return prob.loss == "zero_one"


# --------------------------------------------------------------------------- training

def _grid_bounds(prob):
    lo = np.array([float(np.min(g)) for g in prob.free_grids])
    hi = np.array([float(np.max(g)) for g in prob.free_grids])
    return lo, hi


def _adam(prob, init, steps, lr, track_best):
    """Adam on the training objective from ``init`` (T, n_free).

    Returns (final values, best values, best true train cost); best tracking
    covers every iterate including the initial and the final one.
    """
    fv = torch.tensor(np.asarray(init, dtype=np.float64), dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([fv], lr=lr)
    surrogate = _uses_surrogate(prob)
    best_val, best_cost = fv.detach().clone(), math.inf

    def consider(cost):
        nonlocal best_val, best_cost
        if cost < best_cost:
            best_cost, best_val = cost, fv.detach().clone()

    for _ in range(int(steps)):
        opt.zero_grad()
        obj = cost_true(prob, fv, prob.train, surrogate=surrogate)
        if track_best:
            if surrogate:
                with torch.no_grad():
                    consider(float(cost_true(prob, fv, prob.train)))
            else:
                consider(float(obj.detach()))
        obj.backward()
        opt.step()
    if track_best:
        with torch.no_grad():
            consider(float(cost_true(prob, fv, prob.train)))
    return fv.detach().clone(), best_val, best_cost


def adam_baseline(prob, starts=16, steps=300, lr=0.05, seed=0):
    """Gradient baseline: Adam from ``starts`` uniform random points in the grid box.

    Trains the (T, n_free) free values on the training split (the logistic surrogate
    for a zero_one loss, the true loss otherwise). Per start returns a dict with
    ``init``, ``final`` (T x n_free lists), ``train_cost`` / ``test_cost`` (true J with
    the real loss; test None without a test split) and ``seconds``.
    """
    rng = np.random.default_rng(seed)
    lo, hi = _grid_bounds(prob)
    shape = (int(starts), prob.layers, len(prob.free_names))
    inits = lo + (hi - lo) * rng.random(shape)
    results = []
    for s in range(shape[0]):
        t0 = time.perf_counter()
        final, _, _ = _adam(prob, inits[s], steps, lr, track_best=False)
        with torch.no_grad():
            train_cost = float(cost_true(prob, final, prob.train))
            test_cost = (float(cost_true(prob, final, prob.test))
                         if prob.test is not None else None)
        results.append({"init": inits[s].tolist(), "final": final.numpy().tolist(),
                        "train_cost": train_cost, "test_cost": test_cost,
                        "seconds": time.perf_counter() - t0})
    return results


def polish(prob, free_values_init, steps=200, lr=0.01):
    """Adam from given free values (e.g. the DP weights).

    Returns ``(values, cost)``: the (T, n_free) numpy values with the lowest true
    train cost among all iterates, the initial point included, and that cost. It
    never returns anything worse than the start.
    """
    _, best, cost = _adam(prob, free_values_init, steps, lr, track_best=True)
    return best.numpy(), cost


# --------------------------------------------------------------------------- export

class AttentionLayer(nn.Module):
    """One attention-only layer with full float64 weights M, V, W, b."""

    def __init__(self, M, V, W, b, lo, hi):
        super().__init__()
        self.M = nn.Parameter(torch.as_tensor(M, dtype=DTYPE).detach().clone())
        self.V = nn.Parameter(torch.as_tensor(V, dtype=DTYPE).detach().clone())
        self.W = nn.Parameter(torch.as_tensor(W, dtype=DTYPE).detach().clone())
        self.b = nn.Parameter(torch.as_tensor(b, dtype=DTYPE).detach().clone())
        self.register_buffer("lo", torch.tensor(float(lo), dtype=DTYPE))
        self.register_buffer("hi", torch.tensor(float(hi), dtype=DTYPE))

    def forward(self, x: torch.Tensor, e: torch.Tensor, allowed: torch.Tensor,
                mass: torch.Tensor) -> torch.Tensor:
        return layer_step(x, e, allowed, mass, self.M, self.V, self.W, self.b, self.lo, self.hi)


class QliftTransformer(nn.Module):
    """The trained Transformer: ``forward(x (N,d) float64, pos (N,), seq (N,)) -> x_T``.

    The N tokens passed together form the measure (mass 1/N each), as in training.
    """

    mask_kind: int

    def __init__(self, thetas, lo, hi, mask, pe_table):
        super().__init__()
        self.layers = nn.ModuleList([AttentionLayer(th["M"], th["V"], th["W"], th["b"], lo, hi)
                                     for th in thetas])
        self.mask_kind = MASK_CODES[mask]
        self.register_buffer("pe_table", torch.as_tensor(pe_table, dtype=DTYPE).clone())

    def forward(self, x: torch.Tensor, pos: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        pos = pos.to(torch.long)
        seq = seq.to(torch.long)
        e = self.pe_table[pos]
        allowed = attend_mask(self.mask_kind, seq, pos)
        n = x.shape[0]
        mass = torch.full([n], 1.0 / n, dtype=x.dtype, device=x.device)
        for lay in self.layers:
            x = lay(x, e, allowed, mass)
        return x


def export_module(prob, free_values, positions=None):
    """A :class:`QliftTransformer` holding the full weights of ``free_values`` (T, n_free).

    The positional-encoding table covers positions 0..P-1 with P = prob.n_pos, or
    ``positions`` when larger (sinusoidal encodings extend to unseen positions).
    """
    with torch.no_grad():
        thetas = [{k: v.detach() for k, v in th.items()}
                  for th in full_weights(prob, torch.as_tensor(free_values, dtype=DTYPE))]
    n_pos = max(int(prob.n_pos), int(positions or 0))
    table = problem_mod.positional_encoding(prob.pe, prob.d_e, np.arange(n_pos))
    table = np.asarray(table, dtype=np.float64).reshape(n_pos, prob.d_e)
    return QliftTransformer(thetas, prob.lo, prob.hi, prob.mask, table)


def save_module(module, path):
    """Write ``module`` as TorchScript; load it anywhere with ``torch.jit.load(path)``."""
    with warnings.catch_warnings():  # TorchScript is deprecated but still the portable format
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(module)
        torch.jit.save(scripted, str(path))
    return str(path)
