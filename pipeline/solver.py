"""The solver driver: config -> problem -> quantizers -> backward induction -> rollout -> report.

``solve(cfg)`` is the whole job; ``python -m pipeline`` is a thin Hydra
wrapper around it, and tests call it directly with a plain dict.

The state range 0..S-1 is cut into shards of ``solver.chunk_states``
states, one zarr chunk each. Layer by layer (terminal first, then T-1 down
to 0) the driver hands every unfinished shard to an executor (this process
or Ray actors), waits for all of them (a barrier), reads the new value layer
back and goes on. Finished shards leave completion markers, so rerunning the
same command in the same run directory resumes where a crash stopped.
"""

import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline import backends, problem as problem_mod, quantize, storage
from pipeline.errors import QliftError, RunFailed
from pipeline.progress import LayerProgress
from pipeline.true_system import true_cost
from pipeline.worker import marker_path, progress_dir

log = logging.getLogger("qlift")

GIB = 2**30
BACKENDS = ("ray", "local")
CACHE_MODES = ("auto", "memory", "disk", "off")
MODES = ("full", "reachable")
TABLE_KEYS = ("data", "model", "loss", "quant")  # what, with the chunk size, fixes the tables


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
    from omegaconf import DictConfig, OmegaConf

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


def _int(section, scfg, key, default, minimum=1):
    v = scfg.get(key, default)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
        raise QliftError(f"{section}.{key}={v!r} must be an integer >= {minimum}")
    return v


def _choice(section, scfg, key, default, valid):
    v = scfg.get(key, default)
    if v not in valid:
        raise QliftError(f"{section}.{key}={v!r} is unknown; valid choices are: {', '.join(valid)}")
    return v


def settings(cfg):
    """Validated solver and Ray settings as a plain dict."""
    scfg = cfg.get("solver") or {}
    rcfg = cfg.get("ray") or {}
    mem = scfg.get("memory_gb", 8)
    if not isinstance(mem, (int, float)) or isinstance(mem, bool) or mem <= 0:
        raise QliftError(f"solver.memory_gb={mem!r} must be a positive number of GiB")
    resume = scfg.get("resume", True)
    if not isinstance(resume, bool):
        raise QliftError(f"solver.resume={resume!r} must be true or false")
    export = (cfg.get("export") or {}).get("torch", "auto")
    if export not in ("auto", True, False):
        raise QliftError(f"export.torch={export!r} must be auto, true or false")
    fault = scfg.get("fault")
    if fault is not None and not (isinstance(fault, dict) and {"layer", "shard"} <= set(fault)):
        raise QliftError(f"solver.fault={fault!r} must be null or {{layer: T, shard: I, times: N}}")
    return {
        "backend": _choice("solver", scfg, "backend", "ray", BACKENDS),
        "cache": _choice("solver", scfg, "cache_transitions", "auto", CACHE_MODES),
        "memory_bytes": int(float(mem) * GIB),
        "memory_gb": float(mem),
        "max_states": _int("solver", scfg, "max_states", 200_000_000),
        "chunk": _int("solver", scfg, "chunk_states", 65536),
        "threads": _int("solver", scfg, "threads", None),
        "value_dtype": _choice("solver", scfg, "value_dtype", "float64", ("float64", "float32")),
        "mode": _choice("solver", scfg, "mode", "full", MODES),
        "resume": resume,
        "retries": _int("solver", scfg, "retries", 3, minimum=0),
        "fault": fault,
        "ray": {
            "address": rcfg.get("address"),
            "num_cpus": _int("ray", rcfg, "num_cpus", None),
            "workers": _int("ray", rcfg, "workers", None),
            "cpus_per_worker": _int("ray", rcfg, "cpus_per_worker", 1),
            "in_flight": _int("ray", rcfg, "in_flight", None),
            "object_store_gb": rcfg.get("object_store_gb"),
        },
    }


