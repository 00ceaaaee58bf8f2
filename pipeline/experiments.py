"""The paper's claims as runnable experiments (``python -m pipeline experiment=NAME``).

Each experiment is a ``conf/experiment/NAME.yaml`` of overrides that sets
``exp.name`` and its settings. It writes into the run directory
``NAME.csv``, ``NAME.md`` (the table), ``NAME.png`` (the figure) and
``experiment.json`` (headline figures and one sentence of interpretation,
computed from the numbers), which ``python -m pipeline.paper_report``
gathers into one page. The solves of an experiment run in this process
(``solver.backend=local``), each in its own folder under ``RUN_DIR/runs``.
"""

import copy
import logging
import time
from pathlib import Path

import numpy as np

from pipeline import problem as problem_mod
from pipeline import quantize, storage
from pipeline.errors import QliftError
from pipeline.true_system import final_state, layer, pointwise_loss, run_layers, weights

log = logging.getLogger("qlift")


# -- shared helpers ---------------------------------------------------------------------------

def _plain_cfg(cfg):
    base = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in ("exp", "hydra")}
    base["solver"] = {**base.get("solver", {}), "backend": "local"}
    base["tables"] = None
    return base


def _solve(cfg, run_dir):
    from pipeline.solver import solve

    return solve(cfg, run_dir=run_dir)


def write_table(run_dir, name, rows, columns):
    import csv

    with open(run_dir / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    (run_dir / f"{name}.md").write_text("\n".join(lines) + "\n")


def _figure(ncols=1, width=7.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, 4.3), dpi=120, squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finish(run_dir, name, title, sentence, figures, extra=None):
    info = {"name": name, "title": title, "interpretation": sentence,
            "figure": f"{name}.png", "table": f"{name}.md", **(extra or {}), **figures}
    storage.write_json(run_dir / "experiment.json", info)
    print(f"{title}\n  {sentence}\n  wrote {run_dir / (name + '.md')}, {run_dir / (name + '.png')}")
    return info


def exhaustive_true(prob, split):
    """min J over all |A|^T weight sequences on the real particle system (prefix-shared)."""
    n = split["x"].shape[0]
    pe = prob.encode(split["pos"])
    mass = np.full(n, 1.0 / n)
    best = [np.inf, None]

    def rec(x, t, run, seq):
        if t == prob.layers:
            j = run + float(np.mean(pointwise_loss(prob, x, split["label"])))
            if j < best[0]:
                best[0], best[1] = j, list(seq)
            return
        for a in range(prob.n_actions):
            x2 = layer(x, pe, split["seq"], split["pos"], mass, weights(prob, a), prob.lo,
                       prob.hi, prob.mask)
            rec(x2, t + 1, run + prob.stage[a], seq + [a])

    rec(split["x"], 0, 0.0, [])
    return best[0], best[1]


def _torch():
    try:
        from pipeline import torch_model
    except ImportError:
        raise QliftError("this experiment trains the gradient baseline with torch: "
                         "pip install -e '.[torch]'") from None
    return torch_model


# -- 1. refinement ----------------------------------------------------------------------------

def refinement(cfg, run_dir, spec):
    """Quantized value, true cost of the DP weights and the best true cost over the same
    action grid (exhaustive on the real system), as k, m and the action grid refine."""
    rows = []
    for i, (k, m, g) in enumerate(spec["resolutions"]):
        c = _plain_cfg(cfg)
        c["quant"] = {"k": int(k), "m": None if m is None else int(m)}
        c["solver"]["mode"] = spec.get("mode", "full")
        c["model"]["free"] = {name: [float(v) for v in np.linspace(lo, hi, int(g))]
                              for name, (lo, hi) in spec["ranges"].items()}
        res = _solve(c, run_dir / "runs" / str(i))
        prob = problem_mod.build(c)
        t0 = time.perf_counter()
        best, seq = exhaustive_true(prob, prob.train)
        rows.append({"k": k, "m": "all" if m is None else m, "grid": g,
                     "S": res["n_states"] if res["n_states"] is not None else
                     f"1e{res['n_states_log10']:.0f}", "A": res["n_actions"],
                     "reachable": sum(res.get("reachable_states") or [0]),
                     "quantized_value": res["quantized_value"], "dp_true_cost": res["true_cost"],
                     "best_true_cost": best, "gap": res["true_cost"] - best,
                     "abs_value_error": abs(res["quantized_value"] - res["true_cost"]),
                     "dp_seconds": res["timings"]["total"],
                     "exhaustive_seconds": time.perf_counter() - t0})
    cols = ["k", "m", "grid", "S", "A", "reachable", "quantized_value", "dp_true_cost",
            "best_true_cost",
            "gap", "abs_value_error", "dp_seconds", "exhaustive_seconds"]
    write_table(run_dir, "refinement", rows, cols)
    plt, fig, (ax,) = _figure()
    x = np.arange(len(rows))
    labels = [f"k={r['k']}, m={r['m']}\n{r['grid']}^3 grid" for r in rows]
    ax.plot(x, [r["quantized_value"] for r in rows], "o-", label="quantized value V_0(mu_0)")
    ax.plot(x, [r["dp_true_cost"] for r in rows], "s-", label="true cost of the DP weights")
    ax.plot(x, [r["best_true_cost"] for r in rows], "^--",
            label="best true cost on the same grid (exhaustive)")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_xlabel("resolution (state grid k, particles per class m, weight grid)")
    ax.set_ylabel("cost J (training data)")
    ax.set_title("Refinement: the DP weights approach the best weights")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, run_dir / "refinement.png")
    gaps = [r["gap"] for r in rows]
    sentence = (f"The gap between the DP weights' true cost and the best true cost over the same "
                f"weight grid goes from {gaps[0]:.4g} at the coarsest resolution to {gaps[-1]:.4g} "
                f"at the finest ({'shrinking' if gaps[-1] < gaps[0] else 'not shrinking'}), and "
                f"|V_0 - true cost| from {rows[0]['abs_value_error']:.4g} to "
                f"{rows[-1]['abs_value_error']:.4g}.")
    return _finish(run_dir, "refinement", "1. Refinement", sentence,
                   {"gaps": gaps, "shrinks": bool(gaps[-1] < gaps[0])})


