"""Gather the experiments' outputs into one readable page.

    python -m pipeline.paper_report [RUN_DIR ...] [--out FILE]

Each RUN_DIR is the run directory of ``python -m pipeline experiment=NAME``
(default: every folder under ``outputs/experiments`` holding an
``experiment.json``). The page (markdown, default
``outputs/experiments/REPORT.md``) has, per experiment, its sentence of
interpretation, its figure and its table.
"""

import argparse
import json
import os
import sys
from pathlib import Path

INTRO = """# qlift: the paper's claims, run

Each section is one experiment (`python -m pipeline experiment=NAME`, config
in `conf/experiment/NAME.yaml`); the sentence under each heading is computed
from that run's numbers. Costs are J of SPEC §1 on the real (unquantized)
data unless a column says otherwise.
"""


def find(dirs):
    found = []
    for d in dirs:
        d = Path(d)
        if (d / "experiment.json").exists():
            found.append(d)
        elif d.is_dir():
            found += sorted(p.parent for p in d.glob("*/experiment.json"))
    return found


def build(run_dirs, out):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [INTRO]
    infos = [(json.loads((d / "experiment.json").read_text()), d) for d in run_dirs]
    for info, d in sorted(infos, key=lambda x: x[0]["title"]):
        rel = lambda name: os.path.relpath(d / name, out.parent)  # noqa: E731
        parts.append(f"## {info['title']}\n\n{info['interpretation']}\n\n"
                     f"![{info['title']}]({rel(info['figure'])})\n\n"
                     f"{(d / info['table']).read_text()}")
        for extra in info.get("extra_tables", []):
            parts.append((d / extra).read_text())
        parts.append(f"Run directory: `{d}`\n")
    out.write_text("\n".join(parts))
    return out, len(infos)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pipeline.paper_report",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", nargs="*", default=["outputs/experiments"])
    ap.add_argument("--out", default="outputs/experiments/REPORT.md")
    args = ap.parse_args(argv)
    dirs = find(args.run_dirs)
    if not dirs:
        print(f"qlift: error: no experiment.json under {args.run_dirs}; run "
              "'python -m pipeline experiment=NAME' first", file=sys.stderr)
        return 2
    out, n = build(dirs, args.out)
    print(f"wrote {out} ({n} experiments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
