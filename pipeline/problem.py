"""From a resolved config to a validated problem (SPEC §1) and its action grid."""

import itertools
import math
import re
from dataclasses import dataclass, field

import numpy as np

from pipeline import data as data_mod
from pipeline.errors import QliftError

PE_KINDS = ("none", "onehot", "sinusoidal")
MASKS = ("none", "sequence", "causal")
LOSSES = ("target", "zero_one", "logistic")
_PARAM = re.compile(r"^\s*([MVWb])\s*\[\s*(\d+)\s*(?:,\s*(\d+)\s*)?\]\s*$")


@dataclass
class Problem:
    """Everything the solver and the evaluator need, as plain arrays."""

    train: dict
    test: dict | None
    d: int
    d_e: int
    n_pos: int
    layers: int
    lo: float
    hi: float
    pe: str
    mask: str
    loss: str
    targets: np.ndarray | None
    w: np.ndarray | None
    c0: float
    lam: float
    free_names: list
    free_grids: list
    base: dict = field(repr=False)  # fixed weights: M, V, W, b arrays
    actions: dict = field(repr=False)  # Ms, Vs, Ws, bs stacked over actions
    stage: np.ndarray = field(repr=False)  # (A,) stage cost

    @property
    def n_actions(self):
        return self.stage.shape[0]

    def theta(self, a):
        """The named free-parameter values of action ``a``."""
        idx = np.unravel_index(int(a), [len(g) for g in self.free_grids])
        return {n: float(g[i]) for n, g, i in zip(self.free_names, self.free_grids, idx)}

    def encode(self, pos):
        """Positional encodings e(p) of an int array of positions, (n, d_e)."""
        return positional_encoding(self.pe, self.d_e, np.asarray(pos))


