"""The Ray backend against the local one, resume, faults, refusals and reuse."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline import storage
from pipeline.errors import QliftError, RunFailed
from pipeline.solver import solve
from pipeline.worker import progress_dir


def _mid_cfg(cfg_factory, **solver):
    """~2,000 states, 12 actions, 3 layers: many shards at small chunk sizes."""
    return cfg_factory(
        data={"n": 11, "seed": 2},
        model={"layers": 3, "free": {"M[0,0]": [0.0, 1.9], "V[0,0]": [-0.35, 0.45, 0.8],
                                     "b[0]": [-0.2, 0.15]}},
        quant={"k": 7, "m": 3},
        solver={"backend": "local", "chunk_states": 97, **solver})


def _tables(path):
    root = storage.open_tables(path)
    return root["value"][:], root["policy"][:]


@pytest.fixture(scope="module")
def reference(cfg_factory, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref")
    res = solve(_mid_cfg(cfg_factory), run_dir=run)
    return res, _tables(res["tables"])


@pytest.fixture(scope="module")
def cfg_factory():
    from tests.conftest import make_cfg

    return make_cfg


@pytest.mark.parametrize("chunk,workers", [(97, 2), (31, 2), (500, 1), (4096, 2)])
def test_ray_tables_equal_local_bit_for_bit(ray_session, cfg_factory, reference, tmp_path,
                                            chunk, workers):
    ref_res, (ref_v, ref_p) = reference
    cfg = _mid_cfg(cfg_factory, backend="ray", chunk_states=chunk)
    cfg["ray"] = {"workers": workers}
    res = solve(cfg, run_dir=tmp_path)
    v, p = _tables(res["tables"])
    assert ref_v.shape == (4, 84 * 84) and not np.isnan(ref_v).any()
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(p, ref_p)
    assert res["backend"] == "ray" and res["workers"] == workers
    for key in ("quantized_value", "true_cost", "test_cost", "actions", "mu0"):
        assert res[key] == ref_res[key]


@pytest.mark.parametrize("mode", ["memory", "disk", "off"])
def test_cache_modes_give_identical_tables(cfg_factory, reference, tmp_path, mode):
    _, (ref_v, ref_p) = reference
    res = solve(_mid_cfg(cfg_factory, cache_transitions=mode), run_dir=tmp_path)
    assert res["transitions_cache"] == mode
    v, p = _tables(res["tables"])
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(p, ref_p)
    root = storage.open_tables(res["tables"])
    n_sa = res["n_states"] * res["n_actions"]
    # cached transitions are computed once; without a cache once per layer
    assert res["transitions_computed"] == (3 * n_sa if mode == "off" else n_sa)
    if mode == "disk":
        assert root["transitions"].dtype == np.int32
        assert root["transitions"].shape == (res["n_states"], res["n_actions"])


def test_auto_cache_falls_back_to_disk_under_a_small_budget(cfg_factory, tmp_path):
    res = solve(_mid_cfg(cfg_factory, memory_gb=0.0003), run_dir=tmp_path)
    assert res["transitions_cache"] == "disk"


def test_store_opens_in_xarray(cfg_factory, reference):
    xr = pytest.importorskip("xarray")
    res, (ref_v, ref_p) = reference
    ds = xr.open_zarr(res["tables"], consolidated=True)
    assert ds["value"].dims == ("time", "state") and ds["policy"].dims == ("layer", "state")
    assert ds.sizes["state"] == res["n_states"] and ds.sizes["layer"] == 3
    np.testing.assert_array_equal(ds["value"].values, ref_v)
    np.testing.assert_array_equal(ds["policy"].sel(layer=0).values, ref_p[0])


def test_worker_killed_mid_shard_is_retried(ray_session, cfg_factory, reference, tmp_path):
    _, (ref_v, ref_p) = reference
    cfg = _mid_cfg(cfg_factory, backend="ray", fault={"layer": 1, "shard": 5, "times": 1})
    res = solve(cfg, run_dir=tmp_path)
    assert len(list((tmp_path / ".faults").iterdir())) == 1  # the worker really died once
    v, p = _tables(res["tables"])
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(p, ref_p)


def test_shard_failing_every_retry_stops_and_resume_finishes(ray_session, cfg_factory, reference,
                                                             tmp_path):
    _, (ref_v, ref_p) = reference
    cfg = _mid_cfg(cfg_factory, backend="ray", retries=1,
                   fault={"layer": 1, "shard": 5, "times": 99})
    with pytest.raises(RunFailed, match=r"shard 5 of layer 1 failed on 2 attempts"):
        solve(cfg, run_dir=tmp_path)
    assert not (tmp_path / "result.json").exists()
    prog = progress_dir(tmp_path / "tables.zarr")
    n_shards = -(-84 * 84 // 97)
    assert len(list(prog.glob("v00003_*"))) == len(list(prog.glob("v00002_*"))) == n_shards
    assert not (prog / "v00001_s0000005").exists()
    root = storage.open_tables(tmp_path / "tables.zarr")
    assert root.attrs["complete"] is False
    # the finished layers are kept and valid: a rerun without the fault completes them
    res = solve(_mid_cfg(cfg_factory, backend="ray"), run_dir=tmp_path)
    assert res["resumed"] is True
    v, p = _tables(res["tables"])
    np.testing.assert_array_equal(v, ref_v)
    np.testing.assert_array_equal(p, ref_p)


def test_mismatched_store_is_refused_unless_resume_false(cfg_factory, tmp_path):
    solve(_mid_cfg(cfg_factory), run_dir=tmp_path)
    other = _mid_cfg(cfg_factory)
    other["quant"]["k"] = 5
    with pytest.raises(QliftError, match=r"holds tables of another config .*solver.resume=false"):
        solve(other, run_dir=tmp_path)
    other["solver"]["resume"] = False
    res = solve(other, run_dir=tmp_path)
    assert res["k"] == 5 and res["resumed"] is False


def test_rerun_of_finished_run_recomputes_nothing(cfg_factory, reference, tmp_path):
    first = solve(_mid_cfg(cfg_factory), run_dir=tmp_path)
    again = solve(_mid_cfg(cfg_factory), run_dir=tmp_path)
    assert again["resumed"] is True and again["transitions_computed"] == 0
    assert again["quantized_value"] == first["quantized_value"]


def test_reuse_answers_a_new_data_set_without_solving(cfg_factory, reference, tmp_path):
    ref_res, (ref_v, ref_p) = reference
    new = _mid_cfg(cfg_factory)
    new["data"]["seed"] = 9  # new tokens, same class sizes (6 and 5)
    new["tables"] = ref_res["tables"]
    res = solve(new, run_dir=tmp_path)
    assert res["reused_tables"] is True and res["tables"] == ref_res["tables"]
    assert not (tmp_path / "tables.zarr").exists()
    assert res["mu0"] != ref_res["mu0"]
    assert res["quantized_value"] == ref_v[0, res["mu0"]]
    assert res["actions"][0] == ref_p[0, res["mu0"]]
    # the same answer as solving the new data from scratch
    fresh = solve({**new, "tables": None}, run_dir=tmp_path / "fresh")
    for key in ("quantized_value", "actions", "true_cost", "test_cost"):
        assert res[key] == fresh[key]


def test_reuse_refuses_another_mdp(cfg_factory, reference, tmp_path):
    ref_res, _ = reference
    new = _mid_cfg(cfg_factory)
    new["data"]["n"] = 13  # class sizes 7 and 6: other class shares, same budgets
    new["tables"] = ref_res["tables"]
    with pytest.raises(QliftError, match=r"belong to another quantized MDP: the class shares of "
                                         r"the data differ"):
        solve(new, run_dir=tmp_path)
    new["quant"]["m"] = 2
    with pytest.raises(QliftError, match=r"were solved for S=7056 states"):
        solve(new, run_dir=tmp_path)


def test_resume_after_driver_killed_with_sigkill(cfg_factory, tmp_path):
    """kill -9 of a driver after at least one finished layer, rerun, identical tables."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "pipeline", f"hydra.run.dir={run}", "model.layers=5",
            "quant.m=3", "solver.chunk_states=1024", "solver.cache_transitions=off",
            "ray.num_cpus=2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    prog = progress_dir(run / "tables.zarr")
    n_states = 165 * 165
    n_shards = -(-n_states // 1024)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if prog.exists() and len(list(prog.glob("v00004_*"))) == n_shards:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    done_before = len(list(prog.glob("v*")))
    assert n_shards * 2 <= done_before < n_shards * 6
    assert not (run / "result.json").exists()
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    res = json.loads((run / "result.json").read_text())
    assert res["resumed"] is True
    assert res["transitions_computed"] <= 4 * n_states * 64  # finished layers were skipped
    fresh = subprocess.run([*args[:3], f"hydra.run.dir={tmp_path / 'fresh'}", *args[4:],
                            "solver=local"], capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    v1, p1 = _tables(run / "tables.zarr")
    v2, p2 = _tables(tmp_path / "fresh" / "tables.zarr")
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(p1, p2)
