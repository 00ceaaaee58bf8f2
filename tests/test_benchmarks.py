"""The benchmark runner runs from a clone and its solvers agree (no timing is asserted)."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_benchmark_runner_smoke(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--repeats", "1",
                           "--horizon", "2", "--skip-ray", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("transitions_per_s", "backups_per_s", "gather_limit_per_s", "quantecon_ratio",
                "numpy_ratio", "ray_speedup"):
        assert key in res
    assert res["problem"]["n_states"] == 245025 and res["problem"]["n_actions"] == 64
    assert res["float32_max_abs_diff"] < 1e-5
    assert "from all solvers" in proc.stdout  # V_0 agreed across all four solvers
