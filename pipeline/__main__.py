"""``python -m pipeline``: the Hydra entry point over :func:`pipeline.solver.solve`."""

import sys
from pathlib import Path

import hydra

from pipeline.errors import QliftError, RunFailed

CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def main(cfg):
    from pipeline.solver import solve

    try:
        return solve(cfg)["quantized_value"]
    except QliftError as exc:
        print(f"qlift: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as exc:
        print(f"qlift: run failed: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
