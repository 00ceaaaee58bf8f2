"""Reachable-set solver (``solver.mode=reachable``).

Instead of every quantized measure, only those reachable from mu_0 are
enumerated, layer by layer: R_0 = {mu_0}, R_{t+1} = {F(mu, a) : mu in R_t, a}.
Values are then backed up over those sets only:

.. math::

    V_T = \\text{terminal cost on } R_T, \\qquad
    V_t(\\mu) = \\min_a c(a) + V_{t+1}(F(\\mu, a)), \\quad \\mu \\in R_t,

which gives the same V_0(mu_0) and the same policy on R_t as the full table
(ties to the lowest action), at a cost that grows with what the data can
reach. A state is the vector of its classes' multiset ranks, so measure spaces
far beyond one int64 index (many sequences under ``mask=sequence``) work.

States are partitioned across workers by a hash of their rank vector. Each
layer, every worker moves its states under every action and sends each new
state to its owner; owners deduplicate (sorted, so the layout is
deterministic). The global index of a state is its owner's offset plus its
position in the owner's sorted partition; each worker keeps the successor
indices of its states for the backward pass.
"""

import numpy as np

from pipeline import quantize

SALT = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9,
                 0x85EBCA77C2B2AE63], dtype=np.uint64)


def as_rows(ranks):
    """(n, n_cls) int64 rows as a 1-D void array (one sortable item per state)."""
    r = np.ascontiguousarray(ranks, dtype=np.int64)
    return r.view(np.dtype((np.void, r.shape[1] * 8))).reshape(-1)


def from_rows(rows, n_cls):
    return np.frombuffer(rows.tobytes(), dtype=np.int64).reshape(-1, n_cls)


def owner_of(ranks, n_workers):
    """Deterministic hash partition of rank vectors over ``n_workers``."""
    if n_workers == 1:
        return np.zeros(ranks.shape[0], np.int64)
    r = ranks.astype(np.uint64)
    salt = np.resize(SALT, r.shape[1])
    with np.errstate(over="ignore"):
        h = (r * salt[None, :]).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(29)
    return (h % np.uint64(n_workers)).astype(np.int64)


class ReachWorker:
    """One hash partition of every reachable layer, with its successor indices."""

    def __init__(self, arrays, job):
        import numba

        threads = job.get("threads")
        if threads:
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        self.arrays = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
        self.w, self.n_workers = job["index"], job["n_workers"]
        self.n_cls = self.arrays["cls_m"].shape[0]
        self.layers, self.pending, self.succ = {}, None, {}
        self.n_transitions = 0

    def set_layer(self, t, ranks):
        self.layers[t] = as_rows(ranks)
        return len(self.layers[t])

    def expand(self, t):
        """Move this partition of R_t under every action; new states bucketed by owner."""
        mine = from_rows(self.layers[t], self.n_cls)
        n_a = self.arrays["stage"].shape[0]
        out = np.empty((mine.shape[0], n_a, self.n_cls), np.int64)
        if mine.shape[0]:
            quantize.transition_ranks(self.arrays, mine, out)
        self.n_transitions += out.shape[0] * n_a
        flat = out.reshape(-1, self.n_cls)
        self.pending = flat
        owner = owner_of(flat, self.n_workers)
        rows = as_rows(flat)
        return [np.unique(rows[owner == o]) for o in range(self.n_workers)]

    def collect(self, t, *buckets):
        """Deduplicate the states this worker owns in R_t; return them (sorted)."""
        rows = np.unique(np.concatenate(buckets))  # one bucket from every worker
        self.layers[t] = rows
        return rows

    def link(self, t, *partitions):
        """Successor indices of this partition of R_t into the global order of R_{t+1}."""
        flat = self.pending
        n_a = self.arrays["stage"].shape[0]
        owner = owner_of(flat, self.n_workers)
        rows = as_rows(flat)
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in partitions])])
        idx = np.empty(len(rows), np.int64)
        for o, part in enumerate(partitions):
            sel = owner == o
            idx[sel] = offsets[o] + np.searchsorted(part, rows[sel])
        self.succ[t] = idx.reshape(-1, n_a)
        self.pending = None
        return len(self.layers[t])

    def terminal(self, t):
        mine = from_rows(self.layers[t], self.n_cls)
        return quantize.terminal_ranks(self.arrays, mine, np.empty(mine.shape[0]))

    def backup(self, t, v_next):
        import kernels

        nxt = self.succ[t]
        v = np.empty(nxt.shape[0])
        pi = np.empty(nxt.shape[0], np.int32)
        if nxt.shape[0]:
            kernels.bellman_backup(nxt, self.arrays["stage"], v_next, v, pi)
        return v, pi

    def layer(self, t):
        return from_rows(self.layers[t], self.n_cls)

    def succ_row(self, t, i):
        return self.succ[t][i]

    def info(self):
        return {"n_transitions": self.n_transitions}


