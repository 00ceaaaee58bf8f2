import copy

import pytest


def make_cfg(**sections):
    """A small valid plain-dict config; ``sections`` update it one level deep."""
    cfg = {
        "data": {"source": "two_blobs", "path": None, "n": 6, "n_test": 6, "d": 1, "seed": 1},
        "model": {"layers": 2, "box": [-1.0, 1.0], "pe": "none", "d_e": None, "positions": None,
                  "mask": "none", "fixed": {},
                  "free": {"M[0,0]": [0.0, 1.7], "V[0,0]": [-0.3, 0.6], "b[0]": [-0.21, 0.13]}},
        "loss": {"kind": "target", "targets": [[-0.8], [0.7]], "w": None, "c0": 0.0,
                 "lam": 0.01},
        "quant": {"k": 5, "m": 2},
        "solver": {"backend": "local", "chunk_states": 64},
    }
    cfg = copy.deepcopy(cfg)
    for key, upd in sections.items():
        if isinstance(upd, dict) and key in cfg and not key.startswith("_"):
            cfg[key].update(upd)
        else:
            cfg[key] = upd
    return cfg


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (2 CPUs), shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real Slurm to submit to: the one SLURM_CONF names, else one started here.

    Starting needs Debian's slurm-wlm and munge (``slurm/local_cluster.sh
    install``, which .ci/run runs); without them the Slurm tests skip. Daemons
    started here are stopped by their pids at the end of the session.
    """
    import os
    import shutil
    import subprocess

    if os.environ.get("SLURM_CONF"):
        ok = subprocess.run(["sinfo", "-h"], capture_output=True, text=True)
        if ok.returncode == 0:
            yield dict(os.environ)
            return
    if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "munged", "sbatch")):
        pytest.skip("no Slurm here: install it with 'slurm/local_cluster.sh install' "
                    "(Debian's slurm-wlm and munge) or point SLURM_CONF at a cluster")
    state = tmp_path_factory.mktemp("slurm")
    script = str(ROOT / "slurm" / "local_cluster.sh")
    up = subprocess.run([script, "start", str(state)], capture_output=True, text=True)
    try:
        if up.returncode != 0:
            pytest.skip(f"could not start a local Slurm: {up.stderr.strip()[-300:]}")
        yield {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
    finally:
        subprocess.run([script, "stop", str(state)], capture_output=True)
