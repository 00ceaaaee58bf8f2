"""qlift benchmarks: one finite MDP, several solvers, one process run.

    python benchmarks/run.py [--repeats 5] [--horizon 12] [--out benchmarks/results.json]
                             [--skip-ray]

On the reference problem (1-D tokens, k=9, two label classes, m=4 per class:
245,025 quantized measures; 4x4x4 grid over M[0,0], V[0,0], b[0]: 64
actions; mask none) it measures, one after another, backward induction over
``--horizon`` layers (default 12, so that each timing is long enough to be
stable; every solver gets the same horizon):

- our transition kernel (transitions per second);
- our backward induction over the cached transitions (state-action backups
  per second), and the same with float32 values;
- the random-gather limit: a plain numba loop summing V[next[s, a]] over the
  same arrays, the machine's limit for this access pattern;
- a plain numpy vectorized gather-min, ``(c[None, :] + V[next]).min(1)``;
- QuantEcon's ``DiscreteDP`` + ``backward_induction`` on the identical MDP
  (state-action pairs, a CSR matrix with one 1 per row, rewards = -cost);
- the peak memory of a full local ``solve()`` against the bytes of the arrays
  it must hold;
- Ray scaling: a 1,656,369-state problem solved on 1 and on 2 workers.

All solvers must return the same V_0 (checked here). Times are medians of
``--repeats`` runs; ratios are the other solver's time over ours.
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numba as nb
import numpy as np

import kernels
from pipeline import problem, quantize
from pipeline.solver import solve

REFERENCE = {
    "data": {"source": "two_blobs", "n": 200, "n_test": 200, "d": 1, "seed": 0},
    "model": {"layers": 3, "box": [-2.0, 2.0], "pe": "none", "mask": "none", "fixed": {},
              "free": {"M[0,0]": [0.0, 1.0, 2.0, 4.0], "V[0,0]": [0.0, 0.5, 1.0, 1.5],
                       "b[0]": [-0.25, 0.0, 0.25, 0.5]}},
    "loss": {"kind": "target", "targets": [[-1.5], [1.5]], "lam": 0.01},
    "quant": {"k": 9, "m": 4},
}


@nb.njit(parallel=True, cache=True)
def gather_limit(next_idx, v_next, out):
    """The random-gather limit: out[s] = sum_a V[next[s, a]] (no min, no argmin)."""
    n_s, n_a = next_idx.shape
    for s in nb.prange(n_s):
        acc = 0.0
        for a in range(n_a):
            acc += v_next[next_idx[s, a]]
        out[s] = acc


def timed(fn, repeats):
    fn()  # warm-up (compilation, page faults)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def ours(nxt, stage, v_term, layers, dtype=np.float64):
    v = v_term.astype(dtype)
    c = stage.astype(dtype)
    pi = np.empty(len(v), np.int32)
    for _ in range(layers):
        out = np.empty(len(v), dtype)
        kernels.bellman_backup(nxt, c, v, out, pi)
        v = out
    return v


def numpy_solver(nxt, stage, v_term, layers):
    v = v_term
    for _ in range(layers):
        v = (stage[None, :] + v[nxt]).min(axis=1)
    return v


def quantecon_solver(nxt, stage, v_term, layers):
    import scipy.sparse as sp
    from quantecon.markov import DiscreteDP, backward_induction

    n_s, n_a = nxt.shape
    s_idx = np.repeat(np.arange(n_s), n_a)
    a_idx = np.tile(np.arange(n_a), n_s)
    q = sp.csr_matrix((np.ones(n_s * n_a), nxt.ravel().astype(np.int64),
                       np.arange(n_s * n_a + 1)), shape=(n_s * n_a, n_s))
    with warnings.catch_warnings():  # beta=1 disables only the infinite-horizon methods
        warnings.simplefilter("ignore", UserWarning)
        ddp = DiscreteDP(-np.tile(stage, n_s), q, 1.0, s_idx, a_idx)
    t0 = time.perf_counter()
    vs, _ = backward_induction(ddp, layers, -v_term)
    return -vs[0], time.perf_counter() - t0


def peak_memory(cfg):
    """tracemalloc peak of a local solve() and the bytes its arrays must take."""
    with tempfile.TemporaryDirectory() as tmp:
        c = {**cfg, "solver": {"backend": "local", "cache_transitions": "memory"}}
        tracemalloc.start()
        res = solve(c, run_dir=tmp)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    s, a = res["n_states"], res["n_actions"]
    prob = problem.build(cfg)
    q = quantize.build(prob, cfg["quant"]["k"], cfg["quant"]["m"])
    kernel_bytes = sum(v.nbytes for v in q.arrays.values() if isinstance(v, np.ndarray))
    must = s * a * 4 + 2 * s * 8 + s * 4 + kernel_bytes  # cache, V_t+1 and V_t, pi_t, tables
    return peak, must


def ray_scaling(repeats):
    import ray

    big = {**REFERENCE, "quant": {"k": 9, "m": 5}}
    walls = {}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        for workers in (1, 2):
            ts = []
            for _ in range(repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    res = solve({**big, "solver": {"backend": "ray", "cache_transitions": "memory",
                                                   "memory_gb": 16},
                                 "ray": {"workers": workers}}, run_dir=tmp)
                ts.append(sum(res["layer_seconds"].values()))
            walls[workers] = statistics.median(ts)
    finally:
        ray.shutdown()
    return walls, res["n_states"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--horizon", type=int, default=12, help="layers of the timed induction")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    ap.add_argument("--skip-ray", action="store_true", help="leave out the Ray scaling run")
    args = ap.parse_args(argv)
    r = args.repeats

    prob = problem.build(REFERENCE)
    q = quantize.build(prob, 9, 4)
    arrays, n_s, n_a, layers = q.arrays, q.n_states, prob.n_actions, args.horizon
    states = np.arange(n_s, dtype=np.int64)
    nxt = np.empty((n_s, n_a), np.int32)
    t_trans, _ = timed(lambda: quantize.transition(arrays, states, nxt), r)
    v_term = quantize.terminal(arrays, states, np.empty(n_s))
    stage = arrays["stage"]

    t_ours, v_ours = timed(lambda: ours(nxt, stage, v_term, layers), r)
    t_ours32, v_ours32 = timed(lambda: ours(nxt, stage, v_term, layers, np.float32), r)
    sink = np.empty(n_s)
    t_gather, _ = timed(lambda: [gather_limit(nxt, v_term, sink) for _ in range(layers)], r)
    t_numpy, v_numpy = timed(lambda: numpy_solver(nxt, stage, v_term, layers), r)
    qe = [quantecon_solver(nxt, stage, v_term, layers) for _ in range(max(1, r))]
    t_qe = statistics.median(t for _, t in qe)
    v_qe = qe[0][0]

    mu0 = q.mu0
    v0 = {"ours": v_ours[mu0], "numpy": v_numpy[mu0], "quantecon": v_qe[mu0]}
    spread = max(v0.values()) - min(v0.values())
    same = bool(np.array_equal(v_ours, v_numpy) and np.allclose(v_ours, v_qe, atol=1e-12, rtol=0))
    if not same or spread > 1e-12:
        print(f"benchmark: the solvers disagree: V_0 = {v0}", file=sys.stderr)
        return 1

    peak, must = peak_memory(REFERENCE)
    walls, big_s = ({}, None) if args.skip_ray else ray_scaling(max(1, r - 1))

    sa = n_s * n_a
    res = {
        "problem": {"n_states": n_s, "n_actions": n_a, "layers": layers, "mu0": int(mu0),
                    "V0": float(v_ours[mu0])},
        "repeats": r,
        "transitions_per_s": sa / t_trans,
        "backups_per_s": layers * sa / t_ours,
        "backups_per_s_float32": layers * sa / t_ours32,
        "gather_limit_per_s": layers * sa / t_gather,
        "backup_vs_gather_limit": t_gather / t_ours,
        "ours_s": t_ours, "numpy_s": t_numpy, "quantecon_s": t_qe,
        "quantecon_ratio": t_qe / t_ours,
        "numpy_ratio": t_numpy / t_ours,
        "float32_max_abs_diff": float(np.max(np.abs(v_ours32.astype(np.float64) - v_ours))),
        "peak_memory_bytes": peak, "required_bytes": must, "peak_over_required": peak / must,
        "ray_solve_s": {str(k): v for k, v in walls.items()},
        "ray_states": big_s,
        "ray_speedup": walls[1] / walls[2] if walls else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")

    print(f"reference MDP: S={n_s:,} states x |A|={n_a} actions, T={layers}; V_0 = "
          f"{v_ours[mu0]:.6g} from all solvers; medians of {r} runs")
    print(f"transitions:          {res['transitions_per_s']:.3e} /s")
    print(f"backups (ours):       {res['backups_per_s']:.3e} state-actions/s  "
          f"({res['backup_vs_gather_limit']:.0%} of the gather limit "
          f"{res['gather_limit_per_s']:.3e}/s; float32 {res['backups_per_s_float32']:.3e}/s)")
    print(f"{'solver':<28}{'seconds':>10}{'time / ours':>14}")
    for name, t in (("ours (numba backup)", t_ours), ("ours, float32 values", t_ours32),
                    ("random-gather limit loop", t_gather), ("numpy gather-min", t_numpy),
                    ("QuantEcon backward_induction", t_qe)):
        print(f"{name:<28}{t:>10.4f}{t / t_ours:>14.2f}")
    print(f"peak memory of solve(): {peak / 2**20:.1f} MiB for {must / 2**20:.1f} MiB of required "
          f"arrays ({res['peak_over_required']:.2f}x)")
    if walls:
        print(f"Ray, S={big_s:,}: 1 worker {walls[1]:.2f} s, 2 workers {walls[2]:.2f} s, speed-up "
              f"{res['ray_speedup']:.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
