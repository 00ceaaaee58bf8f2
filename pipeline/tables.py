"""Per-action look-up tables of the fast transition kernel (see :mod:`kernels.fast`)."""

import numpy as np

DERIVED = ("binomT", "cls_q", "n_q", "cls_dyn", "dyn_q", "src_ptr", "src_cls", "E", "VX", "WX",
           "F", "F_off")  # functions of the other kernel arrays: not part of an MDP's identity
FIELD_CAP_BYTES = 256 * 2**20  # field tables are built only below this size (fixed, so
# every run of one MDP takes the same path and gives bit-identical tables)


def table_bytes(arrays, n_q):
    """Bytes of E and of the optional field tables for these kernel arrays."""
    n_a = arrays["Ms"].shape[0]
    n_cells, d = arrays["coords"].shape
    kq = n_cells * n_q
    e_bytes = n_a * kq * kq * 8 + 2 * n_a * n_cells * d * 8
    f_bytes = int(sum(int(c) for c in arrays["counts"])) * kq * (d + 1) * n_a * 8
    return e_bytes, f_bytes


def build(arrays):
    """Add the fast kernel's arrays to ``arrays`` (a dict of plain arrays) in place."""
    import kernels.fast as fast

    pe = arrays["cls_pe"]
    mask = arrays["cls_mask"]
    rows, cls_q = np.unique(pe, axis=0, return_inverse=True)
    cls_q = cls_q.reshape(-1).astype(np.int64)
    n_q = rows.shape[0]
    dyn_keys, cls_dyn = np.unique(np.concatenate([mask, cls_q[:, None]], axis=1), axis=0,
                                  return_inverse=True)
    cls_dyn = cls_dyn.reshape(-1).astype(np.int64)
    n_dyn = dyn_keys.shape[0]
    dyn_q = dyn_keys[:, -1].astype(np.int64)
    src_ptr = np.zeros(n_dyn + 1, np.int64)
    src = []
    for g in range(n_dyn):
        s = np.flatnonzero(dyn_keys[g, :-1])
        src.append(s)
        src_ptr[g + 1] = src_ptr[g] + len(s)
    src_cls = np.concatenate(src).astype(np.int64) if src else np.zeros(0, np.int64)

    coords = arrays["coords"]
    n_cells, d = coords.shape
    u = np.concatenate([np.repeat(coords, n_q, axis=0), np.tile(rows, (n_cells, 1))], axis=1)
    Ms, Vs, Ws = arrays["Ms"], arrays["Vs"], arrays["Ws"]
    sc = np.einsum("ip,apq,jq->aij", u, Ms, u, optimize=True)
    E = np.exp(sc - sc.max(axis=2, keepdims=True))
    VX = np.einsum("apq,cq->acp", Vs, coords)
    WX = np.einsum("apq,cq->acp", Ws, coords)
    out = {"binomT": np.ascontiguousarray(arrays["binom"].T), "cls_q": cls_q, "n_q": np.int64(n_q), "cls_dyn": cls_dyn, "dyn_q": dyn_q,
           "src_ptr": src_ptr, "src_cls": src_cls, "E": np.ascontiguousarray(E),
           "VX": np.ascontiguousarray(VX), "WX": np.ascontiguousarray(WX)}
    _, f_bytes = table_bytes(arrays, n_q)
    n_a = Ms.shape[0]
    if f_bytes <= FIELD_CAP_BYTES:
        kq = n_cells * n_q
        sizes = np.array([int(c) * kq * (d + 1) * n_a for c in arrays["counts"]], np.int64)
        F_off = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        F = np.empty(int(sizes.sum()))
        fast.build_fields(arrays["counts"], arrays["cls_m"], np.int64(n_cells), arrays["binom"],
                          arrays["cls_mass"], cls_q, np.int64(n_q), out["E"], out["VX"], F, F_off)
    else:
        F, F_off = np.zeros(0), np.full(1, -1, np.int64)
    out["F"], out["F_off"] = F, F_off
    arrays.update(out)
    return arrays
