"""The value and policy tables on disk: a chunked zarr v3 store.

Layout of ``tables.zarr``:

- ``value``  (T+1, S) float64 (or float32), dimensions (time, state), chunks (1, chunk)
- ``policy`` (T, S)   int32,   dimensions (layer, state), chunks (1, chunk)
- attributes: ``config`` (the resolved config), ``config_hash``, ``mdp_hash``,
  ``n_states``, ``n_actions``, ``layers``, ``chunk``, and ``complete``
  (true only once every table is written and metadata is consolidated).

Only the driver creates arrays and attributes; writers write whole chunks.
"""

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import zarr

from pipeline.errors import QliftError


def canonical_hash(obj):
    """sha256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


PART_NAMES = {
    "coords": "the state grid", "k": "quant.k", "lo": "the box", "hi": "the box",
    "delta": "the grid spacing", "cls_m": "the class budgets", "cls_off": "the class budgets",
    "cls_mass": "the class shares of the data", "cls_pe": "the classes' positions",
    "cls_mask": "the attention mask between classes", "mult": "the classes",
    "counts": "the classes", "binom": "the budgets", "loss_tab": "the loss",
    "Ms": "the weights grid (M)", "Vs": "the weights grid (V)", "Ws": "the weights grid (W)",
    "bs": "the weights grid (b)", "stage": "the weight penalty",
}


def array_hashes(arrays):
    """sha256 of each named plain array: together, the identity of a quantized MDP."""
    from pipeline.tables import DERIVED

    out = {}
    for key in sorted(set(arrays) - set(DERIVED)):
        a = np.ascontiguousarray(arrays[key])
        h = hashlib.sha256()
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
        out[key] = h.hexdigest()
    return out


def describe_parts(keys):
    """Readable names of differing MDP arrays, without repeats."""
    seen = []
    for key in keys:
        name = PART_NAMES.get(key, key)
        if name not in seen:
            seen.append(name)
    return seen


def create(path, n_states, n_actions, layers, chunk, attrs, transitions=False,
           idx_dtype="int32", value_dtype="float64"):
    """Create an empty store at ``path`` (replacing any store there).

    ``value`` is indexed by time t = 0..T (V_T after the last layer) and
    ``policy`` by layer t = 0..T-1, so their first dimensions are named
    ``time`` and ``layer``; with ``transitions`` a (state, action) array of
    next-state indices is created too.
    """
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("value", shape=(layers + 1, n_states), chunks=(1, chunk), dtype=value_dtype,
                      fill_value=np.nan, dimension_names=("time", "state"))
    root.create_array("policy", shape=(layers, n_states), chunks=(1, chunk), dtype="int32",
                      fill_value=-1, dimension_names=("layer", "state"))
    if transitions:
        root.create_array("transitions", shape=(n_states, n_actions), chunks=(chunk, n_actions),
                          dtype=idx_dtype, fill_value=-1, dimension_names=("state", "action"))
    root.attrs.update({**attrs, "n_states": int(n_states), "n_actions": int(n_actions),
                       "layers": int(layers), "chunk": int(chunk), "complete": False})
    return root


def write_reachable(path, states, values, policies, attrs):
    """A store of the reachable sets: per layer t, ``states_t`` (n_t, n_cls) ranks,
    ``value_t`` (n_t,) and, for t < T, ``policy_t`` (n_t,), in group ``reachable``."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    grp = root.create_group("reachable")
    for t in sorted(states):
        st = states[t]
        top = int(st.max()) if st.size else 0
        dt = "uint8" if top < 2**8 else "uint16" if top < 2**16 else "int32" if top < 2**31 \
            else "int64"
        dims = (f"state_{t}", "class")
        grp.create_array(f"states_{t}", data=st.astype(dt), dimension_names=dims)
        grp.create_array(f"value_{t}", data=values[t], dimension_names=dims[:1])
        if t in policies:
            grp.create_array(f"policy_{t}", data=policies[t], dimension_names=dims[:1])
    root.attrs.update({**attrs, "complete": True})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))
    return root


def open_tables(path, mode="r"):
    """Open an existing store; a missing or foreign folder is a clear error."""
    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode=mode, zarr_format=3)
        if root.attrs.get("mode") == "reachable":
            raise QliftError(f"tables={str(path)!r} holds only the measures reachable from one "
                             "data set (solver.mode=reachable); reuse needs a full table: solve "
                             "with solver.mode=full")
        _ = root["value"], root["policy"]
    except QliftError:
        raise
    except Exception:
        raise QliftError(f"tables={str(path)!r} is not a qlift tables store (no 'value' and "
                         "'policy' arrays); point it at RUN_DIR/tables.zarr of a finished run") from None
    return root


def finish(path):
    """Mark the store complete and consolidate its metadata for other readers."""
    root = zarr.open_group(str(path), mode="r+", zarr_format=3)
    root.attrs["complete"] = True
    with warnings.catch_warnings():  # "not part of the v3 spec": we want it for xarray
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def write_json(path, obj):
    """Write JSON atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
