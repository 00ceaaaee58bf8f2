"""``python -m pipeline``: the Hydra entry point over :func:`pipeline.solver.solve`."""

import os
import sys
from pathlib import Path

import hydra

from pipeline.errors import QliftError, RunFailed

CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg):
    from pipeline.solver import solve

    try:
        out = solve(cfg)
        return out.get("quantized_value")
    except (QliftError, RunFailed) as exc:
        if os.environ.get("SUBMITIT_EXECUTOR"):
            raise  # submitit records it, and Hydra reports the failed job to the sweep
        kind, status = ("error", 2) if isinstance(exc, QliftError) else ("run failed", 1)
        print(f"qlift: {kind}: {exc}", file=sys.stderr)
        sys.exit(status)


if __name__ == "__main__":
    main()
