import numpy as np
import pytest

from pipeline import problem, true_system
from tests.reference import layer_loop, true_cost_loop


@pytest.mark.parametrize("pe", ["none", "onehot", "sinusoidal"])
@pytest.mark.parametrize("mask", ["none", "sequence", "causal"])
def test_layer_equals_direct_particle_loop(pe, mask):
    rng = np.random.default_rng(3)
    n, d, n_pos = 11, 2, 3
    d_e = {"none": 0, "onehot": n_pos, "sinusoidal": 4}[pe]
    dd = d + d_e
    x = rng.uniform(-1, 1, (n, d))
    pos = rng.integers(0, n_pos, n)
    seq = rng.integers(0, 3, n)
    mass = rng.uniform(0.5, 1.5, n)
    mass /= mass.sum()
    theta = {"M": rng.normal(size=(dd, dd)) * 2, "V": rng.normal(size=(d, d)),
             "W": rng.normal(size=(d, d)) * 0.3, "b": rng.normal(size=d) * 0.2}
    enc = problem.positional_encoding(pe, d_e, pos)
    got = true_system.layer(x, enc, seq, pos, mass, theta, -1.0, 1.0, mask)
    want = np.array(layer_loop(list(x), list(pos), list(seq), list(mass), theta, -1.0, 1.0,
                               mask, pe, d_e))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.all(got >= -1.0) and np.all(got <= 1.0)


@pytest.mark.parametrize("kind", ["target", "zero_one", "logistic"])
def test_true_cost_equals_loop(cfg_factory, kind):
    loss = {"kind": kind, "w": [1.3], "c0": 0.05, "targets": [[-0.8], [0.7]]}
    cfg = cfg_factory(loss=loss, data={"n": 9}, model={"layers": 3})
    prob = problem.build(cfg)
    acts = [0, prob.n_actions - 1, 3]
    got = true_system.true_cost(prob, acts, prob.train)
    assert got == pytest.approx(true_cost_loop(prob, acts, prob.train), abs=1e-12)


def test_sinusoidal_encoding_matches_spec():
    e = problem.positional_encoding("sinusoidal", 4, np.array([0, 3]))
    np.testing.assert_allclose(e[0], [0, 1, 0, 1])
    np.testing.assert_allclose(e[1], [np.sin(3), np.cos(3), np.sin(3 / 100), np.cos(3 / 100)])
