"""solver.mode=reachable against the full table, on every backend, and at scale."""

import numpy as np
import pytest
import zarr

from pipeline import storage
from pipeline.errors import QliftError
from pipeline.solver import solve
from tests.test_dp import CASES, _cfg


def _reachable_tables(path):
    grp = zarr.open_group(str(path), mode="r")["reachable"]
    layers = zarr.open_group(str(path), mode="r").attrs["layers"]
    states = [grp[f"states_{t}"][:].astype(np.int64) for t in range(layers + 1)]
    values = [grp[f"value_{t}"][:] for t in range(layers + 1)]
    policies = [grp[f"policy_{t}"][:] for t in range(layers)]
    return states, values, policies


def _check_against_full(full, reach):
    root = storage.open_tables(full["tables"])
    v_full, p_full = root["value"][:], root["policy"][:]
    states, values, policies = _reachable_tables(reach["tables"])
    assert reach["quantized_value"] == full["quantized_value"]
    assert reach["actions"] == full["actions"]
    assert reach["true_cost"] == full["true_cost"]
    return v_full, p_full, states, values, policies


def _mult(full_res, cfg):
    from pipeline import problem, quantize

    prob = problem.build(cfg)
    q = quantize.build(prob, cfg["quant"]["k"], cfg["quant"]["m"])
    return q.arrays["mult"]


@pytest.mark.parametrize("case", CASES[::2])
def test_reachable_equals_full(cfg_factory, tmp_path, case):
    cfg = _cfg(cfg_factory, *case)
    cfg["model"]["layers"] = 3
    full = solve(cfg, run_dir=tmp_path / "full")
    reach = solve({**cfg, "solver": {**cfg["solver"], "mode": "reachable"}},
                  run_dir=tmp_path / "reach")
    v_full, p_full, states, values, policies = _check_against_full(full, reach)
    mult = _mult(full, cfg)
    assert reach["reachable_states"][0] == 1
    assert reach["reachable_states"] == [len(s) for s in states]
    for t, st in enumerate(states):
        idx = st @ mult
        assert len(np.unique(idx)) == len(idx)  # deduplicated
        np.testing.assert_array_equal(values[t], v_full[t][idx])
        if t < len(policies):
            np.testing.assert_array_equal(policies[t], p_full[t][idx])


def test_reachable_on_ray_partitions_by_hash_and_agrees(ray_session, cfg_factory, tmp_path):
    cfg = cfg_factory(data={"n": 11, "seed": 2}, model={"layers": 3}, quant={"k": 7, "m": 3},
                      solver={"backend": "local", "mode": "reachable"})
    local = solve(cfg, run_dir=tmp_path / "local")
    on_ray = solve({**cfg, "solver": {**cfg["solver"], "backend": "ray"}, "ray": {"workers": 2}},
                   run_dir=tmp_path / "ray")
    assert on_ray["workers"] == 2
    for key in ("quantized_value", "actions", "true_cost", "test_cost", "reachable_states"):
        assert on_ray[key] == local[key], key
    # the same reachable sets (in each backend's own deterministic order)
    a, b = _reachable_tables(local["tables"]), _reachable_tables(on_ray["tables"])
    for t in range(4):
        order_a = np.lexsort(a[0][t].T[::-1])
        order_b = np.lexsort(b[0][t].T[::-1])
        np.testing.assert_array_equal(a[0][t][order_a], b[0][t][order_b])
        np.testing.assert_array_equal(a[1][t][order_a], b[1][t][order_b])


def test_150_sequences_beyond_any_full_table(cfg_factory, tmp_path):
    """150 sequences of 4 tokens under mask=sequence: ~10^572 measures, 27 actions, 3 layers."""
    cfg = cfg_factory(
        data={"source": "sequences", "n_seq": 150, "length": 4, "n_test_seq": 50, "seed": 0,
              "n": None, "n_test": None},
        model={"layers": 3, "pe": "onehot", "mask": "sequence", "fixed": {"W[0,0]": 0.25},
               "free": {"M[0,0]": [0.0, 2.0, 4.0], "V[0,0]": [0.0, 0.5, 1.0],
                        "b[0]": [-0.2, 0.0, 0.2]}},
        loss={"kind": "logistic", "w": [4.0], "c0": 0.0, "lam": 0.001},
        quant={"k": 9, "m": 1})
    with pytest.raises(QliftError, match=r"about 10\^572 states.*solver.mode=reachable"):
        solve(cfg, run_dir=tmp_path / "full")
    res = solve({**cfg, "solver": {**cfg["solver"], "mode": "reachable"}}, run_dir=tmp_path / "r")
    assert res["n_classes"] == 600 and res["n_states"] is None and res["n_states_log10"] >= 572
    sizes = res["reachable_states"]
    assert sizes[0] == 1 and all(1 <= n <= 27 ** t for t, n in enumerate(sizes))
    states, values, _ = _reachable_tables(res["tables"])
    assert states[3].shape == (sizes[3], 600)
    assert res["quantized_value"] == values[0][0]
    # Bellman along the rolled-out path: V_t(mu_t) = c(a_t) + V_{t+1}(mu_{t+1})
    from pipeline import problem

    stage = problem.build(cfg).stage
    for t, a in enumerate(res["actions"]):
        here, there = res["states"][t], res["states"][t + 1]
        assert values[t][here] == stage[a] + values[t + 1][there]
    assert np.isfinite(res["true_cost"]) and np.isfinite(res["test_cost"])


def test_reachable_store_cannot_be_reused(cfg_factory, tmp_path):
    cfg = cfg_factory(solver={"backend": "local", "mode": "reachable"})
    res = solve(cfg, run_dir=tmp_path / "r")
    with pytest.raises(QliftError, match=r"reuse needs a full table"):
        solve({**cfg, "tables": res["tables"], "solver": {"backend": "local"}},
              run_dir=tmp_path / "again")