def positional_encoding(kind, d_e, pos):
    pos = np.asarray(pos, dtype=np.int64)
    if kind == "none":
        return np.zeros((pos.shape[0], 0))
    if kind == "onehot":
        return np.eye(d_e)[pos]
    j = np.arange(d_e // 2)
    ang = pos[:, None] / (10000.0 ** (2 * j / d_e))[None, :]
    out = np.empty((pos.shape[0], d_e))
    out[:, 0::2] = np.sin(ang)
    out[:, 1::2] = np.cos(ang)
    return out


def parse_param(name, d, dd, where):
    """``"M[0,1]"`` -> ("M", (0, 1)), checked against the shapes for d and D = d + d_e."""
    mt = _PARAM.match(str(name))
    valid = (f"M[i,j] with i,j < {dd}, V[i,j] and W[i,j] with i,j < {d}, b[i] with i < {d}")
    if not mt:
        raise QliftError(f"{where}: {name!r} is not a parameter name; valid names are {valid}")
    kind, i, j = mt.group(1), int(mt.group(2)), mt.group(3)
    if kind == "b":
        if j is not None or i >= d:
            raise QliftError(f"{where}: {name!r} does not exist for d={d}; valid names are {valid}")
        return kind, (i,)
    lim = dd if kind == "M" else d
    if j is None or i >= lim or int(j) >= lim:
        raise QliftError(f"{where}: {name!r} does not exist for d={d}, d_e={dd - d}; "
                         f"valid names are {valid}")
    return kind, (i, int(j))


def _number(v, where):
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise QliftError(f"{where}={v!r} is not a number") from None
    if not math.isfinite(f):
        raise QliftError(f"{where}={v!r} must be finite")
    return f


def _require(cfg, key):
    if key not in cfg or cfg[key] is None:
        raise QliftError(f"the config has no '{key}' section; a problem file "
                         f"(conf/problem/NAME.yaml, '# @package _global_') must set data, model, loss")
    return cfg[key]


def build(cfg):
    """Validate the plain-dict config ``cfg`` and return a :class:`Problem`."""
    data_cfg, model, loss = (_require(cfg, k) for k in ("data", "model", "loss"))
    ds = data_mod.load(data_cfg)
    train, test = ds["train"], ds["test"]
    d = train["x"].shape[1]

    layers = model.get("layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise QliftError(f"model.layers={layers!r} must be an integer >= 1 (the horizon T)")
    box = model.get("box")
    if not isinstance(box, (list, tuple)) or len(box) != 2:
        raise QliftError(f"model.box={box!r} must be a pair [lo, hi]")
    lo, hi = _number(box[0], "model.box[0]"), _number(box[1], "model.box[1]")
    if not lo < hi:
        raise QliftError(f"model.box=[{lo}, {hi}] needs lo < hi")

    pe = model.get("pe", "none")
    if pe not in PE_KINDS:
        raise QliftError(f"model.pe={pe!r} is unknown; valid choices are: {', '.join(PE_KINDS)}")
    mask = model.get("mask", "none")
    if mask not in MASKS:
        raise QliftError(f"model.mask={mask!r} is unknown; valid choices are: {', '.join(MASKS)}")

    n_pos = model.get("positions")
    max_pos = int(train["pos"].max())
    if n_pos is None:
        n_pos = max_pos + 1
    elif not isinstance(n_pos, int) or n_pos < 1 or n_pos <= max_pos:
        raise QliftError(f"model.positions={n_pos!r} must be an integer > every position in the "
                         f"data (largest is {max_pos})")
    if test is not None and int(test["pos"].max()) >= n_pos and pe == "onehot":
        raise QliftError(f"data: 'pos_test' holds position {int(test['pos'].max())} but the model "
                         f"has {n_pos} positions; set model.positions to at least "
                         f"{int(test['pos'].max()) + 1}")
    d_e_cfg = model.get("d_e")
    if pe == "none":
        if d_e_cfg not in (None, 0):
            raise QliftError(f"model.d_e={d_e_cfg!r} needs a positional encoding; set model.pe "
                             "or model.d_e=null")
        d_e = 0
    elif pe == "onehot":
        if d_e_cfg not in (None, n_pos):
            raise QliftError(f"model.d_e={d_e_cfg!r} but onehot encodings have d_e = positions "
                             f"= {n_pos}; set model.d_e=null")
        d_e = n_pos
    else:
        if not isinstance(d_e_cfg, int) or d_e_cfg < 2 or d_e_cfg % 2:
            raise QliftError(f"model.d_e={d_e_cfg!r} must be an even integer >= 2 for "
                             "sinusoidal encodings")
        d_e = d_e_cfg
    dd = d + d_e

    kind = loss.get("kind")
    if kind not in LOSSES:
        raise QliftError(f"loss.kind={kind!r} is unknown; valid choices are: {', '.join(LOSSES)}")
    targets = w = None
    c0 = _number(loss.get("c0", 0.0) or 0.0, "loss.c0")
    lam = _number(loss.get("lam", 0.0) or 0.0, "loss.lam")
    if lam < 0:
        raise QliftError(f"loss.lam={lam} must be >= 0")
    labels = [train["label"]] + ([test["label"]] if test is not None else [])
    max_label = max(int(a.max()) for a in labels)
    if kind == "target":
        try:
            targets = np.asarray(loss.get("targets"), dtype=np.float64)
        except (TypeError, ValueError):
            raise QliftError(f"loss.targets={loss.get('targets')!r} must be a C x d list of numbers") from None
        if targets.ndim != 2 or targets.shape[1] != d or targets.shape[0] < 1:
            raise QliftError(f"loss.targets has shape {targets.shape}; it must be (C, d) with d={d}")
        if not np.all(np.isfinite(targets)):
            raise QliftError("loss.targets must be finite")
        if max_label >= targets.shape[0]:
            raise QliftError(f"data: label {max_label} is out of range for {targets.shape[0]} "
                             "targets; labels must be < the number of rows of loss.targets")
    else:
        try:
            w = np.asarray(loss.get("w"), dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise QliftError(f"loss.w={loss.get('w')!r} must be a list of {d} numbers") from None
        if w.shape != (d,) or not np.all(np.isfinite(w)):
            raise QliftError(f"loss.w={loss.get('w')!r} must be a list of d={d} finite numbers")
        if max_label > 1:
            raise QliftError(f"data: label {max_label} is out of range for loss.kind={kind}; "
                             "labels must be 0 or 1")

    base = {"M": np.zeros((dd, dd)), "V": np.zeros((d, d)), "W": np.zeros((d, d)),
            "b": np.zeros(d)}
    fixed = model.get("fixed") or {}
    free = model.get("free") or {}
    if not isinstance(fixed, dict) or not isinstance(free, dict):
        raise QliftError("model.fixed and model.free must be mappings from a parameter name to "
                         "a value (fixed) or a list of grid values (free)")
    fixed_slots = set()
    for name, val in fixed.items():
        kd, ij = parse_param(name, d, dd, "model.fixed")
        base[kd][ij] = _number(val, f"model.fixed[{name!r}]")
        fixed_slots.add((kd, ij))
    if not free:
        raise QliftError("model.free is empty; name at least one free parameter with its grid, "
                         "e.g. model.free={\"b[0]\": [-0.5, 0, 0.5]}")
    names, grids, slots = [], [], []
    for name, vals in free.items():
        kd, ij = parse_param(name, d, dd, "model.free")
        if (kd, ij) in slots:
            raise QliftError(f"model.free: {name!r} names a parameter listed twice")
        if name in fixed:
            raise QliftError(f"model.free: {name!r} is also in model.fixed; a parameter is one or the other")
        if not isinstance(vals, (list, tuple)) or len(vals) == 0:
            raise QliftError(f"model.free[{name!r}]={vals!r} is an empty grid; give a non-empty "
                             "list of values")
        names.append(str(name))
        grids.append(np.array([_number(v, f"model.free[{name!r}]") for v in vals]))
        slots.append((kd, ij))

    sizes = [len(g) for g in grids]
    n_a = int(np.prod(sizes, dtype=object))
    if n_a > 10**6:
        raise QliftError(f"the action grid has {n_a} actions; shrink the model.free grids")
    acts = {kd: np.repeat(base[kd][None], n_a, axis=0) for kd in base}
    stage = np.zeros(n_a)
    for a, combo in enumerate(itertools.product(*grids)):
        sq = 0.0
        for (kd, ij), v in zip(slots, combo):
            acts[kd][(a, *ij)] = v
            sq += v * v
        stage[a] = lam * sq
    return Problem(train=train, test=test, d=d, d_e=d_e, n_pos=n_pos, layers=layers, lo=lo,
                   hi=hi, pe=pe, mask=mask, loss=kind, targets=targets, w=w, c0=c0, lam=lam,
                   free_names=names, free_grids=grids, base=base,
                   actions={"Ms": acts["M"], "Vs": acts["V"], "Ws": acts["W"], "bs": acts["b"]},
                   stage=stage)
