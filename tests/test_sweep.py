"""Hydra multirun sweeps on this machine and the summary report over them."""

import csv
import json
import subprocess
import sys

import pytest

from pipeline import report


def test_local_multirun_and_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "-m", f"hydra.sweep.dir={sweep}", "quant.k=3,5",
         "quant.m=1,2", "model.layers=2", "data.n=20", "data.n_test=10"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = {}
    for job in range(4):
        res = json.loads((sweep / str(job) / "result.json").read_text())
        assert res["backend"] == "ray"  # each job started and stopped its own local Ray
        results[(res["k"], res["m"])] = res
    assert set(results) == {(3, 1), (3, 2), (5, 1), (5, 2)}
    assert results[(5, 2)]["n_states"] == 15 * 15 and results[(3, 1)]["n_states"] == 9

    out = subprocess.run([sys.executable, "-m", "pipeline.report", str(sweep)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4/4 jobs ok" in out.stdout
    with open(sweep / "summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for row in rows:
        res = results[(int(row["k"]), int(row["m"]))]
        assert int(row["S"]) == res["n_states"] and int(row["A"]) == 64
        assert float(row["quantized_value"]) == pytest.approx(res["quantized_value"], rel=1e-12)
        assert float(row["true_cost"]) == pytest.approx(res["true_cost"], rel=1e-12)
        assert float(row["wall_s"]) > 0 and row["grid"] == "4x4x4"
    md = (sweep / "summary.md").read_text().splitlines()
    assert md[0].startswith("| job | k | m |") and len(md) == 6
    png = (sweep / "summary.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_report_marks_failed_jobs_and_refuses_bad_dirs(tmp_path):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    rows = report.rows(tmp_path)
    assert rows == [{"job": "0", "overrides": "", "status": "failed (no result.json)"}]
    assert report.main([str(tmp_path)]) == 1  # written, but not every job succeeded
    assert (tmp_path / "summary.csv").exists()
    assert report.main([str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
