"""Summarise a sweep: one row per job, as CSV, markdown and a PNG plot.

    python -m pipeline.report SWEEP_DIR [--out DIR]

SWEEP_DIR is a Hydra multirun folder (``multirun/DATE/TIME`` or your
``hydra.sweep.dir``); every job folder in it with a ``.hydra`` or a
``result.json`` is one row. A job without ``result.json`` is listed as
failed. Writes ``summary.csv``, ``summary.md`` and ``summary.png`` (quantized
value and true cost against the number of quantized measures) into
SWEEP_DIR, or into ``--out``.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

COLUMNS = ["job", "k", "m", "grid", "S", "A", "quantized_value", "true_cost", "test_cost",
           "wall_s", "status"]


def _job_dirs(sweep):
    dirs = {p.parent for p in sweep.rglob("result.json")}
    dirs |= {p.parent for p in sweep.rglob(".hydra") if p.is_dir()}
    return sorted((d for d in dirs if ".submitit" not in d.parts),
                  key=lambda d: [int(s) if s.isdigit() else s for s in d.relative_to(sweep).parts])


def _overrides(job):
    f = job / ".hydra" / "overrides.yaml"
    if not f.exists():
        return []
    return [line[2:].strip() for line in f.read_text().splitlines() if line.startswith("- ")]


def rows(sweep):
    sweep = Path(sweep)
    out = []
    for job in _job_dirs(sweep):
        res_file = job / "result.json"
        row = {"job": str(job.relative_to(sweep)) or ".", "overrides": " ".join(_overrides(job))}
        if res_file.exists():
            r = json.loads(res_file.read_text())
            grid = "x".join(str(len(g)) for g in _grids(job))
            row.update(k=r["k"], m=r["m"], grid=grid, S=r["n_states"], A=r["n_actions"],
                       quantized_value=r["quantized_value"], true_cost=r["true_cost"],
                       test_cost=r["test_cost"], wall_s=r["timings"].get("total"), status="ok")
        else:
            row.update(status="failed (no result.json)")
        out.append(row)
    return out


def _grids(job):
    cfg = job / ".hydra" / "config.yaml"
    if not cfg.exists():
        return []
    from omegaconf import OmegaConf

    free = OmegaConf.to_container(OmegaConf.load(cfg)).get("model", {}).get("free") or {}
    return list(free.values())


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write(rows_, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cols = COLUMNS + ["overrides"]
    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows_:
            w.writerow({c: r.get(c, "") if r.get(c) is not None else "" for c in cols})
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows_]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(rows_, out / "summary.png")
    return out


def plot(rows_, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = sorted((r for r in rows_ if r["status"] == "ok"), key=lambda r: r["S"])
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if ok:
        s = [r["S"] for r in ok]
        ax.plot(s, [r["quantized_value"] for r in ok], "o-", label="quantized value V_0(mu_0)")
        ax.plot(s, [r["true_cost"] for r in ok], "s--", label="true cost of the DP weights (train)")
        if all(r["test_cost"] is not None for r in ok):
            ax.plot(s, [r["test_cost"] for r in ok], "^:", label="true cost (held-out)")
        for r in ok:
            ax.annotate(f"k={r['k']}, m={r['m']}", (r["S"], r["true_cost"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=7)
        if max(s) / max(min(s), 1) > 20:
            ax.set_xscale("log")
    ax.set_xlabel("quantized measures S (resolution)")
    ax.set_ylabel("cost J (loss units)")
    ax.set_title("Cost against quantization resolution")
    ax.grid(alpha=0.3)
    if ok:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished jobs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir")
    ap.add_argument("--out", default=None, help="folder for the summary (default: SWEEP_DIR)")
    args = ap.parse_args(argv)
    sweep = Path(args.sweep_dir)
    if not sweep.is_dir():
        print(f"qlift: error: sweep dir {str(sweep)!r} does not exist; give the folder of a "
              "multirun (e.g. multirun/DATE/TIME)", file=sys.stderr)
        return 2
    found = rows(sweep)
    if not found:
        print(f"qlift: error: {str(sweep)!r} holds no job folders (no result.json or .hydra "
              "inside); is it a multirun folder?", file=sys.stderr)
        return 2
    out = write(found, args.out or sweep)
    n_ok = sum(r["status"] == "ok" for r in found)
    print((out / "summary.md").read_text(), end="")
    print(f"{n_ok}/{len(found)} jobs ok; wrote {out / 'summary.csv'}, {out / 'summary.md'}, "
          f"{out / 'summary.png'}")
    return 0 if n_ok == len(found) else 1


if __name__ == "__main__":
    sys.exit(main())
