"""Executors that run shard tasks: in this process, or on Ray actors.

Both expose ``run(method, t, shards, v_next, progress)``, which returns when
every shard of the list is written (a barrier), and ``close()``.
"""

import logging
import os
from collections import deque

from pipeline.errors import QliftError, RunFailed
from pipeline.worker import ShardWorker

log = logging.getLogger("qlift")


class LocalExecutor:
    """One :class:`ShardWorker` in the driver process, numba threads over states."""

    name = "local"

    def __init__(self, arrays, job):
        self.worker = ShardWorker(arrays, job)
        self.n_workers = 1
        self.compile_s = self.worker.compile_s

    def run(self, method, t, shards, v_next, progress):
        fn = getattr(self.worker, method)
        for shard in shards:
            _, n = fn(t, shard, v_next)
            progress.update(n)

    def stats(self):
        return [self.worker.take_stats()]

    def close(self):
        pass


class RayExecutor:
    """Long-lived Ray actors, one per ``cpus_per_worker`` CPUs.

    Shard ``i`` always goes to actor ``i % n_workers``, so an in-memory
    transitions cache stays with the actor that built it. Each actor has at
    most ``in_flight`` shards submitted at once (default 1, so an actor that
    dies takes down only the shard it was computing). A shard whose actor
    dies or raises is resubmitted (the actor restarts) up to ``retries``
    times; then the run stops with :class:`RunFailed`.
    """

    name = "ray"

    def __init__(self, arrays, job, n_workers, cpus_per_worker, retries, in_flight):
        import ray

        self.ray = ray
        self.retries = retries
        self.in_flight = max(1, in_flight)
        actor = ray.remote(ShardWorker).options(
            num_cpus=cpus_per_worker, max_restarts=max(retries, 0), max_task_retries=0)
        job = {**job, "threads": cpus_per_worker}
        # one copy in the object store, referenced here for the whole run, so an actor
        # that restarts after a crash finds its constructor arguments again
        self.arrays_ref = ray.put(arrays)
        self.workers = [actor.remote(self.arrays_ref, job) for _ in range(n_workers)]
        self.n_workers = n_workers
        infos = ray.get([w.info.remote() for w in self.workers])
        self.compile_s = max(i["compile_s"] for i in infos)
        log.info("ray: %d workers (pids %s), %d numba threads each", n_workers,
                 ", ".join(str(i["pid"]) for i in infos), infos[0]["threads"])

    def run(self, method, t, shards, v_next, progress):
        ray = self.ray
        v_ref = ray.put(v_next) if v_next is not None else None
        queues = [deque() for _ in self.workers]
        for shard in shards:
            queues[shard % self.n_workers].append(shard)
        attempts = {}
        inflight = {}  # ref -> (worker index, shard)
        busy = [0] * self.n_workers
        while inflight or any(queues):
            for w, queue in enumerate(queues):
                while queue and busy[w] < self.in_flight:
                    shard = queue.popleft()
                    ref = getattr(self.workers[w], method).remote(t, shard, v_ref)
                    inflight[ref] = (w, shard)
                    busy[w] += 1
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                w, shard = inflight.pop(ref)
                busy[w] -= 1
                try:
                    _, n = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError,
                        ray.exceptions.WorkerCrashedError) as exc:
                    attempts[shard] = attempts.get(shard, 0) + 1
                    name = type(exc).__name__
                    first = (str(exc).strip().splitlines() or [name])[0][:200]
                    if attempts[shard] > self.retries:
                        raise RunFailed(
                            f"shard {shard} of layer {t} failed on {attempts[shard]} attempt"
                            f"{'s' if attempts[shard] > 1 else ''} (last: "
                            f"{name}: {first}); finished shards are kept: rerun the same "
                            "command to resume") from None
                    log.warning("shard %d of layer %d failed (%s); retry %d/%d", shard, t, name,
                                attempts[shard], self.retries)
                    queues[w].appendleft(shard)
                    continue
                progress.update(n)

    def stats(self):
        return self.ray.get([w.take_stats.remote() for w in self.workers])

    def close(self):
        for w in self.workers:
            self.ray.kill(w)


def start_ray(rcfg):
    """Attach to or start Ray; return (started_here, cluster CPUs)."""
    import ray

    if ray.is_initialized():
        return False, int(ray.cluster_resources().get("CPU", 1))
    address = rcfg.get("address")
    kwargs = {"include_dashboard": False, "logging_level": logging.WARNING,
              "configure_logging": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            n = (rcfg.get("num_cpus") or os.environ.get("SLURM_CPUS_PER_TASK")
                 or os.cpu_count() or 1)
            osm = rcfg.get("object_store_gb")
            ray.init(num_cpus=int(n),
                     object_store_memory=int(osm * 2**30) if osm else None, **kwargs)
    except ConnectionError as exc:
        raise QliftError(f"ray.address={address!r}: no Ray cluster answered ({exc}); start one "
                         "with 'ray start --head' or leave ray.address=null to run locally") from None
    return True, int(ray.cluster_resources().get("CPU", 1))