def plan(n_states, n_actions, layers, st, free_disk):
    """Bytes the run needs and the transitions cache; refuse before allocating."""
    idx_bytes = 4 if n_states < 2**31 else 8
    vb = 4 if st["value_dtype"] == "float32" else 8
    chunk = min(st["chunk"], n_states)
    base = 3 * n_states * vb + 4 * chunk * n_actions * idx_bytes  # V_{t+1}, its Ray copy, V_t
    cache_bytes = n_states * n_actions * idx_bytes
    tables = (layers + 1) * n_states * vb + layers * n_states * 4
    if base > st["memory_bytes"]:
        raise QliftError(
            f"S={n_states} states x |A|={n_actions} actions need {base / GIB:.2f} GiB in memory "
            f"for the value layers, over solver.memory_gb={st['memory_gb']:g}; lower quant.k or "
            "quant.m, shrink the model.free grids, raise solver.memory_gb, or use "
            "solver.mode=reachable")
    if tables > free_disk:
        raise QliftError(f"the tables need {tables / GIB:.2f} GiB on disk but {free_disk / GIB:.2f} "
                         "GiB are free; choose another hydra.run.dir or lower quant.k or quant.m")
    cache = st["cache"]
    fits_memory = base + cache_bytes <= st["memory_bytes"]
    fits_disk = tables + cache_bytes <= free_disk
    if cache == "memory" and not fits_memory:
        raise QliftError(
            f"solver.cache_transitions=memory needs {(base + cache_bytes) / GIB:.2f} GiB for "
            f"{n_states}x{n_actions} next-state indices, over solver.memory_gb="
            f"{st['memory_gb']:g}; use solver.cache_transitions=auto, disk or off")
    if cache == "disk" and not fits_disk:
        raise QliftError(f"solver.cache_transitions=disk needs {cache_bytes / GIB:.2f} GiB more "
                         "disk than is free; use solver.cache_transitions=off")
    if cache == "auto":
        cache = "memory" if fits_memory else "disk" if fits_disk else "off"
    if layers == 1 and st["cache"] == "auto":
        cache = "off"  # every transition is used once: nothing to reuse
    return {"idx_dtype": "int32" if idx_bytes == 4 else "int64", "chunk": chunk, "cache": cache,
            "memory_bytes": base + (cache_bytes if cache == "memory" else 0),
            "disk_bytes": tables + (cache_bytes if cache == "disk" else 0)}


def step(arrays, state, a):
    """F(state, a) for one state and one action (the kernel moves a state under all)."""
    out = np.empty((1, arrays["stage"].shape[0]), np.int64)
    quantize.transition(arrays, np.array([state], np.int64), out)
    return int(out[0, a])


def rollout(arrays, mu0, layers, policy_at):
    """Open-loop actions and quantized states from mu0 under the stored policy."""
    states, actions = [mu0], []
    for t in range(layers):
        a = int(policy_at(t, states[-1]))
        actions.append(a)
        states.append(step(arrays, states[-1], a))
    return actions, states


def _free_disk(path):
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free


def _open_or_create(tables, st, n_states, prob, pl, attrs):
    """The store to fill: resumed when it matches this config, else new."""
    prog = progress_dir(tables)
    if tables.exists() and st["resume"]:
        try:
            root = storage.open_tables(tables, mode="r+")
            stored = root.attrs.get("config_hash")
        except QliftError:
            stored, root = None, None
        if stored is None:
            log.warning("%s is incomplete from an interrupted start; starting over", tables)
        elif stored != attrs["config_hash"]:
            raise QliftError(
                f"{tables} holds tables of another config (stored hash {stored[:12]}, this "
                f"config {attrs['config_hash'][:12]}); use a new hydra.run.dir, or "
                "solver.resume=false to overwrite them")
        elif pl["cache"] == "disk" and "transitions" not in root:
            log.warning("%s has no transitions array for the disk cache; starting over", tables)
        else:
            n_done = len(list(prog.glob("v*"))) if prog.exists() else 0
            log.info("resuming %s: %d finished (layer, shard) markers", tables, n_done)
            return root, True
    if prog.exists():
        shutil.rmtree(prog)
    root = storage.create(tables, n_states, prob.n_actions, prob.layers, pl["chunk"],
                          {**attrs, "transitions_cache": pl["cache"]},
                          transitions=pl["cache"] == "disk", idx_dtype=pl["idx_dtype"],
                          value_dtype=st["value_dtype"])
    prog.mkdir(parents=True)
    return root, False


