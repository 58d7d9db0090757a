#!/usr/bin/env python3
"""PyTorch-side interop check of treegate's safetensors files, both directions.

Usage: interop.py <interop_main executable> <work directory> [--venv <virtual environment>]

(a) Python -> C++: weights written with the reference `safetensors` package (save_file with
    metadata), inputs and expected outputs from treegate_ref.py (a NumPy transcription of
    the README's formula section); interop_main loads the weights with treegate, runs them, and writes
    the outputs and the re-saved model, which are read back here with `safetensors` and checked.
(b) C++ -> Python: interop_main builds layers, saves them with their inputs and outputs; here
    `safetensors` reads them and treegate_ref.py recomputes the outputs.
Exit status: 0 pass, 1 failure, 77 skipped (numpy or safetensors not installed).
"""
import math
import os
import struct
import subprocess
import sys
import zlib

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
except ImportError as exc:
    # Retry once with the virtual environment made by cmake/python_env.sh, if there is one.
    if "--venv" in sys.argv[1:-1] and "TREEGATE_INTEROP_REEXEC" not in os.environ:
        venv_python = os.path.join(sys.argv[sys.argv.index("--venv") + 1], "bin", "python")
        if os.path.exists(venv_python):
            os.environ["TREEGATE_INTEROP_REEXEC"] = "1"
            os.execv(venv_python, [venv_python] + sys.argv)
    # The ctest registers 77 as "skipped".
    print("SKIP: the interop test needs the Python packages numpy and safetensors (%s); "
          "run `bash cmake/python_env.sh <build dir>` or `pip install numpy safetensors`" % exc)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import treegate_ref as ref  # noqa: E402

# Examples whose routing value (a gate, a node's first pre-activation or a router output) lies
# this close to 0 are redrawn: float32 and float64 may legitimately pick different children.
ROUTE_MARGIN = 1e-2
BATCH = 16
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def metadata_of(path):
    with safe_open(path, framework="numpy") as f:
        return f.metadata() or {}


