"""The experiments of conf/experiment/, on tiny settings, and the report page."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline import experiments, paper_report, problem, quantize
from pipeline.solver import solve
from pipeline.true_system import true_cost


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=900)


def test_exhaustive_true_equals_brute_force(cfg_factory):
    prob = problem.build(cfg_factory(data={"n": 10}, model={"layers": 2}))
    best, seq = experiments.exhaustive_true(prob, prob.train)
    brute = min(true_cost(prob, s, prob.train)
                for s in itertools.product(range(prob.n_actions), repeat=2))
    assert best == pytest.approx(brute, abs=1e-12)
    assert true_cost(prob, seq, prob.train) == pytest.approx(best, abs=1e-12)


@pytest.fixture(scope="module")
def refinement_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("refinement")
    proc = run_cli("experiment=refinement", "exp.resolutions=[[3,1,2],[5,2,2],[9,null,3]]",
                   f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_refinement_experiment(refinement_dir):
    info = json.loads((refinement_dir / "experiment.json").read_text())
    assert info["name"] == "refinement" and len(info["gaps"]) == 3
    import csv

    with open(refinement_dir / "refinement.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and len((refinement_dir / "refinement.md").read_text().splitlines()) == 5
    for row in rows:
        dp, best, gap = (float(row[c]) for c in ("dp_true_cost", "best_true_cost", "gap"))
        # the exhaustive optimum over the same grid is a lower bound for the DP weights
        assert best <= dp + 1e-12 and gap == pytest.approx(dp - best, abs=1e-12)
    assert (refinement_dir / "refinement.png").read_bytes()[:4] == b"\x89PNG"
    assert (refinement_dir / "refinement.csv").exists()


def test_stability_experiment(cfg_factory, tmp_path):
    cfg = cfg_factory(data={"n": 10}, quant={"k": 5, "m": 2},
                      exp={"name": "stability", "pairs": 60, "noise": [0.0, 0.3],
                           "noise_repeats": 2})
    info = solve(cfg, run_dir=tmp_path)
    assert info["noise"][0]["mean_abs_value_change"] == 0.0  # no noise, same measure
    rows = (tmp_path / "stability.csv").read_text().splitlines()[1:]
    mod = [float(r.split(",")[1]) for r in rows]
    assert mod == sorted(mod)  # a modulus of continuity never decreases
    prob = problem.build(cfg)
    q = quantize.build(prob, 5, 2)
    a, b = q.cells(3), q.cells(100)
    coords = q.arrays["coords"]
    assert experiments._w1(a, a, q, coords) == 0.0
    assert experiments._w1(a, b, q, coords) == pytest.approx(experiments._w1(b, a, q, coords))


def test_consistency_experiment_reuses_one_table(cfg_factory, tmp_path):
    cfg = cfg_factory(quant={"k": 5, "m": 2},
                      exp={"name": "consistency", "sizes": [4, 8, 16], "n_test": 50})
    info = solve(cfg, run_dir=tmp_path)
    assert info["name"] == "consistency"
    for n in (4, 8, 16):
        res = json.loads((tmp_path / "runs" / f"n{n}" / "result.json").read_text())
        assert res["reused_tables"] is True
        assert res["tables"] == str(tmp_path / "runs" / "table" / "tables.zarr")


def test_dp_vs_adam_and_real_data(cfg_factory, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    cfg = cfg_factory(data={"n": 12}, exp={
        "name": "dp_vs_adam", "starts": 3, "steps": 15, "lr": 0.05,
        "cases": [{"name": "target", "loss": {"kind": "target", "targets": [[-0.8], [0.7]]}},
                  {"name": "zero_one", "loss": {"kind": "zero_one", "w": [1.0], "c0": 0.0}}]})
    info = solve(cfg, run_dir=tmp_path / "dva")
    for row in info["rows"]:
        assert 0.0 <= row["adam_beaten_by_dp"] <= 1.0 and row["starts"] == 3
        assert row["adam_best"] <= row["adam_median"] <= row["adam_worst"]
        assert row["dp_init_polished"] <= row["dp_true_cost"] + 1e-12  # polish never worse
    real = cfg_factory(
        data={"source": "iris_sequences", "classes": [1, 2], "test_fraction": 0.3, "seed": 0,
              "n": None, "n_test": None, "d": None},
        model={"layers": 1, "pe": "onehot", "mask": "sequence", "box": [-1.5, 1.5],
               "free": {"V[0,0]": [0.0, 1.0], "b[0]": [0.0, 0.1]}},
        loss={"kind": "logistic", "w": [4.0], "c0": 0.0},
        quant={"k": 9, "m": 1},
        exp={"name": "real_data", "starts": 2, "steps": 10, "lr": 0.05})
    info = solve(real, run_dir=tmp_path / "real")
    methods = {r["method"] for r in info["rows"]}
    assert len(methods) == 2 and len(info["rows"]) == 4
    for r in info["rows"]:
        assert 0.0 <= r["token_accuracy"] <= 1.0 and 0.0 <= r["sequence_accuracy"] <= 1.0
    res = json.loads((tmp_path / "real" / "runs" / "dp" / "result.json").read_text())
    assert res["mode"] == "reachable" and res["n_classes"] == 70 * 4


def test_report_page_gathers_experiments(refinement_dir, cfg_factory, tmp_path):
    cfg = cfg_factory(quant={"k": 5, "m": 2},
                      exp={"name": "consistency", "sizes": [4, 8], "n_test": 20})
    solve(cfg, run_dir=tmp_path / "consistency")
    out = tmp_path / "REPORT.md"
    assert paper_report.main([str(refinement_dir), str(tmp_path / "consistency"),
                              "--out", str(out)]) == 0
    page = out.read_text()
    assert "## 1. Refinement" in page and "## 4. Consistency" in page
    for line in page.splitlines():
        if line.startswith("!["):
            assert (out.parent / line.split("](")[1].rstrip(")")).exists()
    assert paper_report.main([str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_unknown_experiment_is_refused(cfg_factory, tmp_path):
    from pipeline.errors import QliftError

    with pytest.raises(QliftError, match=r"exp.name='nope' is unknown; valid experiments are"):
        solve(cfg_factory(exp={"name": "nope"}), run_dir=tmp_path)


def test_every_run_exports_a_torch_module(cfg_factory, tmp_path):
    torch = pytest.importorskip("torch")
    res = solve(cfg_factory(), run_dir=tmp_path)
    module = torch.jit.load(res["torch_module"])
    prob = problem.build(cfg_factory())
    sp = prob.train
    with torch.no_grad():
        x = module(torch.tensor(sp["x"]), torch.tensor(sp["pos"]), torch.tensor(sp["seq"]))
    from pipeline.true_system import final_state

    np.testing.assert_allclose(x.numpy(), final_state(prob, res["actions"], sp), atol=1e-12)


def test_export_polish_writes_a_module_no_worse_than_dp(cfg_factory, tmp_path):
    torch = pytest.importorskip("torch")
    cfg = cfg_factory(export={"torch": True, "polish": True, "polish_steps": 20})
    res = solve(cfg, run_dir=tmp_path)
    assert res["polished"]["true_cost"] <= res["true_cost"] + 1e-12
    assert torch.jit.load(res["polished"]["torch_module"]) is not None


def test_bad_export_setting_is_refused_before_any_work(cfg_factory, tmp_path):
    from pipeline.errors import QliftError

    with pytest.raises(QliftError, match=r"export.torch='maybe' must be auto, true or false"):
        solve(cfg_factory(export={"torch": "maybe"}), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()
