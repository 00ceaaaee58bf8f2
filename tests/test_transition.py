import numpy as np
import pytest

from pipeline import problem, quantize
from tests.reference import QuantizedReference


def _random_problem(cfg_factory, pe, mask, seed=0):
    rng = np.random.default_rng(seed)
    d_e = {"none": None, "onehot": None, "sinusoidal": 2}[pe]
    dd = 2 + {"none": 0, "onehot": 2, "sinusoidal": 2}[pe]
    names = ["M[0,0]", f"M[1,{dd - 1}]", "V[0,1]", "V[1,1]", "W[1,0]", "b[0]"]
    free = {n: [float(v) for v in rng.uniform(-2, 2, 2)] for n in names}
    cfg = cfg_factory(
        data={"source": "sequences", "n_seq": 2, "length": 2, "n_test_seq": 0, "d": 2,
              "seed": seed, "n": None, "n_test": None},
        model={"pe": pe, "d_e": d_e, "mask": mask, "free": free,
               "fixed": {"M[1,0]": 0.7, "W[0,0]": 0.2}},
        loss={"kind": "target", "targets": [[-0.5, 0.1], [0.4, -0.2]]},
        quant={"k": 3, "m": 1})
    prob = problem.build(cfg)
    return prob, quantize.build(prob, 3, 1)


@pytest.mark.parametrize("pe,mask", [("none", "none"), ("onehot", "sequence"),
                                     ("sinusoidal", "causal"), ("sinusoidal", "none")])
def test_numba_transition_equals_numpy_reference(cfg_factory, pe, mask):
    prob, q = _random_problem(cfg_factory, pe, mask)
    ref = QuantizedReference(prob, q)
    rng = np.random.default_rng(1)
    states = rng.integers(0, q.n_states, 120).astype(np.int64)
    got = quantize.transition(q.arrays, states, np.empty((120, prob.n_actions), np.int64))
    want = np.array([[ref.step(int(s), a) for a in range(prob.n_actions)] for s in states])
    np.testing.assert_array_equal(got, want)
    # the int32 table used by the solver holds the same indices
    got32 = quantize.transition(q.arrays, states, np.empty((120, prob.n_actions), np.int32))
    np.testing.assert_array_equal(got32, want)


def test_terminal_cost_equals_reference(cfg_factory):
    cfg = cfg_factory(data={"n": 7}, quant={"k": 4, "m": 2})
    prob = problem.build(cfg)
    q = quantize.build(prob, 4, 2)
    ref = QuantizedReference(prob, q)
    states = np.arange(q.n_states, dtype=np.int64)
    got = quantize.terminal(q.arrays, states, np.empty(q.n_states))
    want = np.array([ref.terminal(int(s)) for s in states])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


def test_transition_is_label_blind(cfg_factory):
    """Permuting the labels changes the terminal cost but no next state."""
    prob, q = _random_problem(cfg_factory, "onehot", "sequence")
    flipped = {**prob.train, "label": 1 - prob.train["label"]}
    prob2 = problem.Problem(**{**prob.__dict__, "train": flipped})
    q2 = quantize.build(prob2, 3, 1)
    np.testing.assert_array_equal(q.classes[:, :2], q2.classes[:, :2])
    assert not np.array_equal(q.classes[:, 2], q2.classes[:, 2])
    states = np.arange(q.n_states, dtype=np.int64)
    a = quantize.transition(q.arrays, states, np.empty((q.n_states, prob.n_actions), np.int64))
    b = quantize.transition(q2.arrays, states, np.empty((q.n_states, prob.n_actions), np.int64))
    np.testing.assert_array_equal(a, b)
    ta = quantize.terminal(q.arrays, states, np.empty(q.n_states))
    tb = quantize.terminal(q2.arrays, states, np.empty(q.n_states))
    assert not np.allclose(ta, tb)


def test_closure_budgets_and_mass_preserved(cfg_factory):
    cfg = cfg_factory(data={"n": 9}, quant={"k": 5, "m": 3})
    prob = problem.build(cfg)
    q = quantize.build(prob, 5, 3)
    budgets = q.arrays["cls_m"]
    assert np.sum(budgets * q.arrays["cls_mass"]) == pytest.approx(1.0, abs=1e-15)
    states = np.arange(q.n_states, dtype=np.int64)
    nxt = quantize.transition(q.arrays, states, np.empty((q.n_states, prob.n_actions), np.int64))
    assert nxt.min() >= 0 and nxt.max() < q.n_states
    ref = QuantizedReference(prob, q)
    for s in np.random.default_rng(0).choice(nxt.ravel(), 50):
        parts = ref.decode(int(s))
        assert [len(p) for p in parts] == list(budgets)
        np.testing.assert_array_equal(q.cells(int(s)), np.concatenate(parts))


