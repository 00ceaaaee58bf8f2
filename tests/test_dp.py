"""Backward induction against exhaustive search over all |A|^T action sequences."""

import numpy as np
import pytest

from pipeline import problem, quantize, storage
from pipeline.solver import solve
from tests.reference import QuantizedReference, true_cost_loop

CASES = [
    ("none", "none", "target"), ("none", "sequence", "zero_one"), ("none", "causal", "logistic"),
    ("onehot", "none", "logistic"), ("onehot", "sequence", "target"),
    ("onehot", "causal", "zero_one"), ("sinusoidal", "none", "zero_one"),
    ("sinusoidal", "sequence", "logistic"), ("sinusoidal", "causal", "target"),
]


def _cfg(cfg_factory, pe, mask, kind):
    free = {"M[0,0]": [0.0, 2.3], "V[0,0]": [-0.4, 0.9], "b[0]": [-0.27, 0.11, 0.31]}
    if pe != "none":
        free["M[0,1]"] = [-1.1, 1.4]
    return cfg_factory(
        data={"source": "sequences", "n_seq": 2, "length": 2, "n_test_seq": 2, "seed": 4,
              "n": None, "n_test": None},
        model={"pe": pe, "d_e": 2 if pe == "sinusoidal" else None, "mask": mask,
               "free": free, "layers": 2, "fixed": {"W[0,0]": 0.15}},
        loss={"kind": kind, "w": [2.0], "c0": 0.1, "targets": [[-0.6], [0.5]]},
        quant={"k": 4, "m": None})


@pytest.mark.parametrize("pe,mask,kind", CASES)
def test_dp_value_equals_exhaustive_search(cfg_factory, tmp_path, pe, mask, kind):
    cfg = _cfg(cfg_factory, pe, mask, kind)
    res = solve(cfg, run_dir=tmp_path)
    prob = problem.build(cfg)
    q = quantize.build(prob, 4, None)
    ref = QuantizedReference(prob, q)
    best, _ = ref.exhaustive(q.mu0, prob.layers)
    assert res["mu0"] == q.mu0
    assert res["quantized_value"] == pytest.approx(best, abs=1e-12)
    # the rolled-out weights attain the optimum on the quantized system
    assert ref.sequence_cost(q.mu0, res["actions"]) == pytest.approx(best, abs=1e-12)
    # and their true cost is J on the unquantized data
    assert res["true_cost"] == pytest.approx(true_cost_loop(prob, res["actions"], prob.train),
                                             abs=1e-12)
    assert res["test_cost"] == pytest.approx(true_cost_loop(prob, res["actions"], prob.test),
                                             abs=1e-12)


def test_dp_with_measure_quantization_equals_exhaustive(cfg_factory, tmp_path):
    cfg = cfg_factory(data={"n": 9, "seed": 5}, model={"layers": 3}, quant={"k": 5, "m": 2})
    res = solve(cfg, run_dir=tmp_path)
    prob = problem.build(cfg)
    q = quantize.build(prob, 5, 2)
    ref = QuantizedReference(prob, q)
    best, _ = ref.exhaustive(q.mu0, 3)
    assert res["n_states"] == 15 * 15 and res["n_actions"] == 8
    assert res["quantized_value"] == pytest.approx(best, abs=1e-12)
    assert ref.sequence_cost(q.mu0, res["actions"]) == pytest.approx(best, abs=1e-12)


def test_tables_satisfy_bellman_and_ties_go_to_lowest_action(cfg_factory, tmp_path):
    # duplicated grid values make exact ties between actions
    cfg = cfg_factory(model={"free": {"b[0]": [0.2, 0.2, -0.3], "V[0,0]": [0.5, 0.5]}},
                      loss={"lam": 0.0}, quant={"k": 5, "m": 2})
    res = solve(cfg, run_dir=tmp_path)
    root = storage.open_tables(res["tables"])
    value, policy = root["value"][:], root["policy"][:]
    prob = problem.build(cfg)
    q = quantize.build(prob, 5, 2)
    states = np.arange(q.n_states, dtype=np.int64)
    nxt = quantize.transition(q.arrays, states, np.empty((q.n_states, prob.n_actions), np.int64))
    np.testing.assert_array_equal(value[-1], quantize.terminal(q.arrays, states,
                                                               np.empty(q.n_states)))
    for t in range(prob.layers):
        q_sa = prob.stage[None, :] + value[t + 1][nxt]
        np.testing.assert_array_equal(value[t], q_sa.min(axis=1))
        np.testing.assert_array_equal(policy[t], np.argmin(q_sa, axis=1))  # first minimiser
    # actions 0-3 are one weight (b=0.2, V=0.5), 4-5 another: only 0 and 4 may be chosen
    assert set(np.unique(policy)) <= {0, 4}
    assert root.attrs["complete"] is True
    assert root.attrs["config"]["quant"] == {"k": 5, "m": 2}
    assert len(root.attrs["config_hash"]) == 64


@pytest.mark.parametrize("case", CASES[:6:2])
def test_float32_values_change_nothing_that_matters(cfg_factory, tmp_path, case):
    """float32 value tables: same optimal cost to float32 rounding, same rolled-out cost."""
    cfg = _cfg(cfg_factory, *case)
    res64 = solve(cfg, run_dir=tmp_path / "f64")
    cfg32 = {**cfg, "solver": {**cfg["solver"], "value_dtype": "float32"}}
    res32 = solve(cfg32, run_dir=tmp_path / "f32")
    v64 = storage.open_tables(res64["tables"])["value"][:]
    root32 = storage.open_tables(res32["tables"])
    assert root32["value"].dtype == np.float32
    np.testing.assert_allclose(root32["value"][:], v64, rtol=0, atol=1e-6)
    assert abs(res32["quantized_value"] - res64["quantized_value"]) < 1e-6
    prob = problem.build(cfg)
    ref = QuantizedReference(prob, quantize.build(prob, 4, None))
    # the float32 policy's weights attain the float64 optimum on the quantized system
    assert ref.sequence_cost(res32["mu0"], res32["actions"]) == pytest.approx(
        res64["quantized_value"], abs=1e-6)