def _n_workers(rc, cpus):
    """Ray actors: ray.workers, else the cluster's CPUs over ray.cpus_per_worker."""
    return rc["workers"] or max(1, cpus // rc["cpus_per_worker"])


def _executor(st, arrays, job, timer):
    if st["backend"] == "local":
        return backends.LocalExecutor(arrays, {**job, "threads": st["threads"]}), False
    started, cpus = backends.start_ray(st["ray"])
    try:
        rc = st["ray"]
        n_workers = _n_workers(rc, cpus)
        ex = backends.RayExecutor(arrays, job, n_workers, rc["cpus_per_worker"], st["retries"],
                                  rc["in_flight"] or 1)
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
    return ex, started


def backward_induction(executor, root, tables, n_states, layers, chunk, timer):
    """Fill ``value`` and ``policy`` layer by layer, skipping finished shards."""
    n_shards = -(-n_states // chunk)
    prog = progress_dir(tables)
    layer_s = {}
    for t in range(layers, -1, -1):
        todo = [i for i in range(n_shards) if not marker_path(prog, "v", t, i).exists()]
        label = "terminal" if t == layers else f"layer {t}"
        if not todo:
            log.info("%s: all %d shards already done", label, n_shards)
            continue
        v_next = None
        if t < layers:
            with timer("read"):
                v_next = root["value"][t + 1, :]
            if np.isnan(v_next).any():
                raise RunFailed(f"value layer {t + 1} has unwritten states although every "
                                "shard is marked done; rerun with solver.resume=false")
        progress = LayerProgress(label, n_shards, n_states, done_shards=n_shards - len(todo))
        method = "terminal" if t == layers else "backup"
        with timer("terminal" if t == layers else "backup"):
            executor.run(method, t, todo, v_next, progress)
        layer_s[t] = progress.close()
    return layer_s


def solve(cfg, run_dir=None):
    """Solve the problem of ``cfg``; write the tables and ``result.json`` to the run dir.

    With ``cfg["tables"]`` set to a finished store, nothing is solved: the
    stored policy answers this config's data instead (see :func:`reuse`).
    Returns the result dict (also written to ``RUN_DIR/result.json``).
    """
    timer = Timer()
    t_start = time.perf_counter()
    cfg = to_plain(cfg)
    run_dir = _run_dir(run_dir)
    if cfg.get("exp"):
        from pipeline import experiments

        return experiments.run(cfg, run_dir)
    if cfg.get("tables"):
        return reuse(cfg, run_dir, timer, t_start)
    with timer("setup"):
        st = settings(cfg)
        prob = problem_mod.build(cfg)
        qcfg = cfg.get("quant") or {}
        k, m = qcfg.get("k"), qcfg.get("m")
        *_, n_states = quantize.sizes(prob, k, m)
        if st["mode"] == "reachable":
            return solve_reachable_mode(cfg, st, prob, k, m, n_states, run_dir, timer, t_start)
        if n_states > st["max_states"]:
            big = (f"{n_states}" if n_states < 10**15 else
                   f"about 10^{len(str(n_states)) - 1}")
            raise QliftError(
                f"the quantized measure space has {big} states, over solver.max_states="
                f"{st['max_states']}; lower quant.k or quant.m, raise solver.max_states, or use "
                "solver.mode=reachable (only the measures reachable from the data)")
        pl = plan(n_states, prob.n_actions, prob.layers, st, _free_disk(run_dir))
        q = quantize.build(prob, k, m, st["max_states"])
    log.info("S=%d quantized measures, |A|=%d actions, T=%d layers; tables %.1f MiB; "
             "transitions cache: %s; backend: %s", n_states, prob.n_actions, prob.layers,
             pl["disk_bytes"] / 2**20, pl["cache"], st["backend"])

    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    if result_path.exists():
        result_path.unlink()  # never leave an old result beside new tables
    tables = run_dir / "tables.zarr"
    hashed = {**{key: cfg.get(key) for key in TABLE_KEYS}, "chunk": pl["chunk"],
              "value_dtype": st["value_dtype"]}
    parts = storage.array_hashes(q.arrays)
    attrs = {"config": cfg, "config_hash": storage.canonical_hash(hashed),
             "mdp_hash": storage.canonical_hash(parts), "mdp_parts": parts}
    with timer("store"):
        root, resumed = _open_or_create(tables, st, n_states, prob, pl, attrs)
    job = {"store": str(tables), "n_states": int(n_states), "layers": prob.layers,
           "chunk": pl["chunk"], "idx_dtype": pl["idx_dtype"], "cache": pl["cache"],
           "value_dtype": st["value_dtype"],
           "fault": None if not st["fault"] else {**st["fault"],
                                                  "dir": str(run_dir / ".faults")}}
    with timer("startup"):
        executor, started = _executor(st, q.arrays, job, timer)
    try:
        timer["compile"] = executor.compile_s
        layer_s = backward_induction(executor, root, tables, n_states, prob.layers, pl["chunk"],
                                     timer)
        stats = executor.stats()
        executor.close()
    finally:
        if started:
            import ray

            ray.shutdown()
    with timer("store"):
        storage.finish(tables)
    n_trans = sum(s["n_transitions"] for s in stats)
    t_trans = sum(s["transitions"] for s in stats) / max(len(stats), 1)
    if n_trans:
        timer["transitions"] = t_trans
    with timer("rollout"):
        policy = root["policy"]
        actions, states = rollout(q.arrays, q.mu0, prob.layers, lambda t, s: policy[t, s])
        value = float(root["value"][0, q.mu0])
    result = _report(prob, q, actions, states, value, timer, t_start, tables, {
        "backend": st["backend"], "workers": executor.n_workers, "resumed": resumed,
        "transitions_cache": pl["cache"], "transitions_computed": int(n_trans),
        "layer_seconds": {str(t): round(v, 6) for t, v in sorted(layer_s.items())}})
    result.update(export_torch(cfg, prob, actions, run_dir, timer))
    storage.write_json(result_path, result)
    print(summary(result))
    return result


def export_torch(cfg, prob, actions, run_dir, timer):
    """Save the trained weights as a TorchScript ``model.pt`` (``export.torch``), optionally
    polished by Adam from the DP weights (``export.polish``). Returns result entries."""
    ecfg = cfg.get("export") or {}
    want = ecfg.get("torch", "auto")  # checked by settings() before any work
    if want is False:
        return {}
    try:
        from pipeline import torch_model
    except ImportError:
        if want is True:
            raise QliftError("export.torch=true needs torch: pip install -e '.[torch]'") from None
        return {}
    out = {}
    with timer("export"):
        free = torch_model.free_values_of_actions(prob, actions)
        path = run_dir / "model.pt"
        torch_model.save_module(torch_model.export_module(prob, free), path)
        out["torch_module"] = str(path)
        if ecfg.get("polish"):
            vals, cost = torch_model.polish(prob, free, steps=int(ecfg.get("polish_steps", 200)),
                                            lr=float(ecfg.get("polish_lr", 0.01)))
            ppath = run_dir / "model_polished.pt"
            torch_model.save_module(torch_model.export_module(prob, vals), ppath)
            out["polished"] = {"true_cost": float(cost), "free_values": np.asarray(vals).tolist(),
                               "torch_module": str(ppath)}
    return out


def solve_reachable_mode(cfg, st, prob, k, m, n_states, run_dir, timer, t_start):
    """``solver.mode=reachable``: back up values over the measures reachable from mu_0."""
    from pipeline import reachable

    with timer("setup"):
        q = quantize.build(prob, k, m, full=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    result_path = run_dir / "result.json"
    if result_path.exists():
        result_path.unlink()
    tables = run_dir / "tables.zarr"
    log.info("reachable mode: the full space has %s states; enumerating from mu_0 with %d "
             "actions over %d layers", n_states if n_states < 10**15 else
             f"about 10^{len(str(n_states)) - 1}", prob.n_actions, prob.layers)
    started = False
    with timer("startup"):
        if st["backend"] == "ray":
            started, cpus = backends.start_ray(st["ray"])
            n_workers = _n_workers(st["ray"], cpus)
        else:
            n_workers = 1
    try:
        with timer("startup"):
            ex = reachable.make_workers(q.arrays, st["backend"], n_workers,
                                        st["ray"]["cpus_per_worker"], st["threads"])
        with timer("solve"):
            sizes, values, policies, states, actions, path, n_trans = reachable.solve_reachable(
                ex, q.mu0_ranks, prob.layers, log)
    finally:
        if started:
            import ray

            ray.shutdown()
    with timer("store"):
        storage.write_reachable(tables, states, values, policies, {
            "config": cfg, "mode": "reachable", "layers": prob.layers,
            "n_actions": int(prob.n_actions), "reachable_states": sizes})
    value = float(values[0][path[0]])
    result = _report(prob, q, actions, path, value, timer, t_start, tables, {
        "backend": st["backend"], "workers": n_workers, "mode": "reachable",
        "n_states": int(n_states) if n_states < 2**63 else None,
        "n_states_log10": float(np.log10(float(n_states))) if n_states < 10**300 else
        len(str(n_states)) - 1, "reachable_states": sizes, "transitions_computed": int(n_trans),
        "mu0": int(path[0]), "mu0_ranks": [int(r) for r in q.mu0_ranks]})
    result.update(export_torch(cfg, prob, actions, run_dir, timer))
    storage.write_json(result_path, result)
    print(summary(result))
    return result


def reuse(cfg, run_dir, timer, t_start):
    """Answer this config's data with the policy of a finished store, without solving."""
    with timer("setup"):
        settings(cfg)
        tables = Path(cfg["tables"]).expanduser().resolve()
        root = storage.open_tables(tables)
        if not root.attrs.get("complete"):
            raise QliftError(f"tables={str(tables)!r} is not complete (its run did not finish); "
                             "finish it by rerunning its command, or solve this problem afresh")
        prob = problem_mod.build(cfg)
        qcfg = cfg.get("quant") or {}
        k, m = qcfg.get("k"), qcfg.get("m")
        *_, n_states = quantize.sizes(prob, k, m)
        if n_states != root.attrs["n_states"] or prob.layers != root.attrs["layers"]:
            raise QliftError(
                f"tables={str(tables)!r} were solved for S={root.attrs['n_states']} states and "
                f"T={root.attrs['layers']} layers, but this problem has S={n_states}, "
                f"T={prob.layers}; it needs the same classes, budgets, grid and layers")
        q = quantize.build(prob, k, m)
        parts = storage.array_hashes(q.arrays)
        stored = root.attrs.get("mdp_parts", {})
        differ = sorted(key for key in parts if stored.get(key) != parts[key])
        if differ:
            raise QliftError(
                f"tables={str(tables)!r} belong to another quantized MDP: "
                f"{', '.join(storage.describe_parts(differ))} differ; reuse needs the same "
                "classes, budgets, class shares, grid, weights grid and loss")
    with timer("rollout"):
        policy = root["policy"]
        actions, states = rollout(q.arrays, q.mu0, prob.layers, lambda t, s: policy[t, s])
        value = float(root["value"][0, q.mu0])
    run_dir.mkdir(parents=True, exist_ok=True)
    result = _report(prob, q, actions, states, value, timer, t_start, tables,
                     {"backend": "reuse", "reused_tables": True})
    result.update(export_torch(cfg, prob, actions, run_dir, timer))
    storage.write_json(run_dir / "result.json", result)
    print(summary(result))
    return result


def _report(prob, q, actions, states, value, timer, t_start, tables, extra):
    with timer("evaluate"):
        train_cost = true_cost(prob, actions, prob.train)
        test_cost = true_cost(prob, actions, prob.test) if prob.test is not None else None
    timer["total"] = time.perf_counter() - t_start
    out = {
        "quantized_value": value,
        "true_cost": train_cost,
        "test_cost": test_cost,
        "actions": actions,
        "theta": [prob.theta(a) for a in actions],
        "n_states": int(q.n_states) if q.n_states < 2**63 else None,
        "n_actions": int(prob.n_actions),
        "n_classes": int(q.classes.shape[0]),
        "budgets": [int(b) for b in q.arrays["cls_m"]],
        "k": q.k, "m": q.m, "layers": prob.layers,
        "mu0": int(q.mu0) if "mu0" not in extra else extra["mu0"],
        "states": [int(s) for s in states],
        "mode": "full",
        **extra,
        "timings": {key: round(v, 6) for key, v in timer.items()},
        "tables": str(tables),
    }
    return out


def _states_text(res):
    if res.get("mode") == "reachable":
        full = (f"{res['n_states']:,}" if res["n_states"] is not None
                else f"~10^{res['n_states_log10']:.0f}")
        return f"{full} (reachable per layer: {res['reachable_states']})"
    return f"{res['n_states']:,}"


def _budgets_text(budgets):
    return str(budgets) if len(budgets) <= 8 else f"{budgets[:4]}... ({len(budgets)} classes)"


def summary(res):
    lines = [
        f"qlift: S={_states_text(res)} quantized measures x |A|={res['n_actions']} actions, "
        f"T={res['layers']} layers ({res['n_classes']} classes, budgets "
        f"{_budgets_text(res['budgets'])})",
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
