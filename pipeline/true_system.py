"""The true (unquantized) particle system of SPEC §1, in float64 numpy."""

import numpy as np

_ROWS = 1024  # attention rows per block: bounds memory at _ROWS * N floats


def attend_mask(kind, seq_q, pos_q, seq_k, pos_k):
    """Boolean (n_q, n_k) mask: which keys each query token attends to."""
    if kind == "none":
        return np.ones((seq_q.shape[0], seq_k.shape[0]), bool)
    same = seq_q[:, None] == seq_k[None, :]
    if kind == "sequence":
        return same
    return same & (pos_k[None, :] <= pos_q[:, None])


def layer(x, pe, seq, pos, mass, theta, lo, hi, mask):
    """One layer ``x -> clip_X(x + Attn(z; mu, theta) + W x + b)`` for every particle.

    Parameters
    ----------
    x : (n, d) float64
    pe : (n, d_e) float64
        Positional encodings e(p) of the particles.
    seq, pos : (n,) int64
    mass : (n,) float64
        Mass of each particle in the measure (1/N on the data).
    theta : dict with M (D, D), V, W (d, d), b (d,)
    """
    u = np.concatenate([x, pe], axis=1)
    mu = u @ theta["M"].T  # rows: M u_j
    vx = x @ theta["V"].T
    out = np.empty_like(x)
    for r0 in range(0, x.shape[0], _ROWS):
        r1 = min(r0 + _ROWS, x.shape[0])
        allowed = attend_mask(mask, seq[r0:r1], pos[r0:r1], seq, pos)
        sc = np.where(allowed, u[r0:r1] @ mu.T, -np.inf)
        sc -= sc.max(axis=1, keepdims=True)
        wt = mass[None, :] * np.exp(sc)
        out[r0:r1] = (wt @ vx) / wt.sum(axis=1, keepdims=True)
    return np.clip(x + out + x @ theta["W"].T + theta["b"], lo, hi)


def pointwise_loss(prob, x, label):
    """l(x, y) of SPEC §1 for every row, (n,) float64."""
    if prob.loss == "target":
        diff = x - prob.targets[label]
        return np.sum(diff * diff, axis=1)
    sigma = np.where(label == 1, 1.0, -1.0)
    z = x @ prob.w - prob.c0
    if prob.loss == "zero_one":
        sign = np.where(z > 0, 1.0, -1.0)
        return (sign != sigma).astype(np.float64)
    return np.logaddexp(0.0, -sigma * z)


def weights(prob, a):
    """The full weights (M, V, W, b) of action ``a``."""
    acts = prob.actions
    return {"M": acts["Ms"][a], "V": acts["Vs"][a], "W": acts["Ws"][a], "b": acts["bs"][a]}


def run_layers(prob, thetas, split):
    """x_T of the particles of ``split`` (mass 1/N each) through the weights ``thetas``."""
    x = split["x"].copy()
    pe = prob.encode(split["pos"])
    mass = np.full(x.shape[0], 1.0 / x.shape[0])
    for theta in thetas:
        x = layer(x, pe, split["seq"], split["pos"], mass, theta, prob.lo, prob.hi, prob.mask)
    return x


def final_state(prob, actions, split):
    """x_T under the action sequence ``actions``."""
    return run_layers(prob, [weights(prob, a) for a in actions], split)


def true_cost(prob, actions, split):
    """J of SPEC §1 for the action sequence on the unquantized data of ``split``."""
    x = final_state(prob, actions, split)
    run = float(sum(prob.stage[a] for a in actions))
    return run + float(np.mean(pointwise_loss(prob, x, split["label"])))
