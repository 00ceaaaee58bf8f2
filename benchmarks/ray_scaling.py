"""Ray scaling: one problem of more than 10^6 quantized measures on 1 and 2 workers.

    python benchmarks/ray_scaling.py [--m 5] [--layers 3] [--repeats 1]

Solves the default problem (two blobs, k=9) at m=5 per class (1,656,369
states) with a 27-action grid, sharded on a local Ray with 1 worker and then
2 workers, in one run, and prints transitions per second, state-action
backups per second and the speed-up. Each run's tables go to a temp folder.
"""

import argparse
import math
import statistics
import tempfile

import ray

from pipeline.solver import solve


def config(m, layers, workers, chunk):
    return {
        "data": {"source": "two_blobs", "n": 200, "n_test": 200, "d": 1, "seed": 0},
        "model": {"layers": layers, "box": [-2.0, 2.0], "pe": "none", "mask": "none",
                  "fixed": {}, "free": {"M[0,0]": [0.0, 1.0, 2.0], "V[0,0]": [0.0, 0.5, 1.0],
                                        "b[0]": [-0.25, 0.0, 0.25]}},
        "loss": {"kind": "target", "targets": [[-1.5], [1.5]], "lam": 0.01},
        "quant": {"k": 9, "m": m},
        "solver": {"backend": "ray", "chunk_states": chunk, "cache_transitions": "memory",
                   "memory_gb": 16},
        "ray": {"workers": workers, "cpus_per_worker": 1},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=5)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    rows = {}
    try:
        for workers in (1, 2):
            runs = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    res = solve(config(args.m, args.layers, workers, args.chunk), run_dir=tmp)
                ls = res["layer_seconds"]
                first = ls[str(args.layers - 1)]  # transitions computed and cached here
                later = [ls[str(t)] for t in range(args.layers - 1)]
                sa = res["n_states"] * res["n_actions"]
                runs.append({"solve_s": sum(ls.values()), "transitions_per_s": sa / first,
                             "backups_per_s": sa / statistics.median(later) if later else math.nan,
                             "S": res["n_states"], "A": res["n_actions"]})
            rows[workers] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    finally:
        ray.shutdown()
    one, two = rows[1], rows[2]
    print(f"S = {one['S']:,} quantized measures, |A| = {one['A']}, T = {args.layers}, "
          f"shards of {args.chunk} states, medians of {args.repeats} run(s)")
    print(f"{'workers':>8} {'solve s':>10} {'transitions/s':>15} {'backups/s':>15}")
    for w, r in rows.items():
        print(f"{w:>8} {r['solve_s']:>10.2f} {r['transitions_per_s']:>15.3e} "
              f"{r['backups_per_s']:>15.3e}")
    print(f"speed-up 1 -> 2 workers: {one['solve_s'] / two['solve_s']:.2f}x (solve wall time), "
          f"{two['transitions_per_s'] / one['transitions_per_s']:.2f}x (transitions/s)")


if __name__ == "__main__":
    main()
