"""Training data: a file of the user's or a built-in generator.

A data set is a dict of float64/int64 arrays ``x`` (N, d), ``pos``, ``label``,
``seq`` (N,), and optionally the held-out ``x_test``, ``pos_test``,
``label_test``, ``seq_test``.
"""

from pathlib import Path

import numpy as np

from pipeline.errors import QliftError

FIELDS = ("x", "pos", "label", "seq")


def two_blobs(n=200, n_test=200, d=1, seed=0, center=0.4, spread=0.3):
    """Two labelled Gaussian blobs at ``-center`` and ``+center`` per coordinate.

    One sequence, one position: the classes are the two labels.
    """
    rng = np.random.default_rng(seed)

    def draw(count):
        label = np.arange(count) % 2
        sign = np.where(label == 1, 1.0, -1.0)[:, None]
        x = sign * center + spread * rng.standard_normal((count, d))
        zeros = np.zeros(count, np.int64)
        return x, zeros, label.astype(np.int64), zeros

    out = dict(zip(FIELDS, draw(int(n))))
    if n_test:
        out.update({f + "_test": a for f, a in zip(FIELDS, draw(int(n_test)))})
    return out


def sequences(n_seq=4, length=3, n_test_seq=4, d=1, seed=0, center=0.4, spread=0.3):
    """Sequences of ``length`` tokens; a sequence's label is the sign of its mean.

    Tokens carry their position and sequence id, so attention masks and
    positional encodings act; every token of a sequence has the label of
    its sequence.
    """
    rng = np.random.default_rng(seed)

    def draw(count):
        lab = np.arange(count) % 2
        sign = np.where(lab == 1, 1.0, -1.0)
        x = (np.repeat(sign, length)[:, None] * center
             + spread * rng.standard_normal((count * length, d)))
        pos = np.tile(np.arange(length), count)
        seq = np.repeat(np.arange(count), length)
        label = np.repeat(lab, length)
        return x, pos.astype(np.int64), label.astype(np.int64), seq.astype(np.int64)

    out = dict(zip(FIELDS, draw(int(n_seq))))
    if n_test_seq:
        out.update({f + "_test": a for f, a in zip(FIELDS, draw(int(n_test_seq)))})
    return out


GENERATORS = {"two_blobs": two_blobs, "sequences": sequences}
_NOT_GENERATOR_KEYS = ("source", "path")


def load(data_cfg):
    """Load or generate the data set described by the ``data`` config mapping."""
    source = data_cfg.get("source")
    if source == "file":
        raw = _read_npz(data_cfg.get("path"))
    elif source in GENERATORS:
        gen = GENERATORS[source]
        kwargs = {k: v for k, v in data_cfg.items()
                  if k not in _NOT_GENERATOR_KEYS and v is not None}
        try:
            raw = gen(**kwargs)
        except TypeError as exc:
            raise QliftError(
                f"data: generator {source!r} does not take these settings "
                f"({exc}); see pipeline/data.py for its parameters") from None
    else:
        valid = ", ".join(["file", *GENERATORS])
        raise QliftError(f"data.source={source!r} is unknown; valid choices are: {valid}")
    return check(raw)


def _read_npz(path):
    if not path:
        raise QliftError("data.source=file needs data.path=FILE.npz")
    p = Path(path).expanduser()
    if not p.is_file():
        raise QliftError(f"data.path={str(p)!r} does not exist; give the path of an .npz file "
                         "with an array 'x' (N, d)")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {key: z[key] for key in z.files}
    except Exception as exc:  # a corrupt or foreign file
        raise QliftError(f"data.path={str(p)!r} is not a readable .npz file ({exc})") from None


def _split(raw, suffix):
    name = "x" + suffix
    if name not in raw:
        raise QliftError(f"data: the data set has no array {name!r}; it needs {name!r} of shape (N, d)")
    x = np.asarray(raw[name])
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise QliftError(f"data: {name!r} has shape {x.shape}; it must be 2-D (N, d) with N, d >= 1")
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise QliftError(f"data: {name!r} has dtype {x.dtype}; it must be real numbers")
    x = np.ascontiguousarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise QliftError(f"data: {name!r} holds NaN or inf (first in row {bad}); "
                         "clean or drop those rows")
    out = {"x": x}
    n = x.shape[0]
    for f in ("pos", "label", "seq"):
        key = f + suffix
        if key not in raw:
            out[f] = np.zeros(n, np.int64)
            continue
        a = np.asarray(raw[key])
        if a.shape != (n,):
            raise QliftError(f"data: {key!r} has shape {a.shape}; it must be ({n},) to match {name!r}")
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        if a.dtype.kind not in "iu":
            raise QliftError(f"data: {key!r} has dtype {a.dtype}; it must hold integers")
        a = a.astype(np.int64)
        if n and a.min() < 0:
            raise QliftError(f"data: {key!r} holds a negative value ({int(a.min())}); "
                             "positions, labels and sequence ids start at 0")
        out[f] = a
    return out


def check(raw):
    """Validate and coerce a raw data dict; return ``{'train': .., 'test': ..|None}``."""
    unknown = sorted(set(raw) - {f + s for f in FIELDS for s in ("", "_test")})
    if unknown and "x" in raw:
        raise QliftError(f"data: unknown arrays {unknown}; valid names are x, pos, label, seq "
                         "and the same with _test")
    train = _split(raw, "")
    test = _split(raw, "_test") if "x_test" in raw else None
    if test is None and any(f + "_test" in raw for f in FIELDS):
        raise QliftError("data: held-out arrays given without 'x_test'; add 'x_test' (N_test, d)")
    if test is not None and test["x"].shape[1] != train["x"].shape[1]:
        raise QliftError(f"data: 'x_test' has d={test['x'].shape[1]} but 'x' has "
                         f"d={train['x'].shape[1]}; they must match")
    return {"train": train, "test": test}


def iris_sequences(classes=(1, 2), test_fraction=0.3, seed=0, scale=0.35):
    """scikit-learn's iris data (bundled with the package): each flower a sequence.

    Every flower of the two ``classes`` (0 setosa, 1 versicolor, 2 virginica)
    becomes a sequence of 4 one-dimensional tokens, its standardized features
    times ``scale``, at positions 0..3 (the feature index); the label is 1 for
    the second class. A stratified, seeded split gives the held-out part.
    """
    try:
        from sklearn.datasets import load_iris
    except ImportError:
        raise QliftError("data.source=iris_sequences needs scikit-learn: "
                         "pip install -e '.[experiments]'") from None
    ds = load_iris()
    keep = np.isin(ds.target, classes)
    feats, target = ds.data[keep], (ds.target[keep] == classes[1]).astype(np.int64)
    feats = (feats - feats.mean(axis=0)) / feats.std(axis=0)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(target), bool)
    for c in (0, 1):
        idx = np.flatnonzero(target == c)
        test[rng.choice(idx, int(round(test_fraction * len(idx))), replace=False)] = True

    def tokens(rows, labels):
        n, f = rows.shape
        x = (scale * rows).reshape(-1, 1)
        return (x, np.tile(np.arange(f), n).astype(np.int64), np.repeat(labels, f),
                np.repeat(np.arange(n), f).astype(np.int64))

    out = dict(zip(FIELDS, tokens(feats[~test], target[~test])))
    out.update({f + "_test": a for f, a in zip(FIELDS, tokens(feats[test], target[test]))})
    return out


GENERATORS["iris_sequences"] = iris_sequences
