"""The torch true system against the numpy one; export, Adam baseline and polishing."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline import problem, true_system  # noqa: E402
from pipeline import torch_model as tm  # noqa: E402
from tests.conftest import make_cfg  # noqa: E402

# every pe x mask once, the loss kind cycling so each loss meets each pe and each mask
CASES = [
    ("none", "none", "target"), ("none", "sequence", "zero_one"), ("none", "causal", "logistic"),
    ("onehot", "none", "logistic"), ("onehot", "sequence", "target"),
    ("onehot", "causal", "zero_one"), ("sinusoidal", "none", "zero_one"),
    ("sinusoidal", "sequence", "logistic"), ("sinusoidal", "causal", "target"),
]


def _cfg(pe, mask, kind, d=1, layers=2, box=(-1.0, 1.0), lam=0.01):
    free = {"M[0,0]": [0.0, 2.3], "V[0,0]": [-0.4, 0.9], "b[0]": [-0.27, 0.11, 0.31]}
    fixed = {"W[0,0]": 0.15}
    if pe != "none":
        free[f"M[0,{d}]"] = [-1.1, 1.4]  # query coordinate x_0 against an encoding coordinate
        fixed[f"M[{d},0]"] = 0.7
    if d > 1:
        free["W[1,0]"] = [-0.5, 0.5]
        fixed["V[1,1]"] = 0.4
        fixed["M[1,0]"] = -0.9
    return make_cfg(
        data={"source": "sequences", "n_seq": 3, "length": 3, "n_test_seq": 2, "seed": 4,
              "d": d, "n": None, "n_test": None},
        model={"pe": pe, "d_e": 4 if pe == "sinusoidal" else None, "mask": mask,
               "free": free, "layers": layers, "fixed": fixed, "box": list(box)},
        loss={"kind": kind, "w": [2.0] + [-0.5] * (d - 1), "c0": 0.1,
              "targets": [[-0.6] * d, [0.5] * d], "lam": lam})


def _np_thetas(prob, fv):
    """Full numpy weights for free values (T, n_free), built independently of torch_model."""
    dd = prob.d + prob.d_e
    out = []
    for row in np.asarray(fv):
        th = {k: v.copy() for k, v in prob.base.items()}
        for name, val in zip(prob.free_names, row):
            kind, ij = problem.parse_param(name, prob.d, dd, "test")
            th[kind][ij] = val
        out.append(th)
    return out


def _np_forward(prob, fv, split):
    x = split["x"].copy()
    n = x.shape[0]
    pe = prob.encode(split["pos"])
    for th in _np_thetas(prob, fv):
        x = true_system.layer(x, pe, split["seq"], split["pos"], np.full(n, 1.0 / n), th,
                              prob.lo, prob.hi, prob.mask)
    return x


def _np_cost(prob, fv, split):
    x = _np_forward(prob, fv, split)
    stage = prob.lam * float(np.sum(np.asarray(fv) ** 2))
    return stage + float(np.mean(true_system.pointwise_loss(prob, x, split["label"])))


def _random_free(prob, rng, widen=1.5):
    """Off-grid free values, partly outside the grid range."""
    lo = np.array([g.min() for g in prob.free_grids])
    hi = np.array([g.max() for g in prob.free_grids])
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * widen
    return mid + half * rng.uniform(-1, 1, (prob.layers, len(prob.free_names)))


@pytest.mark.parametrize("i,case", list(enumerate(CASES)))
def test_forward_and_cost_match_numpy(i, case):
    d = 2 if i % 2 else 1
    prob = problem.build(_cfg(*case, d=d))
    rng = np.random.default_rng(100 + i)
    # grid weights from DP action indices, checked against true_system.true_cost itself
    actions = [int(a) for a in rng.integers(0, prob.n_actions, prob.layers)]
    fv_grid = tm.free_values_of_actions(prob, actions)
    assert fv_grid.shape == (prob.layers, len(prob.free_names))
    for name, j in zip(prob.free_names, range(fv_grid.shape[1])):
        assert fv_grid[0, j] == prob.theta(actions[0])[name]
    for split in (prob.train, prob.test):
        ref = true_system.true_cost(prob, actions, split)
        got = float(tm.cost_true(prob, fv_grid, split))
        assert abs(got - ref) <= 1e-10
    # and off-grid values, against the numpy layer map
    for trial in range(3):
        fv = _random_free(prob, rng)
        for name in ("train", "test"):
            split = getattr(prob, name)
            x_np = _np_forward(prob, fv, split)
            x_t = tm.forward_true(prob, tm.full_weights(prob, torch.tensor(fv)), name)
            assert x_t.dtype == torch.float64 and tuple(x_t.shape) == x_np.shape
            assert np.max(np.abs(x_t.numpy() - x_np)) <= 1e-10
            # the layers actually move the particles
            assert np.max(np.abs(x_np - split["x"])) > 1e-3
            c_np = _np_cost(prob, fv, split)
            assert abs(float(tm.cost_true(prob, fv, split)) - c_np) <= 1e-10
    # the mask matters: forcing another mask changes x_T (so the test can see a wrong mask)
    other = {"none": "causal", "sequence": "none", "causal": "sequence"}[prob.mask]
    x_ref = _np_forward(prob, fv, prob.train)
    prob.mask = other
    assert np.max(np.abs(tm.forward_true(prob, tm.full_weights(prob, fv), "train").numpy()
                         - x_ref)) > 1e-6


def test_surrogate_is_logistic_and_real_loss_is_zero_one():
    prob = problem.build(_cfg("onehot", "causal", "zero_one"))
    fv = _random_free(prob, np.random.default_rng(3))
    real = float(tm.cost_true(prob, fv, "train"))
    sur = float(tm.cost_true(prob, fv, "train", surrogate=True))
    x = _np_forward(prob, fv, prob.train)
    sigma = np.where(prob.train["label"] == 1, 1.0, -1.0)
    logistic = np.mean(np.logaddexp(0.0, -sigma * (x @ prob.w - prob.c0)))
    stage = prob.lam * np.sum(fv ** 2)
    assert abs(sur - (stage + logistic)) <= 1e-12
    n = prob.train["x"].shape[0]
    errors = (real - stage) * n  # a count of misclassified tokens
    assert abs(errors - round(errors)) <= 1e-9
    assert abs(sur - real) > 1e-6


def test_gradient_matches_finite_differences_and_reaches_free_entries_only():
    prob = problem.build(_cfg("sinusoidal", "causal", "target", d=2, box=(-9.0, 9.0)))
    fv0 = _random_free(prob, np.random.default_rng(7), widen=0.6)
    fv = torch.tensor(fv0, requires_grad=True)
    cost = tm.cost_true(prob, fv, "train")
    (grad,) = torch.autograd.grad(cost, fv)
    h = 1e-6
    num = np.zeros_like(fv0)
    for idx in np.ndindex(fv0.shape):
        up, dn = fv0.copy(), fv0.copy()
        up[idx] += h
        dn[idx] -= h
        num[idx] = (_np_cost(prob, up, prob.train) - _np_cost(prob, dn, prob.train)) / (2 * h)
    assert np.any(np.abs(num) > 1e-3)  # a non-trivial gradient to compare
    np.testing.assert_allclose(grad.numpy(), num, rtol=1e-5, atol=1e-8)
    # the full weights: fixed entries from base, free entries from fv
    thetas = tm.full_weights(prob, fv0)
    ref = _np_thetas(prob, fv0)
    for th, rf in zip(thetas, ref):
        for k in ("M", "V", "W", "b"):
            np.testing.assert_array_equal(th[k].detach().numpy(), rf[k])


_LOADER = textwrap.dedent("""
    import json, sys
    import torch
    out = {}
    for name in json.loads(sys.argv[1]):
        mod = torch.jit.load(name + ".pt")
        inp = torch.load(name + ".in.pt")
        torch.save(mod(inp["x"], inp["pos"], inp["seq"]), name + ".out.pt")
    print(json.dumps(sorted(m for m in sys.modules
                            if m.split(".")[0] in ("pipeline", "tests", "kernels", "numpy"))))
