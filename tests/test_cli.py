"""``python -m pipeline`` end to end, through a subprocess."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipeline import problem, quantize, storage
from tests.reference import QuantizedReference, true_cost_loop

KEYS = {"quantized_value", "true_cost", "test_cost", "actions", "theta", "n_states",
        "n_actions", "timings", "tables"}


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


def test_default_problem_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "result.json").read_text())
    assert KEYS <= set(res)
    assert res["n_states"] >= 10**5 and res["n_states"] == 245025 and res["n_actions"] == 64
    assert len(res["actions"]) == len(res["theta"]) == 3
    assert set(res["theta"][0]) == {"M[0,0]", "V[0,0]", "b[0]"}
    assert res["tables"] == str(out / "tables.zarr")
    root = storage.open_tables(res["tables"])
    assert root["value"].shape == (4, 245025) and root["policy"].shape == (3, 245025)
    assert res["quantized_value"] == root["value"][0, res["mu0"]]
    assert [int(root["policy"][t, s]) for t, s in enumerate(res["states"][:-1])] == res["actions"]
    assert {"setup", "compile", "backup", "rollout", "evaluate"} <= set(res["timings"])
    assert "quantized value V_0(mu_0)" in proc.stdout and "layer 0: action" in proc.stdout
    # the true cost is J of the chosen weights on the real data, particle by particle
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "config.yaml"))
    prob = problem.build(cfg)
    assert res["true_cost"] == pytest.approx(true_cost_loop(prob, res["actions"], prob.train),
                                             abs=1e-12)
    assert res["test_cost"] == pytest.approx(true_cost_loop(prob, res["actions"], prob.test),
                                             abs=1e-12)
    # the finished store answers a new data set of the same class sizes without solving
    new = tmp_path / "reuse"
    proc = run_cli(f"hydra.run.dir={new}", f"tables={res['tables']}", "data.seed=5")
    assert proc.returncode == 0, proc.stderr
    again = json.loads((new / "result.json").read_text())
    assert again["reused_tables"] is True and not (new / "tables.zarr").exists()
    assert again["mu0"] != res["mu0"]
    assert again["quantized_value"] == root["value"][0, again["mu0"]]
    assert again["actions"][0] == root["policy"][0, again["mu0"]]


def test_failed_shard_is_one_line_and_exit_1(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(f"hydra.run.dir={out}", "quant.m=2", "solver.retries=0",
                   "solver.fault={layer: 2, shard: 0, times: 9}", "ray.num_cpus=1")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qlift: run failed: shard 0 of layer 2 failed on 1 attempt ")
    assert "Traceback" not in proc.stderr
    assert not (out / "result.json").exists()


def test_user_problem_folder_and_data_file(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, (5, 1))
    np.savez(tmp_path / "toy.npz", x=x, label=np.array([0, 1, 0, 1, 1]),
             x_test=rng.uniform(-1, 1, (3, 1)), label_test=np.array([1, 0, 1]))
    (tmp_path / "problem").mkdir()
    (tmp_path / "problem" / "toy.yaml").write_text(textwrap.dedent(f"""\
        # @package _global_
        data: {{source: file, path: {tmp_path / 'toy.npz'}}}
        model:
          layers: 2
          box: [-1.0, 1.0]
          pe: none
          d_e: null
          positions: null
          mask: none
          fixed: {{"W[0,0]": 0.3}}
          free: {{"V[0,0]": [-0.5, 0.7], "b[0]": [-0.3, 0.0, 0.35]}}
        loss: {{kind: logistic, targets: null, w: [3.0], c0: 0.1, lam: 0.02}}
        quant: {{k: 5, m: 2}}
        """))
    out = tmp_path / "run"
    proc = run_cli("--config-dir", str(tmp_path), "problem=toy", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "result.json").read_text())
    assert set(res["theta"][0]) == {"V[0,0]", "b[0]"}  # exactly the problem file's free params
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "config.yaml"))
    assert cfg["model"]["fixed"] == {"W[0,0]": 0.3}
    prob = problem.build(cfg)
    q = quantize.build(prob, 5, 2)
    ref = QuantizedReference(prob, q)
    best, _ = ref.exhaustive(q.mu0, 2)
    assert res["quantized_value"] == pytest.approx(best, abs=1e-12)
    assert res["test_cost"] == pytest.approx(true_cost_loop(prob, res["actions"], prob.test),
                                             abs=1e-12)


@pytest.mark.parametrize("override,match", [
    ("quant.k=1", "quant.k=1 must be an integer >= 2"),
    ("model.mask=banded", "model.mask='banded' is unknown"),
    ("quant.m=50", "over solver.max_states"),
])
def test_cli_bad_input_is_one_line_and_writes_no_result(tmp_path, override, match):
    out = tmp_path / "run"
    extra = ["solver.max_states=1000000"] if "quant.m" in override else []
    proc = run_cli(f"hydra.run.dir={out}", override, *extra)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qlift: error: ") and match in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (out / "result.json").exists() and not (out / "tables.zarr").exists()


def test_cli_unknown_key_fails_at_composition(tmp_path):
    proc = run_cli(f"hydra.run.dir={tmp_path / 'run'}", "quant.kk=3")
    assert proc.returncode != 0 and "Key 'kk' is not in struct" in proc.stderr