@pytest.mark.parametrize("hist,m,want", [([3, 3, 1], 2, [1, 1, 0]), ([1, 1, 1], 2, [1, 1, 0]),
                                         ([2, 0, 2], 1, [1, 0, 0]), ([5, 0, 1, 4], 4, [2, 0, 0, 2]),
                                         ([1, 2, 3], 6, [1, 2, 3])])
def test_largest_remainder(hist, m, want):
    got = quantize.largest_remainder(np.array(hist), m)
    assert list(got) == want and got.sum() == m


def test_initial_measure_follows_largest_remainder(cfg_factory):
    cfg = cfg_factory(data={"source": "file", "path": None})
    x = np.array([[-0.9], [-0.45], [-0.4], [0.1], [0.12], [0.9], [0.95]])
    label = np.array([0, 0, 0, 1, 1, 1, 1])
    from pipeline import data as data_mod

    ds = data_mod.check({"x": x, "label": label})
    prob = problem.build({**cfg, "data": {"source": "two_blobs", "n": 2, "n_test": 0}})
    prob = problem.Problem(**{**prob.__dict__, "train": ds["train"], "test": None})
    q = quantize.build(prob, 5, 2)  # cells at -1, -0.5, 0, 0.5, 1
    # class 0: cells 0,1,1 -> q = 2/3, 4/3 -> floors 0,1; one more to cell 0 (2/3 > 1/3)
    # class 1: cells 2,2,4,4 -> q = 1, 1 -> one particle each
    assert list(q.mu0_cells) == [0, 1, 2, 4]


def _kernel_variants(q):
    """The fast kernel with field tables, without them, and the exact kernel."""
    no_fields = {**q.arrays, "F": np.zeros(0), "F_off": np.full(1, -1, np.int64)}
    return {"fields": (quantize.transition, q.arrays), "no_fields": (quantize.transition, no_fields),
            "exact": (quantize.transition_exact, q.arrays)}


@pytest.mark.parametrize("pe,mask", [("onehot", "causal"), ("sinusoidal", "sequence"),
                                     ("none", "none")])
def test_fast_kernel_paths_agree_with_reference(cfg_factory, pe, mask):
    prob, q = _random_problem(cfg_factory, pe, mask, seed=3)
    assert q.arrays["F_off"][0] >= 0  # small problem: field tables are built
    ref = QuantizedReference(prob, q)
    states = np.random.default_rng(5).integers(0, q.n_states, 60).astype(np.int64)
    want = np.array([[ref.step(int(s), a) for a in range(prob.n_actions)] for s in states])
    for name, (fn, arrays) in _kernel_variants(q).items():
        got = fn(arrays, states, np.empty((60, prob.n_actions), np.int64))
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_underflowing_scores_fall_back_to_the_exact_max(cfg_factory):
    """Scores far below the grid row max underflow exp(): the exact path must take over."""
    cfg = cfg_factory(data={"n": 8, "seed": 3}, quant={"k": 5, "m": 2},
                      model={"box": [-1.0, 1.0],
                             "free": {"M[0,0]": [900.0, -900.0], "V[0,0]": [0.73],
                                      "b[0]": [-0.13, 0.21]}})
    prob = problem.build(cfg)
    q = quantize.build(prob, 5, 2)
    ref = QuantizedReference(prob, q)
    states = np.arange(q.n_states, dtype=np.int64)
    want = np.array([[ref.step(int(s), a) for a in range(prob.n_actions)] for s in states])
    got = quantize.transition(q.arrays, states, np.empty((q.n_states, prob.n_actions), np.int64))
    np.testing.assert_array_equal(got, want)
    # the row-max-shifted table really underflows here, so the fallback was exercised
    assert (q.arrays["E"] == 0).any()


def test_rank_vector_kernel_matches_index_kernel(cfg_factory):
    prob, q = _random_problem(cfg_factory, "onehot", "causal", seed=4)
    states = np.arange(0, q.n_states, 7, dtype=np.int64)
    mult, counts = q.arrays["mult"], q.arrays["counts"]
    ranks = (states[:, None] // mult[None, :]) % counts[None, :]
    out = quantize.transition_ranks(q.arrays, ranks, np.empty((len(states), prob.n_actions,
                                                               len(mult)), np.int64))
    idx = quantize.transition(q.arrays, states, np.empty((len(states), prob.n_actions), np.int64))
    np.testing.assert_array_equal((out * mult).sum(axis=2), idx)