""")


def test_exported_module_loads_without_the_project(tmp_path):
    cases = {"a": (("none", "none", "target"), 1, "train"),
             "b": (("onehot", "sequence", "zero_one"), 2, "test"),
             "c": (("sinusoidal", "causal", "logistic"), 2, "train")}
    expect = {}
    for key, (case, d, split_name) in cases.items():
        prob = problem.build(_cfg(*case, d=d, layers=3))
        fv = _random_free(prob, np.random.default_rng(len(key) + ord(key)))
        mod = tm.export_module(prob, fv)
        assert isinstance(mod, tm.QliftTransformer) and isinstance(mod, torch.nn.Module)
        assert len(mod.layers) == prob.layers
        assert all(isinstance(lay, tm.AttentionLayer) for lay in mod.layers)
        params = dict(mod.named_parameters())
        assert len(params) == 4 * prob.layers
        assert all(p.dtype == torch.float64 for p in params.values())
        for t, th in enumerate(_np_thetas(prob, fv)):  # full weights, fixed entries included
            for k in ("M", "V", "W", "b"):
                np.testing.assert_array_equal(params[f"layers.{t}.{k}"].detach().numpy(), th[k])
        assert tuple(mod.pe_table.shape) == (prob.n_pos, prob.d_e)
        split = getattr(prob, split_name)
        inp = {k: torch.tensor(split[k]) for k in ("x", "pos", "seq")}
        ref = tm.forward_true(prob, tm.full_weights(prob, fv), split).detach()
        with torch.no_grad():
            assert torch.max(torch.abs(mod(inp["x"], inp["pos"], inp["seq"]) - ref)) <= 1e-12
        tm.save_module(mod, tmp_path / f"{key}.pt")
        torch.save(inp, tmp_path / f"{key}.in.pt")
        expect[key] = ref
    run = subprocess.run([sys.executable, "-I", "-c", _LOADER, json.dumps(sorted(cases))],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = json.loads(run.stdout.strip().splitlines()[-1])
    assert not [m for m in imported if not m.startswith("numpy")], imported
    for key, ref in expect.items():
        got = torch.load(tmp_path / f"{key}.out.pt")
        assert got.dtype == torch.float64 and got.shape == ref.shape
        assert torch.max(torch.abs(got - ref)).item() <= 1e-12


@pytest.mark.parametrize("kind", ["zero_one", "target"])
def test_adam_baseline(kind):
    prob = problem.build(_cfg("onehot", "causal", kind))
    starts = 3
    res = tm.adam_baseline(prob, starts=starts, steps=25, lr=0.05, seed=1)
    assert len(res) == starts
    lo = np.array([g.min() for g in prob.free_grids])
    hi = np.array([g.max() for g in prob.free_grids])
    for r in res:
        init, final = np.array(r["init"]), np.array(r["final"])
        assert init.shape == final.shape == (prob.layers, len(prob.free_names))
        assert np.all(init >= lo) and np.all(init <= hi)
        assert np.max(np.abs(final - init)) > 1e-3  # training moved the weights
        assert np.isfinite(r["train_cost"]) and np.isfinite(r["test_cost"])
        assert r["seconds"] >= 0
    assert len({tuple(np.ravel(r["init"])) for r in res}) == starts
    first = res[0]
    final = np.array(first["final"])
    assert abs(first["train_cost"] - float(tm.cost_true(prob, final, "train"))) <= 1e-12
    assert abs(first["train_cost"] - _np_cost(prob, final, prob.train)) <= 1e-10
    assert abs(first["test_cost"] - _np_cost(prob, final, prob.test)) <= 1e-10
    if kind == "zero_one":  # the reported cost uses the real 0-1 loss, not the surrogate
        n = prob.train["x"].shape[0]
        errors = (first["train_cost"] - prob.lam * np.sum(final ** 2)) * n
        assert abs(errors - round(errors)) <= 1e-9
    else:  # on a smooth loss, Adam lowers the cost from where it started
        assert first["train_cost"] < _np_cost(prob, np.array(first["init"]), prob.train)
    # the seed fixes the starts
    again = tm.adam_baseline(prob, starts=1, steps=1, seed=1)
    assert again[0]["init"] == res[0]["init"]


@pytest.mark.parametrize("kind,lr", [("target", 0.01), ("zero_one", 0.01), ("logistic", 2.0)])
def test_polish_never_worse_than_its_start(kind, lr):
    prob = problem.build(_cfg("sinusoidal", "sequence", kind))
    actions = [1, prob.n_actions - 2]
    init = tm.free_values_of_actions(prob, actions)
    start = true_system.true_cost(prob, actions, prob.train)
    vals, cost = tm.polish(prob, init, steps=40, lr=lr)
    assert np.asarray(vals).shape == init.shape
    assert cost <= start + 1e-12
    # the reported cost is the real cost of the returned values
    assert abs(cost - _np_cost(prob, vals, prob.train)) <= 1e-10
    if kind == "target":  # smooth loss, small step: polishing does improve
        assert cost < start - 1e-6


def test_polish_returns_the_start_when_every_step_is_worse():
    # a huge learning rate overshoots; the best point seen is then the start itself
    prob = problem.build(_cfg("none", "none", "target"))
    init = tm.free_values_of_actions(prob, [0, 0])
    start = float(tm.cost_true(prob, init, "train"))
    vals, cost = tm.polish(prob, init, steps=5, lr=50.0)
    assert cost == start
    np.testing.assert_array_equal(vals, init)
    # while the last Adam iterate is far off and worse
    last, _, _ = tm._adam(prob, init, 5, 50.0, track_best=False)
    assert float(tm.cost_true(prob, last, "train")) > start + 1.0


def test_polish_from_the_best_grid_sequence():
    # the best action sequence on the true system (what an exact DP would pick) as the start;
    # the DP solver itself is exercised in test_dp.py and is too slow to compile here
    import itertools

    prob = problem.build(_cfg("onehot", "sequence", "logistic"))
    seqs = list(itertools.product(range(prob.n_actions), repeat=prob.layers))
    costs = [true_system.true_cost(prob, a, prob.train) for a in seqs]
    best = seqs[int(np.argmin(costs))]
    init = tm.free_values_of_actions(prob, best)
    assert abs(float(tm.cost_true(prob, init, "train")) - min(costs)) <= 1e-10
    vals, cost = tm.polish(prob, init, steps=30, lr=0.01)
    assert cost <= min(costs) + 1e-12
    assert abs(cost - _np_cost(prob, vals, prob.train)) <= 1e-10


def test_zero_one_sign_of_zero_is_minus_one():
    # every particle clipped to hi = 1 with w = 2, c0 = 2: w.x - c0 is exactly 0
    cfg = _cfg("none", "sequence", "zero_one", lam=0.0)
    cfg["loss"]["c0"] = 2.0
    prob = problem.build(cfg)
    fv = np.zeros((prob.layers, len(prob.free_names)))
    fv[:, prob.free_names.index("b[0]")] = 5.0
    x = tm.forward_true(prob, tm.full_weights(prob, fv), "train")
    assert torch.all(x == 1.0)
    labels = prob.train["label"]
    expected = float(np.mean(labels == 1))  # sign(0) = -1 misclassifies label 1 only
    assert 0 < expected < 1
    assert float(tm.cost_true(prob, fv, "train")) == expected
    assert _np_cost(prob, fv, prob.train) == expected