class _Local:
    """Calls on in-process workers, shaped like the Ray calls."""

    def __init__(self, workers):
        self.workers = workers

    def call(self, w, method, *args, n_out=1):
        return getattr(self.workers[w], method)(*args)

    def get(self, x):
        return x

    def put(self, x):
        return x


class _Ray:
    def __init__(self, workers):
        import ray

        self.ray, self.workers = ray, workers

    def call(self, w, method, *args, n_out=1):
        fn = getattr(self.workers[w], method)
        if n_out > 1:
            return fn.options(num_returns=n_out).remote(*args)
        ref = fn.remote(*args)
        return [ref] if method == "expand" else ref

    def get(self, x):
        return self.ray.get(x)

    def put(self, x):
        return self.ray.put(x)


def make_workers(arrays, backend, n_workers, cpus_per_worker, threads):
    if backend == "local":
        return _Local([ReachWorker(arrays, {"index": 0, "n_workers": 1, "threads": threads})])
    import ray

    actor = ray.remote(ReachWorker).options(num_cpus=cpus_per_worker)
    ref = ray.put(arrays)
    ws = [actor.remote(ref, {"index": w, "n_workers": n_workers, "threads": cpus_per_worker})
          for w in range(n_workers)]
    ex = _Ray(ws)
    ex.arrays_ref = ref
    return ex


def solve_reachable(ex, mu0_ranks, layers, log=None):
    """Forward enumeration and backward induction over the reachable sets.

    Returns (sizes per layer, value and policy per layer as global arrays,
    states per layer, open-loop actions, global state index per layer,
    transitions computed).
    """
    n_w = len(ex.workers)
    owner0 = int(owner_of(mu0_ranks[None, :], n_w)[0])
    ex.get(ex.call(owner0, "set_layer", 0, mu0_ranks[None, :]))
    for w in range(n_w):
        if w != owner0:
            ex.get(ex.call(w, "set_layer", 0, np.zeros((0, len(mu0_ranks)), np.int64)))
    part_sizes = [[1 if w == owner0 else 0 for w in range(n_w)]]
    for t in range(layers):
        buckets = [ex.call(w, "expand", t, n_out=n_w) for w in range(n_w)]
        parts = [ex.call(o, "collect", t + 1, *[buckets[w][o] for w in range(n_w)])
                 for o in range(n_w)]
        ex.get([ex.call(w, "link", t, *parts) for w in range(n_w)])
        part_sizes.append([len(p) for p in ex.get(parts)])
        if log:
            log.info("reachable: layer %d -> %d states", t + 1, sum(part_sizes[-1]))
    values, policies = {}, {}
    v = np.concatenate(ex.get([ex.call(w, "terminal", layers) for w in range(n_w)]))
    values[layers] = v
    for t in range(layers - 1, -1, -1):
        ref = ex.put(v)
        out = ex.get([ex.call(w, "backup", t, ref) for w in range(n_w)])
        v = np.concatenate([o[0] for o in out])
        values[t] = v
        policies[t] = np.concatenate([o[1] for o in out])
    states = {t: np.concatenate(ex.get([ex.call(w, "layer", t) for w in range(n_w)]))
              for t in range(layers + 1)}
    # open loop from mu_0
    idx = int(sum(part_sizes[0][:owner0]))
    path, actions = [idx], []
    for t in range(layers):
        a = int(policies[t][idx])
        offs = np.concatenate([[0], np.cumsum(part_sizes[t])])
        o = int(np.searchsorted(offs, idx, side="right") - 1)
        row = ex.get(ex.call(o, "succ_row", t, idx - int(offs[o])))
        idx = int(row[a])
        actions.append(a)
        path.append(idx)
    n_trans = sum(i["n_transitions"] for i in ex.get([ex.call(w, "info") for w in range(n_w)]))
    sizes = [int(sum(s)) for s in part_sizes]
    return sizes, values, policies, states, actions, path, n_trans
