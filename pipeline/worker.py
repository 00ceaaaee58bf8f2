"""One shard worker: backups of contiguous state ranges, written to the zarr store.

The same class runs in the driver process (``solver.backend=local``) and as a
long-lived Ray actor (``solver.backend=ray``), so numba compiles once per
worker and both backends run the same code on the same shards. Everything
it receives is plain: a dict of numpy arrays, ints, and absolute paths.

Shard ``i`` is the state range ``[i * chunk, min((i + 1) * chunk, S))``,
exactly one zarr chunk of every table. After a shard's data is written, the
worker writes its completion marker (atomically: temp file, then rename) in
the progress folder beside the store; a missing marker means "not done",
whatever the store holds.
"""

import json
import os
import time
from pathlib import Path

import numba
import numpy as np
import zarr

from pipeline import quantize


def progress_dir(store):
    """The folder of completion markers of ``store``."""
    store = Path(store)
    return store.with_name(store.name + ".progress")


def marker_path(progress, kind, t, shard):
    """Marker of value layer ``t`` (kind ``v``) or of the transitions (kind ``x``)."""
    return Path(progress) / (f"v{t:05d}_s{shard:07d}" if kind == "v" else f"x_s{shard:07d}")


def write_marker(path, info):
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def compile_kernels(arrays):
    """Run every kernel once on one state, for the dtypes the solver uses."""
    import kernels

    n_a = arrays["stage"].shape[0]
    st = np.zeros(1, np.int64)
    for dt in (np.int32, np.int64):
        quantize.transition(arrays, st, np.empty((1, n_a), dt))
    for vt in (np.float64, np.float32):
        kernels.bellman_backup(np.zeros((1, n_a), np.int32), arrays["stage"].astype(vt),
                               np.zeros(1, vt), np.empty(1, vt), np.empty(1, np.int32))
    quantize.terminal(arrays, st, np.empty(1))


class ShardWorker:
    """Computes terminal values and Bellman backups shard by shard.

    Parameters
    ----------
    arrays : dict of numpy arrays
        The quantized MDP (see :mod:`kernels.transition`).
    job : dict
        ``store`` (absolute path), ``n_states``, ``layers``, ``chunk``,
        ``idx_dtype`` ("int32" or "int64"), ``value_dtype`` ("float64" or
        "float32"), ``cache`` ("memory", "disk" or
        "off"), ``threads`` (numba threads), ``fault`` (test hook or None).
    """

    def __init__(self, arrays, job):
        self.job = dict(job)
        threads = job.get("threads")
        if threads:
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        # writable, owned copies (arrays from the Ray object store are read-only)
        self.arrays = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in arrays.items()}
        t0 = time.perf_counter()
        compile_kernels(self.arrays)
        self.compile_s = time.perf_counter() - t0
        root = zarr.open_group(job["store"], mode="r+", zarr_format=3)
        self.value, self.policy = root["value"], root["policy"]
        self.trans = root["transitions"] if job["cache"] == "disk" else None
        self.progress = progress_dir(job["store"])
        self.idx_dtype = np.dtype(job["idx_dtype"])
        self.value_dtype = np.dtype(job.get("value_dtype", "float64"))
        self.stage = self.arrays["stage"].astype(self.value_dtype)
        self.cache = {}
        self.stats = {"transitions": 0.0, "backup": 0.0, "terminal": 0.0, "write": 0.0,
                      "n_transitions": 0}

    def info(self):
        return {"pid": os.getpid(), "compile_s": self.compile_s,
                "threads": numba.get_num_threads()}

    def take_stats(self):
        out, self.stats = self.stats, {key: 0 * v for key, v in self.stats.items()}
        return out

    def _range(self, shard):
        lo = shard * self.job["chunk"]
        return lo, min(lo + self.job["chunk"], self.job["n_states"])

    def _maybe_fail(self, t, shard):
        f = self.job.get("fault")
        if not f or f["layer"] != t or f["shard"] != shard:
            return
        tries = Path(f["dir"])
        tries.mkdir(parents=True, exist_ok=True)
        if len(list(tries.iterdir())) < f.get("times", 1):
            (tries / f"attempt{len(list(tries.iterdir()))}_{os.getpid()}").touch()
            os._exit(17)

    def _next(self, shard):
        if shard in self.cache:
            return self.cache[shard]
        lo, hi = self._range(shard)
        mark = marker_path(self.progress, "x", 0, shard)
        if self.trans is not None and mark.exists():
            nxt = self.trans[lo:hi, :]
        else:
            t0 = time.perf_counter()
            nxt = np.empty((hi - lo, self.arrays["stage"].shape[0]), self.idx_dtype)
            quantize.transition(self.arrays, np.arange(lo, hi, dtype=np.int64), nxt)
            self.stats["transitions"] += time.perf_counter() - t0
            self.stats["n_transitions"] += nxt.size
            if self.trans is not None:
                self.trans[lo:hi, :] = nxt
                write_marker(mark, {"shard": shard})
        if self.job["cache"] == "memory":
            self.cache[shard] = nxt
        return nxt

    def terminal(self, t, shard, _v_next=None):
        """V_T on one shard, written to ``value[T]``."""
        self._maybe_fail(t, shard)
        lo, hi = self._range(shard)
        t0 = time.perf_counter()
        v = quantize.terminal(self.arrays, np.arange(lo, hi, dtype=np.int64), np.empty(hi - lo))
        self.stats["terminal"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.value[t, lo:hi] = v.astype(self.value_dtype)
        write_marker(marker_path(self.progress, "v", t, shard), {"layer": t, "shard": shard})
        self.stats["write"] += time.perf_counter() - t0
        return shard, hi - lo

    def backup(self, t, shard, v_next):
        """V_t and pi_t on one shard from the full V_{t+1}, written to the store."""
        import kernels

        self._maybe_fail(t, shard)
        lo, hi = self._range(shard)
        nxt = self._next(shard)
        t0 = time.perf_counter()
        v = np.empty(hi - lo, self.value_dtype)
        pi = np.empty(hi - lo, np.int32)
        kernels.bellman_backup(nxt, self.stage, v_next, v, pi)
        self.stats["backup"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.value[t, lo:hi] = v
        self.policy[t, lo:hi] = pi
        write_marker(marker_path(self.progress, "v", t, shard), {"layer": t, "shard": shard})
        self.stats["write"] += time.perf_counter() - t0
        return shard, hi - lo