# -- 2. DP against gradient descent -------------------------------------------------------------

def dp_vs_adam(cfg, run_dir, spec):
    """DP weights against Adam from many random starts, on a non-convex target problem and
    on the 0-1 loss (Adam trains the logistic surrogate, scored by 0-1)."""
    tm = _torch()
    rows, panels = [], []
    for i, case in enumerate(spec["cases"]):
        c = _plain_cfg(cfg)
        c["loss"] = {**c["loss"], **case["loss"]}
        res = _solve(c, run_dir / "runs" / str(i))
        prob = problem_mod.build(c)
        t0 = time.perf_counter()
        runs = tm.adam_baseline(prob, starts=spec["starts"], steps=spec["steps"], lr=spec["lr"],
                                seed=spec.get("seed", 0))
        adam_s = time.perf_counter() - t0
        init = tm.free_values_of_actions(prob, res["actions"])
        pol_vals, pol_cost = tm.polish(prob, init, steps=spec["steps"], lr=spec["lr"] / 5)
        costs = np.array([r["train_cost"] for r in runs])
        rows.append({"case": case["name"], "dp_true_cost": res["true_cost"],
                     "dp_test_cost": res["test_cost"], "dp_seconds": res["timings"]["total"],
                     "adam_best": float(costs.min()), "adam_median": float(np.median(costs)),
                     "adam_worst": float(costs.max()),
                     "adam_beaten_by_dp": float(np.mean(costs > res["true_cost"] + 1e-12)),
                     "adam_seconds": adam_s, "starts": len(runs), "dp_init_polished": pol_cost})
        panels.append((case["name"], costs, res["true_cost"], pol_cost))
    cols = ["case", "dp_true_cost", "dp_test_cost", "dp_seconds", "adam_best", "adam_median",
            "adam_worst", "adam_beaten_by_dp", "adam_seconds", "starts", "dp_init_polished"]
    write_table(run_dir, "dp_vs_adam", rows, cols)
    plt, fig, axes = _figure(len(panels), width=5.5 * len(panels))
    for ax, (name, costs, dp, pol) in zip(axes, panels):
        ax.hist(costs, bins=min(20, len(costs)), color="tab:gray", alpha=0.7,
                label=f"Adam, {len(costs)} random starts")
        ax.axvline(dp, color="tab:red", lw=2, label=f"DP weights ({dp:.4g})")
        ax.axvline(pol, color="tab:blue", ls="--", label=f"DP init + Adam ({pol:.4g})")
        ax.set_xlabel("true training cost J")
        ax.set_ylabel("number of Adam runs")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    _save(plt, fig, run_dir / "dp_vs_adam.png")
    parts = []
    for r in rows:
        who = ("DP beats every Adam start" if r["adam_best"] > r["dp_true_cost"] + 1e-12 else
               "the best Adam start beats DP" if r["adam_best"] < r["dp_true_cost"] - 1e-12
               else "DP ties the best Adam start")
        parts.append(f"{r['case']}: {who} (DP {r['dp_true_cost']:.4g} in {r['dp_seconds']:.1f} s; "
                     f"Adam best {r['adam_best']:.4g}, median {r['adam_median']:.4g} in "
                     f"{r['adam_seconds']:.1f} s)")
    return _finish(run_dir, "dp_vs_adam", "2. DP against gradient descent", "; ".join(parts) + ".",
                   {"rows": rows})


