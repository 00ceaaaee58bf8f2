"""Submissions to a real Slurm (controller, node daemon, munge): see the ``slurm`` fixture."""

import json
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from pipeline.solver import solve
from tests.conftest import ROOT

SBATCH = str(ROOT / "slurm" / "ray_cluster.sbatch")
TINY = ["quant.k=5", "quant.m=2", "model.layers=2", "data.n=30", "data.n_test=10"]
SAME = ("quantized_value", "true_cost", "test_cost", "actions", "theta", "n_states",
        "n_actions", "mu0", "states")


def _local(run_dir, tmp_path):
    """The same job solved here without Slurm or Ray, from the config the job saved."""
    cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    cfg.pop("hydra", None)
    cfg["solver"]["backend"] = "local"
    return solve(cfg, run_dir=tmp_path / "local")


def _job_state(env, job_id):
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                         env=env).stdout
    return dict(tok.split("=", 1) for tok in out.split() if "=" in tok)


def test_sbatch_ray_cluster_matches_local_run(slurm, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--cpus-per-task=2", f"--output={tmp_path}/job-%j.out",
         SBATCH, f"hydra.run.dir={run}", *TINY],
        capture_output=True, text=True, env={**slurm, "QLIFT_PYTHON": sys.executable},
        cwd=tmp_path, timeout=600)
    job_id = proc.stdout.strip().split(";")[0]
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "qlift: Ray cluster up: 1 node(s), 2 CPUs" in log
    res = json.loads((run / "result.json").read_text())
    assert res["backend"] == "ray" and res["workers"] == 2
    ref = _local(run, tmp_path)
    for key in SAME:
        assert res[key] == ref[key], key
    assert _job_state(slurm, job_id)["JobState"] == "COMPLETED"


def test_sbatch_bad_override_fails_clearly(slurm, tmp_path):
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--cpus-per-task=1", f"--output={tmp_path}/job-%j.out",
         SBATCH, f"hydra.run.dir={tmp_path / 'run'}", "quant.k=1"],
        capture_output=True, text=True, env={**slurm, "QLIFT_PYTHON": sys.executable},
        cwd=tmp_path, timeout=600)
    job_id = proc.stdout.strip().split(";")[0]
    assert proc.returncode != 0
    log = (tmp_path / f"job-{job_id}.out").read_text()
    assert "qlift: error: quant.k=1 must be an integer >= 2" in log
    assert "python -m pipeline exited with status 2" in log
    state = _job_state(slurm, job_id)
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "2:0"
    assert not (tmp_path / "run" / "result.json").exists()


def test_submitit_slurm_multirun(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", "hydra/launcher=slurm",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", "quant.k=3,5", *TINY[1:]],
        capture_output=True, text=True, env=slurm, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, k in ((0, 3), (1, 5)):
        res = json.loads((sweep / str(job) / "result.json").read_text())
        assert res["k"] == k and res["backend"] == "ray" and res["workers"] == 1
        ref = _local(sweep / str(job), tmp_path / str(job))
        for key in SAME:
            assert res[key] == ref[key], key
    assert list((sweep / ".submitit").iterdir())  # it really went through Slurm


@pytest.mark.parametrize("bad", ["quant.m=0"])
def test_submitit_failed_job_is_reported(slurm, tmp_path, bad):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", "hydra/launcher=slurm",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
         f"hydra.sweep.dir={sweep}", bad],
        capture_output=True, text=True, env=slurm, cwd=tmp_path, timeout=900)
    assert proc.returncode != 0
    assert "quant.m=0 must be an integer >= 1" in proc.stderr
