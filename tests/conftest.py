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