# -- 3. stability -------------------------------------------------------------------------------

def _w1(cells_a, cells_b, q, coords):
    """Class-preserving W1 between two quantized measures (exact: equal-size matchings)."""
    from scipy.optimize import linear_sum_assignment

    a = q.arrays
    total = 0.0
    for s in range(len(a["cls_m"])):
        lo, hi = a["cls_off"][s], a["cls_off"][s + 1]
        xa, xb = coords[cells_a[lo:hi]], coords[cells_b[lo:hi]]
        cost = np.linalg.norm(xa[:, None, :] - xb[None, :, :], axis=2)
        r, c = linear_sum_assignment(cost)
        total += a["cls_mass"][s] * cost[r, c].sum()
    return total


def stability(cfg, run_dir, spec):
    """|V_0(mu) - V_0(mu')| against W1(mu, mu') from one full table; and the value change
    when the training data are perturbed by noise of growing size."""
    c = _plain_cfg(cfg)
    res = _solve(c, run_dir / "runs" / "table")
    prob = problem_mod.build(c)
    q = quantize.build(prob, c["quant"]["k"], c["quant"]["m"])
    v0 = storage.open_tables(res["tables"])["value"][0, :]
    coords = q.arrays["coords"]
    rng = np.random.default_rng(spec.get("seed", 0))
    pairs = []
    base = rng.integers(0, q.n_states, spec["pairs"])
    for i, s in enumerate(base):
        ca = q.cells(int(s))
        if i % 2:  # a nearby measure: move some particles by one cell
            cb = ca.copy()
            for j in rng.choice(len(cb), rng.integers(1, 3), replace=False):
                cb[j] = min(max(cb[j] + rng.choice([-1, 1]), 0), q.n_cells - 1)
            for s2 in range(len(q.arrays["cls_m"])):
                lo, hi = q.arrays["cls_off"][s2], q.arrays["cls_off"][s2 + 1]
                cb[lo:hi] = np.sort(cb[lo:hi])
        else:
            cb = q.cells(int(rng.integers(0, q.n_states)))
        d = _w1(ca, cb, q, coords)
        pairs.append((d, abs(float(v0[q.index(ca)]) - float(v0[q.index(cb)]))))
    pairs = np.array(pairs)
    edges = np.quantile(pairs[:, 0][pairs[:, 0] > 0], np.linspace(0, 1, 9))
    modulus = [(float(e), float(pairs[pairs[:, 0] <= e, 1].max())) for e in edges]
    lipschitz = float(np.max(pairs[pairs[:, 0] > 0, 1] / pairs[pairs[:, 0] > 0, 0]))
    # data perturbation: same table, new initial measures
    v_ref = res["quantized_value"]
    noise_rows = []
    for sigma in spec["noise"]:
        diffs = []
        for rep in range(spec.get("noise_repeats", 5)):
            pert = copy.deepcopy(prob)
            r2 = np.random.default_rng(1000 + rep)
            pert.train = {**prob.train,
                          "x": prob.train["x"] + sigma * r2.standard_normal(prob.train["x"].shape)}
            qp = quantize.build(pert, c["quant"]["k"], c["quant"]["m"])
            diffs.append(abs(float(v0[qp.mu0]) - v_ref))
        noise_rows.append({"sigma": float(sigma), "mean_abs_value_change": float(np.mean(diffs)),
                           "max_abs_value_change": float(np.max(diffs))})
    rows = [{"w1_at_most": e, "max_abs_value_difference": m} for e, m in modulus]
    write_table(run_dir, "stability", rows, ["w1_at_most", "max_abs_value_difference"])
    write_table(run_dir, "stability_noise", noise_rows,
                ["sigma", "mean_abs_value_change", "max_abs_value_change"])
    plt, fig, (ax1, ax2) = _figure(2, width=11)
    ax1.scatter(pairs[:, 0], pairs[:, 1], s=6, alpha=0.4, label="pairs of quantized measures")
    ax1.plot([e for e, _ in modulus], [m for _, m in modulus], "r-o", ms=3,
             label="empirical modulus (max over W1 <= delta)")
    ax1.set_xlabel("W1 distance between quantized measures (class-preserving)")
    ax1.set_ylabel("|V_0(mu) - V_0(mu')|")
    ax1.set_title("Value continuity over the measure space", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.errorbar([r["sigma"] for r in noise_rows], [r["mean_abs_value_change"] for r in noise_rows],
                 fmt="o-", label="mean over noise draws")
    ax2.plot([r["sigma"] for r in noise_rows], [r["max_abs_value_change"] for r in noise_rows],
             "s--", label="max over noise draws")
    ax2.set_xlabel("std of Gaussian noise added to the training tokens")
    ax2.set_ylabel("|V_0 change| (same table)")
    ax2.set_title("Value change under data perturbation", fontsize=9)
    ax2.legend(fontsize=7)
    _save(plt, fig, run_dir / "stability.png")
    sentence = (f"Over {len(pairs)} pairs the value difference stays below "
                f"{lipschitz:.3g} x W1 (largest ratio seen); the empirical modulus rises from "
                f"{modulus[0][1]:.3g} at W1 <= {modulus[0][0]:.3g} to {modulus[-1][1]:.3g}, and "
                f"noise of std {noise_rows[-1]['sigma']:g} on the data moves V_0 by "
                f"{noise_rows[-1]['mean_abs_value_change']:.3g} on average.")
    return _finish(run_dir, "stability", "3. Stability", sentence,
                   {"lipschitz_seen": lipschitz, "noise": noise_rows},
                   {"extra_tables": ["stability_noise.md"]})


# -- 4. consistency -----------------------------------------------------------------------------

def consistency(cfg, run_dir, spec):
    """Training sets of growing size from one distribution, answered by one full table."""
    c = _plain_cfg(cfg)
    sizes = [int(n) for n in spec["sizes"]]
    c0 = copy.deepcopy(c)
    c0["data"].update(n=sizes[0], seed=0)
    table = _solve(c0, run_dir / "runs" / "table")
    rows = []
    for n in sizes:
        cn = copy.deepcopy(c)
        cn["data"].update(n=n, seed=n, n_test=spec.get("n_test", 2000))
        cn["tables"] = table["tables"]
        res = _solve(cn, run_dir / "runs" / f"n{n}")
        row = {"N": n, "quantized_value": res["quantized_value"], "true_cost": res["true_cost"],
               "test_cost": res["test_cost"], "actions": " ".join(map(str, res["actions"]))}
        for t, th in enumerate(res["theta"]):
            for name, v in th.items():
                row[f"t{t}:{name}"] = v
        rows.append(row)
    wcols = [k for k in rows[0] if k[0] == "t" and k[1:].split(":")[0].isdigit()]
    write_table(run_dir, "consistency", rows,
                ["N", "quantized_value", "true_cost", "test_cost", "actions"] + wcols)
    plt, fig, (ax1, ax2) = _figure(2, width=11)
    ns = [r["N"] for r in rows]
    ax1.semilogx(ns, [r["quantized_value"] for r in rows], "o-", label="quantized value V_0")
    ax1.semilogx(ns, [r["true_cost"] for r in rows], "s-", label="true cost (train)")
    ax1.semilogx(ns, [r["test_cost"] for r in rows], "^--", label="true cost (held-out)")
    ax1.set_xlabel("training tokens N")
    ax1.set_ylabel("cost J")
    ax1.set_title("Value and cost against training-set size", fontsize=9)
    ax1.legend(fontsize=7)
    for col in wcols:
        ax2.semilogx(ns, [r[col] for r in rows], "o-", ms=3, label=col)
    ax2.set_xlabel("training tokens N")
    ax2.set_ylabel("chosen weight value")
    ax2.set_title("Chosen weights per layer against N", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)
    _save(plt, fig, run_dir / "consistency.png")
    last = rows[-3:]
    stable = len({r["actions"] for r in last}) == 1
    sentence = (f"One full table answers every N (same classes and budgets); from N={ns[0]} to "
                f"N={ns[-1]} the quantized value moves from {rows[0]['quantized_value']:.4g} to "
                f"{rows[-1]['quantized_value']:.4g} and the held-out cost from "
                f"{rows[0]['test_cost']:.4g} to {rows[-1]['test_cost']:.4g}; over the three largest "
                f"sizes the chosen weights {'no longer change' if stable else 'still change'}.")
    return _finish(run_dir, "consistency", "4. Consistency", sentence, {"stable": stable})


# -- 5. real data -------------------------------------------------------------------------------

def _accuracy(prob, x, split):
    """Token accuracy (1 - mean 0-1 loss) and sequence accuracy (sign of the mean score)."""
    z = x @ prob.w - prob.c0
    sigma = np.where(split["label"] == 1, 1.0, -1.0)
    tok = float(np.mean(np.where(z > 0, 1.0, -1.0) == sigma))
    seq_ids = np.unique(split["seq"])
    hits = [np.sign(np.mean(z[split["seq"] == g]) or -1.0) == sigma[split["seq"] == g][0]
            for g in seq_ids]
    return tok, float(np.mean(hits))


def _final_x_free(prob, free, split):
    """x_T under arbitrary free-parameter values ``free`` (T, n_free), in numpy."""
    dd = prob.d + prob.d_e
    slots = [problem_mod.parse_param(n, prob.d, dd, "free") for n in prob.free_names]
    thetas = []
    for t in range(prob.layers):
        theta = {key: v.copy() for key, v in prob.base.items()}
        for (kind, ij), v in zip(slots, free[t]):
            theta[kind][ij] = v
        thetas.append(theta)
    return run_layers(prob, thetas, split)


def real_data(cfg, run_dir, spec):
    """Iris (bundled with scikit-learn) as token sequences: DP (reachable mode) against Adam."""
    tm = _torch()
    c = _plain_cfg(cfg)
    c["solver"]["mode"] = "reachable"
    res = _solve(c, run_dir / "runs" / "dp")
    prob = problem_mod.build(c)
    rows = []
    for name, split in (("train", prob.train), ("test", prob.test)):
        tok, seq = _accuracy(prob, final_state(prob, res["actions"], split), split)
        rows.append({"method": "DP (reachable)", "split": name,
                     "cost": res["true_cost"] if name == "train" else res["test_cost"],
                     "token_accuracy": tok, "sequence_accuracy": seq,
                     "seconds": res["timings"]["total"]})
    t0 = time.perf_counter()
    runs = tm.adam_baseline(prob, starts=spec["starts"], steps=spec["steps"], lr=spec["lr"])
    adam_s = time.perf_counter() - t0
    best = min(runs, key=lambda r: r["train_cost"])
    free = np.asarray(best["final"], dtype=np.float64)
    for name, split in (("train", prob.train), ("test", prob.test)):
        x = _final_x_free(prob, free, split)
        tok, seq = _accuracy(prob, x, split)
        rows.append({"method": f"Adam (best of {len(runs)} starts)", "split": name,
                     "cost": best["train_cost"] if name == "train" else best["test_cost"],
                     "token_accuracy": tok, "sequence_accuracy": seq, "seconds": adam_s})
    write_table(run_dir, "real_data", rows, ["method", "split", "cost", "token_accuracy",
                                             "sequence_accuracy", "seconds"])
    plt, fig, (ax1, ax2) = _figure(2, width=10)
    for ax, key, label in ((ax1, "sequence_accuracy", "sequence accuracy"),
                           (ax2, "cost", "logistic cost J")):
        xs = np.arange(2)
        for off, method in ((-0.2, rows[0]["method"]), (0.2, rows[2]["method"])):
            vals = [r[key] for r in rows if r["method"] == method]
            ax.bar(xs + off, vals, width=0.38, label=method)
        ax.set_xticks(xs, ["train", "held-out"])
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    ax1.set_title("Iris versicolor vs virginica as 4-token sequences", fontsize=9)
    ax2.set_title(f"reachable states per layer: {res['reachable_states']}", fontsize=9)
    _save(plt, fig, run_dir / "real_data.png")
    dp_test, ad_test = rows[1], rows[3]
    sentence = (f"On held-out flowers the DP weights classify {dp_test['sequence_accuracy']:.0%} "
                f"of sequences (cost {dp_test['cost']:.3g}) and the best of "
                f"{len(runs)} Adam starts {ad_test['sequence_accuracy']:.0%} (cost "
                f"{ad_test['cost']:.3g}); DP enumerated {sum(res['reachable_states'])} reachable "
                f"measures out of about 10^{res['n_states_log10']:.0f}.")
    return _finish(run_dir, "real_data", "5. Real data (iris)", sentence, {"rows": rows})


EXPERIMENTS = {"refinement": refinement, "dp_vs_adam": dp_vs_adam, "stability": stability,
               "consistency": consistency, "real_data": real_data}


def run(cfg, run_dir):
    spec = dict(cfg["exp"])
    name = spec.pop("name", None)
    if name not in EXPERIMENTS:
        raise QliftError(f"exp.name={name!r} is unknown; valid experiments are: "
                         f"{', '.join(EXPERIMENTS)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return EXPERIMENTS[name](cfg, run_dir, spec)
