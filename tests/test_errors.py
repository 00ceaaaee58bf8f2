"""One test per bad-input branch: a clear QliftError naming the problem, nothing written."""

import numpy as np
import pytest

from pipeline.errors import QliftError
from pipeline.solver import solve


def _file_cfg(cfg_factory, tmp_path, **arrays):
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return cfg_factory(data={"source": "file", "path": str(path)})


GOOD_X = np.array([[0.1], [-0.2], [0.3], [0.5]])


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.array([[0.1], [np.nan]])}, r"'x' holds NaN or inf \(first in row 1\)"),
    ({"x": np.array([[np.inf], [0.0]])}, r"'x' holds NaN or inf \(first in row 0\)"),
    ({"x": np.array([0.1, 0.2])}, r"'x' has shape \(2,\); it must be 2-D"),
    ({"x": GOOD_X, "label": np.array([0, 1])}, r"'label' has shape \(2,\); it must be \(4,\)"),
    ({"x": GOOD_X, "label": np.array([0, 1, 2, 0])}, r"label 2 is out of range for 2 targets"),
    ({"x": GOOD_X, "pos": np.array([0, -1, 0, 0])}, r"'pos' holds a negative value"),
    ({"x": GOOD_X, "seq": np.array([0.5, 0, 0, 0])}, r"'seq' has dtype float64; it must hold integers"),
    ({"x": GOOD_X, "x_test": np.ones((2, 2))}, r"'x_test' has d=2 but 'x' has d=1"),
    ({"x": GOOD_X, "label_test": np.zeros(2, int)}, r"held-out arrays given without 'x_test'"),
    ({"x": GOOD_X, "z": np.zeros(4)}, r"unknown arrays \['z'\]"),
    ({"y": GOOD_X}, r"the data set has no array 'x'"),
])
def test_bad_data_file(cfg_factory, tmp_path, arrays, match):
    cfg = _file_cfg(cfg_factory, tmp_path, **arrays)
    with pytest.raises(QliftError, match=match):
        solve(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_missing_and_corrupt_data_file(cfg_factory, tmp_path):
    cfg = cfg_factory(data={"source": "file", "path": str(tmp_path / "nope.npz")})
    with pytest.raises(QliftError, match=r"nope.npz' does not exist"):
        solve(cfg, run_dir=tmp_path / "run")
    (tmp_path / "bad.npz").write_text("not a zip")
    cfg = cfg_factory(data={"source": "file", "path": str(tmp_path / "bad.npz")})
    with pytest.raises(QliftError, match=r"is not a readable .npz file"):
        solve(cfg, run_dir=tmp_path / "run")
    cfg = cfg_factory(data={"source": "file", "path": None})
    with pytest.raises(QliftError, match=r"data.source=file needs data.path"):
        solve(cfg, run_dir=tmp_path / "run")


@pytest.mark.parametrize("sections,match", [
    ({"model": {"free": {"M[0,3]": [0.0]}}}, r"'M\[0,3\]' does not exist for d=1, d_e=0"),
    ({"model": {"free": {"Q[0]": [0.0]}}}, r"'Q\[0\]' is not a parameter name; valid names are"),
    ({"model": {"free": {"b[0,0]": [0.0]}}}, r"'b\[0,0\]' does not exist for d=1"),
    ({"model": {"free": {"V[1,0]": [0.0]}}}, r"'V\[1,0\]' does not exist"),
    ({"model": {"fixed": {"W[2,2]": 1.0}}}, r"model.fixed: 'W\[2,2\]' does not exist"),
    ({"model": {"free": {"b[0]": []}}}, r"model.free\['b\[0\]'\]=\[\] is an empty grid"),
    ({"model": {"free": {}}}, r"model.free is empty"),
    ({"model": {"free": {"b[0]": [0.0, "x"]}}}, r"model.free\['b\[0\]'\]='x' is not a number"),
    ({"model": {"free": {"b[0]": [0.1]}, "fixed": {"b[0]": 0.2}}}, r"also in model.fixed"),
    ({"quant": {"k": 1, "m": 2}}, r"quant.k=1 must be an integer >= 2"),
    ({"quant": {"k": 5, "m": 0}}, r"quant.m=0 must be an integer >= 1, or null"),
    ({"model": {"box": [1.0, 1.0]}}, r"model.box=\[1.0, 1.0\] needs lo < hi"),
    ({"model": {"box": [2.0, -1.0]}}, r"needs lo < hi"),
    ({"model": {"box": [0.0]}}, r"model.box=\[0.0\] must be a pair"),
    ({"model": {"layers": 0}}, r"model.layers=0 must be an integer >= 1"),
    ({"loss": {"kind": "hinge"}}, r"loss.kind='hinge' is unknown; valid choices are: target, zero_one, logistic"),
    ({"model": {"mask": "banded"}}, r"model.mask='banded' is unknown; valid choices are: none, sequence, causal"),
    ({"model": {"pe": "rope"}}, r"model.pe='rope' is unknown; valid choices are: none, onehot, sinusoidal"),
    ({"model": {"pe": "sinusoidal", "d_e": 3}}, r"model.d_e=3 must be an even integer >= 2"),
    ({"model": {"positions": 0}}, r"model.positions=0 must be an integer > every position"),
    ({"loss": {"targets": [[0.0, 1.0]]}}, r"loss.targets has shape \(1, 2\); it must be \(C, d\)"),
    ({"loss": {"kind": "logistic", "w": [1.0, 2.0]}}, r"loss.w=\[1.0, 2.0\] must be a list of d=1"),
    ({"loss": {"lam": -1}}, r"loss.lam=-1.0 must be >= 0"),
    ({"data": {"source": "imagenet"}}, r"data.source='imagenet' is unknown; valid choices are: file, two_blobs, sequences"),
    ({"data": {"colour": 3}}, r"generator 'two_blobs' does not take these settings"),
    ({"solver": {"backend": "spark"}}, r"solver.backend='spark' is unknown"),
    ({"solver": {"max_states": 100}}, r"has 225 states, over solver.max_states=100; lower quant.k"),
    ({"solver": {"memory_gb": 1e-6}}, r"over solver.memory_gb=1e-06; lower quant.k"),
    ({"solver": {"chunk_states": 0}}, r"solver.chunk_states=0 must be an integer >= 1"),
    ({"solver": {"cache_transitions": "maybe"}}, r"solver.cache_transitions='maybe' is unknown"),
])
def test_bad_config(cfg_factory, tmp_path, sections, match):
    cfg = cfg_factory(**sections)
    if "model" in sections and "free" in sections["model"]:
        cfg["model"]["free"] = sections["model"]["free"]
    with pytest.raises(QliftError, match=match):
        solve(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_labels_must_be_binary_for_classification(cfg_factory, tmp_path):
    cfg = _file_cfg(cfg_factory, tmp_path, x=GOOD_X, label=np.array([0, 1, 2, 1]))
    cfg["loss"].update(kind="zero_one", w=[1.0])
    with pytest.raises(QliftError, match=r"label 2 is out of range for loss.kind=zero_one"):
        solve(cfg, run_dir=tmp_path / "run")


def test_missing_problem_sections(tmp_path):
    with pytest.raises(QliftError, match=r"the config has no 'model' section"):
        solve({"data": {"source": "two_blobs"}, "loss": {}}, run_dir=tmp_path / "run")
