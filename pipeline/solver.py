"""The solver driver: config -> problem -> quantizers -> backward induction -> rollout -> report.

``solve(cfg)`` is the whole job; ``python -m pipeline`` is a thin Hydra
wrapper around it, and tests call it directly with a plain dict.
"""

import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np

from pipeline import problem as problem_mod
from pipeline import quantize, storage
from pipeline.errors import QliftError
from pipeline.true_system import true_cost

log = logging.getLogger("qlift")

GIB = 2**30
BACKENDS = ("local",)
CACHE_MODES = ("auto", "memory", "off")
TABLE_KEYS = ("data", "model", "loss", "quant")  # what determines the tables


class Timer(dict):
    """Seconds per named phase, accumulated."""

    @contextmanager
    def __call__(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0


def to_plain(cfg):
    """A resolved plain-dict copy of a DictConfig (or dict)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - hydra is a dependency
        return dict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)


def _run_dir(run_dir):
    if run_dir is not None:
        return Path(run_dir).resolve()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir).resolve()
    except Exception:  # not under Hydra
        return Path.cwd().resolve()


def _int_setting(scfg, key, default, minimum=1):
    v = scfg.get(key, default)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise QliftError(f"solver.{key}={v!r} must be an integer >= {minimum}")
    return v


def settings(cfg):
    """Validated solver settings as a plain dict."""
    scfg = cfg.get("solver") or {}
    backend = scfg.get("backend", "local")
    if backend not in BACKENDS:
        raise QliftError(f"solver.backend={backend!r} is unknown; valid choices are: "
                         f"{', '.join(BACKENDS)}")
    cache = scfg.get("cache_transitions", "auto")
    if cache not in CACHE_MODES:
        raise QliftError(f"solver.cache_transitions={cache!r} is unknown; valid choices are: "
                         f"{', '.join(CACHE_MODES)}")
    mem = scfg.get("memory_gb", 8)
    if not isinstance(mem, (int, float)) or isinstance(mem, bool) or mem <= 0:
        raise QliftError(f"solver.memory_gb={mem!r} must be a positive number of GiB")
    return {
        "backend": backend,
        "cache": cache,
        "memory_bytes": int(float(mem) * GIB),
        "memory_gb": float(mem),
        "max_states": _int_setting(scfg, "max_states", 200_000_000),
        "chunk": _int_setting(scfg, "chunk_states", 65536),
        "threads": _int_setting(scfg, "threads", None),
    }


def plan(n_states, n_actions, layers, st):
    """Bytes the run needs; refuse before allocating when they do not fit."""
    idx_bytes = 4 if n_states < 2**31 else 8
    chunk = min(st["chunk"], n_states)
    base = 2 * n_states * 8 + chunk * n_actions * idx_bytes + chunk * 12
    cache_bytes = n_states * n_actions * idx_bytes
    if base > st["memory_bytes"]:
        raise QliftError(
            f"S={n_states} states x |A|={n_actions} actions need {base / GIB:.2f} GiB in memory "
            f"for two value layers, over solver.memory_gb={st['memory_gb']:g}; lower quant.k or "
            "quant.m, shrink the model.free grids, or raise solver.memory_gb")
    if st["cache"] == "memory" and base + cache_bytes > st["memory_bytes"]:
        raise QliftError(
            f"solver.cache_transitions=memory needs {(base + cache_bytes) / GIB:.2f} GiB for "
            f"{n_states}x{n_actions} next-state indices, over solver.memory_gb="
            f"{st['memory_gb']:g}; use solver.cache_transitions=auto or off")
    use_cache = st["cache"] == "memory" or (
        st["cache"] == "auto" and base + cache_bytes <= st["memory_bytes"])
    disk = (layers + 1) * n_states * 8 + layers * n_states * 4
    return {"idx_dtype": np.int32 if idx_bytes == 4 else np.int64, "chunk": chunk,
            "cache": "memory" if use_cache else "off", "memory_bytes": base + (
                cache_bytes if use_cache else 0), "disk_bytes": disk}


def step(arrays, state, a):
    """F(state, a) for one state and one action."""
    one = dict(arrays)
    for key in ("Ms", "Vs", "Ws", "bs"):
        one[key] = arrays[key][a:a + 1]
    out = np.empty((1, 1), np.int64)
    quantize.transition(one, np.array([state], np.int64), out)
    return int(out[0, 0])


def _chunks(n, chunk):
    for lo in range(0, n, chunk):
        yield lo, min(lo + chunk, n)


def backward_induction_local(arrays, n_states, layers, pl, root, timer):
    """Full-table backward induction in this process; tables written to ``root``."""
    import kernels

    chunk = pl["chunk"]
    n_a = arrays["stage"].shape[0]
    v_next = np.empty(n_states)
    with timer("terminal"):
        for lo, hi in _chunks(n_states, chunk):
            quantize.terminal(arrays, np.arange(lo, hi, dtype=np.int64), v_next[lo:hi])
        root["value"][layers, :] = v_next
    cache = None
    if pl["cache"] == "memory":
        with timer("transitions"):
            cache = np.empty((n_states, n_a), pl["idx_dtype"])
            for lo, hi in _chunks(n_states, chunk):
                quantize.transition(arrays, np.arange(lo, hi, dtype=np.int64), cache[lo:hi])
        log.info("transitions: %d x %d cached in memory (%.2f s)", n_states, n_a,
                 timer["transitions"])
    buf = None if cache is not None else np.empty((chunk, n_a), pl["idx_dtype"])
    v_cur = np.empty(n_states)
    pi = np.empty(n_states, np.int32)
    for t in range(layers - 1, -1, -1):
        t0 = time.perf_counter()
        for lo, hi in _chunks(n_states, chunk):
            if cache is not None:
                nxt = cache[lo:hi]
            else:
                with timer("transitions"):
                    nxt = buf[:hi - lo]
                    quantize.transition(arrays, np.arange(lo, hi, dtype=np.int64), nxt)
            with timer("backup"):
                kernels.bellman_backup(nxt, arrays["stage"], v_next, v_cur[lo:hi], pi[lo:hi])
        with timer("store"):
            root["value"][t, :] = v_cur
            root["policy"][t, :] = pi
        dt = time.perf_counter() - t0
        log.info("layer %d: %d states backed up in %.2f s (%.3g state-actions/s)", t, n_states,
                 dt, n_states * n_a / max(dt, 1e-9))
        v_next, v_cur = v_cur, v_next


def _compile(arrays, timer):
    import kernels

    with timer("compile"):
        st = np.zeros(1, np.int64)
        quantize.transition(arrays, st, np.empty((1, arrays["stage"].shape[0]), np.int32))
        quantize.transition(arrays, st, np.empty((1, arrays["stage"].shape[0]), np.int64))
        quantize.terminal(arrays, st, np.empty(1))
        kernels.bellman_backup(np.zeros((1, 1), np.int32), np.zeros(1), np.zeros(1), np.empty(1),
                               np.empty(1, np.int32))


def rollout(arrays, mu0, layers, policy_at):
    """Open-loop actions and quantized states from mu0 under the stored policy."""
    states, actions = [mu0], []
    for t in range(layers):
        a = int(policy_at(t, states[-1]))
        actions.append(a)
        states.append(step(arrays, states[-1], a))
    return actions, states


def solve(cfg, run_dir=None):
    """Solve the problem of ``cfg``; write the tables and ``result.json`` to the run dir.

    Returns the result dict (also written to ``RUN_DIR/result.json``).
    """
    timer = Timer()
    t_start = time.perf_counter()
    cfg = to_plain(cfg)
    run_dir = _run_dir(run_dir)
    with timer("setup"):
        st = settings(cfg)
        prob = problem_mod.build(cfg)
        qcfg = cfg.get("quant") or {}
        k, m = qcfg.get("k"), qcfg.get("m")
        *_, n_states = quantize.sizes(prob, k, m)
        if n_states > st["max_states"]:
            raise QliftError(
                f"the quantized measure space has {n_states} states, over solver.max_states="
                f"{st['max_states']}; lower quant.k or quant.m, or raise solver.max_states")
        pl = plan(n_states, prob.n_actions, prob.layers, st)
        free_disk = shutil.disk_usage(run_dir if run_dir.exists() else run_dir.parent
                                      if run_dir.parent.exists() else Path.cwd()).free
        if pl["disk_bytes"] > free_disk:
            raise QliftError(f"the tables need {pl['disk_bytes'] / GIB:.2f} GiB on disk, but "
                             f"{free_disk / GIB:.2f} GiB are free under {run_dir}; choose another "
                             "hydra.run.dir or lower quant.k or quant.m")
        q = quantize.build(prob, k, m, st["max_states"])
    if st["threads"]:
        numba.set_num_threads(min(st["threads"], numba.config.NUMBA_NUM_THREADS))
    log.info("S=%d quantized measures, |A|=%d actions, T=%d layers; tables %.1f MiB; "
             "transitions cache: %s", n_states, prob.n_actions, prob.layers,
             pl["disk_bytes"] / 2**20, pl["cache"])

    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    if result_path.exists():
        result_path.unlink()  # never leave an old result beside new tables
    tables = run_dir / "tables.zarr"
    hashed = {key: cfg.get(key) for key in TABLE_KEYS}
    attrs = {"config": cfg, "config_hash": storage.canonical_hash(hashed),
             "mdp_hash": storage.arrays_hash(q.arrays)}
    with timer("store"):
        root = storage.create(tables, n_states, prob.n_actions, prob.layers, pl["chunk"], attrs)
    _compile(q.arrays, timer)
    backward_induction_local(q.arrays, n_states, prob.layers, pl, root, timer)
    with timer("store"):
        storage.finish(tables)

    with timer("rollout"):
        policy = root["policy"]
        mu0 = q.mu0
        actions, states = rollout(q.arrays, mu0, prob.layers,
                                  lambda t, s: policy[t, s])
        value = float(root["value"][0, mu0])
    with timer("evaluate"):
        train_cost = true_cost(prob, actions, prob.train)
        test_cost = true_cost(prob, actions, prob.test) if prob.test is not None else None
    timer["total"] = time.perf_counter() - t_start
    result = {
        "quantized_value": value,
        "true_cost": train_cost,
        "test_cost": test_cost,
        "actions": actions,
        "theta": [prob.theta(a) for a in actions],
        "n_states": int(n_states),
        "n_actions": int(prob.n_actions),
        "n_classes": int(q.classes.shape[0]),
        "budgets": [int(b) for b in q.arrays["cls_m"]],
        "k": k, "m": m, "layers": prob.layers,
        "mu0": int(mu0),
        "states": [int(s) for s in states],
        "backend": st["backend"],
        "transitions_cache": pl["cache"],
        "timings": {key: round(v, 6) for key, v in timer.items()},
        "tables": str(tables),
    }
    storage.write_json(result_path, result)
    print(summary(result, prob))
    return result


def summary(res, prob):
    lines = [
        f"qlift: S={res['n_states']:,} quantized measures x |A|={res['n_actions']} actions, "
        f"T={res['layers']} layers ({res['n_classes']} classes, budgets {res['budgets']})",
        f"  quantized value V_0(mu_0) = {res['quantized_value']:.6g}",
        f"  true cost (train)         = {res['true_cost']:.6g}"
        + ("" if res["test_cost"] is None else f"   (test {res['test_cost']:.6g})"),
    ]
    for t, (a, th) in enumerate(zip(res["actions"], res["theta"])):
        vals = ", ".join(f"{n}={v:g}" for n, v in th.items())
        lines.append(f"  layer {t}: action {a}: {vals}")
    tm = res["timings"]
    lines.append("  time: " + ", ".join(f"{key} {v:.2f}s" for key, v in tm.items()))
    lines.append(f"  tables: {res['tables']}")
    return "\n".join(lines)