def data_crc32(path):
    """zlib.crc32 of the data section (the bytes after the 8-byte length and the header)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    return "%08x" % (zlib.crc32(blob[8 + n:]) & 0xffffffff)


def tolerance(mag, n, dtype):
    """Per-output bound on the implementation's rounding error: gamma_n * mag with the unit
    roundoff of `dtype`, doubled (gamma_n = n u / (1 - n u) and the reference's own float64
    error); see treegate_ref.py."""
    u = 2.0 ** -24 if dtype == np.float32 else 2.0 ** -53
    return 2.0 * n * u * mag


def close(got, want, tol):
    """(every |got - want| <= tol, largest error as a fraction of its tolerance)."""
    err = np.abs(got.astype(np.float64) - want)
    ratio = float(np.max(err / np.maximum(tol, np.finfo(np.float64).tiny))) if want.size else 0.0
    return bool(np.all(err <= tol)), ratio


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---- (a) Python writes, C++ runs -------------------------------------------------------------

def uniform(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def case_dense(rng, dt):
    t = {"weight": uniform(rng, (3, 5), dt), "bias": uniform(rng, (3,), dt)}
    return t, {"kind": "dense", "in": "5", "out": "3", "has_bias": "true"}, 5, 0


def case_tree_linear(rng, dt):
    t = {"weight": uniform(rng, (15, 4, 6), dt), "bias": uniform(rng, (15, 4), dt)}
    meta = {"kind": "tree_linear", "in": "6", "out": "4", "depth": "3", "mode": "path_sum",
            "gating": "0,5,2", "has_bias": "true"}
    return t, meta, 6, 0


def case_tree_linear_external(rng, dt):
    t = {"weight": uniform(rng, (4, 3, 4), dt)}
    meta = {"kind": "tree_linear", "in": "4", "out": "3", "depth": "2", "mode": "leaf_only",
            "gating": "external", "has_bias": "false"}
    return t, meta, 4, 2


def case_fff(rng, dt):  # UltraFastBERT-style: width 1, GELU, 2 trees summed
    units = 2 ** 4 - 1
    t = {"hidden_weight": uniform(rng, (2, units, 1, 5), dt), "hidden_bias": uniform(rng, (2, units, 1), dt),
         "output_weight": uniform(rng, (2, units, 3, 1), dt), "output_bias": uniform(rng, (3,), dt)}
    meta = {"kind": "tree_feedforward", "in": "5", "out": "3", "width": "1", "depth": "3", "trees": "2",
            "activation": "gelu", "mode": "path_sum", "has_bias": "true"}
    return t, meta, 5, 0


def case_leaf_mlp(rng, dt):  # original FFF: routers, then one leaf MLP
    t = {"hidden_weight": uniform(rng, (1, 4, 4, 5), dt), "hidden_bias": uniform(rng, (1, 4, 4), dt),
         "output_weight": uniform(rng, (1, 4, 2, 4), dt), "router_weight": uniform(rng, (1, 3, 5), dt),
         "router_bias": uniform(rng, (1, 3), dt)}
    meta = {"kind": "tree_feedforward", "in": "5", "out": "2", "width": "4", "depth": "2", "trees": "1",
            "activation": "relu", "mode": "leaf_only", "has_bias": "false"}
    return t, meta, 5, 0


def case_sliced(rng, dt):
    t = {"weight": uniform(rng, (2, 2, 2, 3), dt), "bias": uniform(rng, (2, 2, 2), dt)}
    meta = {"kind": "sliced_tree_linear", "slice_in": "3", "slice_out": "2", "trees": "2", "depth": "1",
            "mode": "leaf_only", "combine": "concat", "gating": "0;2", "has_bias": "true"}
    return t, meta, 6, 0


def case_sequential(rng, dt):
    t = {"0.weight": uniform(rng, (5, 4), dt), "0.bias": uniform(rng, (5,), dt),
         "2.weight": uniform(rng, (7, 2, 5), dt), "2.bias": uniform(rng, (7, 2), dt)}
    meta = {"kind": "sequential", "layers": "3",
            "0.kind": "dense", "0.in": "4", "0.out": "5", "0.has_bias": "true",
            "1.kind": "activation", "1.activation": "tanh", "1.size": "5",
            "2.kind": "tree_linear", "2.in": "5", "2.out": "2", "2.depth": "2", "2.mode": "path_sum",
            "2.gating": "1,3", "2.has_bias": "true"}
    return t, meta, 4, 0


CASES = [
    ("dense", case_dense, np.float32),
    ("tree_linear", case_tree_linear, np.float32),
    ("tree_linear", case_tree_linear_external, np.float64),
    ("tree_feedforward", case_fff, np.float32),
    ("tree_feedforward", case_leaf_mlp, np.float64),
    ("sliced_tree_linear", case_sliced, np.float32),
    ("sequential", case_sequential, np.float32),
]


def draw_inputs(rng, tensors, meta, n_in, n_gates, dt):
    """A batch whose routes all keep ROUTE_MARGIN away from a tie, and its reference output."""
    xs, gs, ys, tols = [], [], [], []
    while len(xs) < BATCH:
        x = uniform(rng, (1, n_in), dt)
        g = uniform(rng, (1, n_gates), dt) if n_gates else None
        y, mag, n, margin = ref.forward(tensors, meta, x, g)
        if margin < ROUTE_MARGIN:
            continue
        xs.append(x)
        ys.append(y)
        tols.append(tolerance(mag, n, dt))
        if n_gates:
            gs.append(g)
    return (np.concatenate(xs), (np.concatenate(gs) if n_gates else None), np.concatenate(ys),
            np.concatenate(tols))


def python_to_cpp(exe, work):
    rng = np.random.default_rng(2014)
    for n, (kind, make, dt) in enumerate(CASES):
        name = "py%d_%s_%s" % (n, kind, np.dtype(dt).name)
        tensors, meta, n_in, n_gates = make(rng, dt)
        model = os.path.join(work, name + ".safetensors")
        inputs = os.path.join(work, name + ".in.safetensors")
        outputs = os.path.join(work, name + ".out.safetensors")
        resaved = os.path.join(work, name + ".resaved.safetensors")
        save_file(tensors, model, metadata=meta)
        x, g, y_ref, tol = draw_inputs(rng, tensors, meta, n_in, n_gates, dt)
        io = {"x": x}
        if g is not None:
            io["gates"] = g
        save_file(io, inputs)
        scalar = "double" if dt == np.float64 else "float"
        proc = subprocess.run([exe, "run", scalar, kind, model, inputs, outputs, resaved],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            check(False, "%s: interop_main failed (%d): %s" % (name, proc.returncode, proc.stderr.strip()))
            continue
        y = load_file(outputs)["y"]
        check(y.dtype == dt and y.shape == y_ref.shape, "%s: output dtype %s shape %s" % (name, y.dtype, y.shape))
        ok, ratio = close(y, y_ref, tol)
        check(ok, "%s: C++ forward matches the NumPy reference (largest error %.2g of its bound)" % (name, ratio))
        back = load_file(resaved)
        check(sorted(back) == sorted(tensors), "%s: re-saved tensor names %s" % (name, sorted(back)))
        check(all(k in back and same_bits(back[k], v) for k, v in tensors.items()),
              "%s: re-saved tensors are bit-identical" % name)
        back_meta = metadata_of(resaved)
        check(all(back_meta.get(k) == v for k, v in meta.items()), "%s: re-saved metadata keeps the configuration" % name)
        check(back_meta.get("data_crc32") == data_crc32(resaved),
              "%s: re-saved data_crc32 %s is Python's zlib.crc32 of the data" % (name, back_meta.get("data_crc32")))


# ---- (b) C++ writes, Python checks -----------------------------------------------------------

def cpp_to_python(exe, work):
    proc = subprocess.run([exe, "make", work], capture_output=True, text=True)
    if proc.returncode != 0:
        check(False, "interop_main make failed (%d): %s" % (proc.returncode, proc.stderr.strip()))
        return
    names = sorted(f[:-len(".safetensors")] for f in os.listdir(work)
                   if f.startswith("cpp_") and f.endswith(".safetensors") and not f.endswith(".io.safetensors"))
    check(len(names) == 5, "C++ wrote %d models: %s" % (len(names), ", ".join(names)))
    for name in names:
        model = os.path.join(work, name + ".safetensors")
        tensors = load_file(model)
        meta = metadata_of(model)
        check(meta.get("data_crc32") == data_crc32(model),
              "%s: data_crc32 %s is Python's zlib.crc32 of the data" % (name, meta.get("data_crc32")))
        io = load_file(os.path.join(work, name + ".io.safetensors"))
        x, g, y = io["x"], io.get("gates"), io["y"]
        dt = y.dtype.type
        keep = [e for e in range(x.shape[0])
                if ref.forward(tensors, meta, x[e:e + 1], None if g is None else g[e:e + 1])[3] >= ROUTE_MARGIN]
        y_ref, mag, n, _ = ref.forward(tensors, meta, x[keep], None if g is None else g[keep])
        ok, ratio = close(y[keep], y_ref, tolerance(mag, n, dt))
        check(ok and len(keep) > x.shape[0] // 2,
              "%s (%s): %d/%d examples (the others route within %g of a tie) match the NumPy reference "
              "(largest error %.2g of its bound)" % (name, meta.get("kind"), len(keep), x.shape[0], ROUTE_MARGIN, ratio))


def main():
    args = sys.argv[1:]
    if "--venv" in args:
        i = args.index("--venv")
        del args[i:i + 2]
    if len(args) != 2:
        print(__doc__)
        return 2
    exe, work = args
    os.makedirs(work, exist_ok=True)
    python_to_cpp(exe, work)
    cpp_to_python(exe, work)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("all interop checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
