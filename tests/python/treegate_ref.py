"""NumPy transcription of treegate's layers, written from the README's formula section (not from the C++).

Shapes follow the safetensors file format (PyTorch conventions): a batch is [batch, features];
a dense weight is [out, in]; tree_linear stores weight [blocks, out, in] and bias [blocks, out];
tree_feedforward stores hidden_weight [trees, units, width, in], hidden_bias [trees, units, width],
output_weight [trees, units, out, width], output_bias [out], and for leaf_only router_weight
[trees, routers, in], router_bias [trees, routers].

Every computation is done in float64, and carries a rounding-error budget for the implementation
under test, which may compute in float32: each layer returns (y, mag, n, margin) where
  mag    bounds, per output, the sum of the absolute values of every term that went into it
         (inputs' own budgets included, activations scaled by their Lipschitz constant),
  n      bounds the number of roundings on any chain from the inputs to an output,
so |y_impl - y| <= gamma_n * mag ~ n * eps * mag (Higham, "Accuracy and Stability of Numerical
Algorithms", ch. 3), and
  margin is the smallest |routing value| met: a gate, a node's first pre-activation, a router
         output. Where it is below the rounding error, implementations may route differently.
"""
import math

import numpy as np

# Largest slope of each activation (GELU's is 1.1289 at v = 1.4142...).
LIPSCHITZ = {"identity": 1.0, "relu": 1.0, "tanh": 1.0, "gelu": 1.13, "gelu_tanh": 1.13}
# Roundings charged to one activation: its own few-ulp error in the implementation's libm.
ACT_ROUNDINGS = 4


def gate_bit(g):
    """bit = 1 iff g > 0 (NaN, -0 and +0 give 0)."""
    return 1 if g > 0 else 0


def child(node, bit):
    return 2 * node + 1 + bit


def path(bits):
    """Nodes p_0 .. p_D of the path chosen by bits b_1 .. b_D."""
    nodes = [0]
    for b in bits:
        nodes.append(child(nodes[-1], b))
    return nodes


_ERF = np.vectorize(math.erf)


def act(name, v):
    v = np.asarray(v, dtype=np.float64)
    if name == "identity":
        return v
    if name == "relu":
        return np.where(v > 0, v, 0.0)
    if name == "gelu":  # exact form, PyTorch's default
        return 0.5 * v * (1.0 + _ERF(v / math.sqrt(2.0)))
    if name == "gelu_tanh":
        c = math.sqrt(2.0 / math.pi)
        return 0.5 * v * (1.0 + np.tanh(c * (v + 0.044715 * v ** 3)))
    if name == "tanh":
        return np.tanh(v)
    raise ValueError("unknown activation " + name)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def dense(t, x, mag, n, prefix=""):
    W = f64(t[prefix + "weight"])
    y = x @ W.T
    m = mag @ np.abs(W).T
    if prefix + "bias" in t:
        y = y + f64(t[prefix + "bias"])
        m = m + np.abs(f64(t[prefix + "bias"]))
    return y, m, n + W.shape[1] + 1, math.inf


def tree_linear(t, meta, x, mag, n, gates=None, prefix=""):
    """path_sum: y = sum_j (W_{p_j} x + c_{p_j}); leaf_only: y = W_leaf x + c_leaf, with the
    leaf number p_D - (2^D - 1)."""
    depth = int(meta[prefix + "depth"])
    mode = meta[prefix + "mode"]
    gating = meta[prefix + "gating"]
    W = f64(t[prefix + "weight"])
    c = f64(t[prefix + "bias"]) if prefix + "bias" in t else None
    idx = [] if gating in ("", "external") else [int(s) for s in gating.split(",")]
    y = np.zeros((x.shape[0], W.shape[1]))
    m = np.zeros_like(y)
    margin = math.inf
    for e in range(x.shape[0]):
        g = list(gates[e][:depth]) if gating == "external" else [x[e, i] for i in idx]
        margin = min([margin] + [abs(float(v)) for v in g])
        nodes = path([gate_bit(v) for v in g])
        blocks = nodes if mode == "path_sum" else [nodes[-1] - (2 ** depth - 1)]
        for b in blocks:
            y[e] += W[b] @ x[e]
            m[e] += np.abs(W[b]) @ mag[e]
            if c is not None:
                y[e] += c[b]
                m[e] += np.abs(c[b])
    on_path = depth + 1 if mode == "path_sum" else 1
    return y, m, n + on_path * (W.shape[2] + 1), margin


def sliced_tree_linear(t, meta, x, mag, n):
    """K trees over K input slices, each gated by its own units; outputs summed or concatenated."""
    k = int(meta["trees"])
    si = int(meta["slice_in"])
    lists = meta["gating"].split(";")
    ys, ms, ns, margin = [], [], [], math.inf
    for tr in range(k):
        sub_t = {"weight": t["weight"][tr]}
        if "bias" in t:
            sub_t["bias"] = t["bias"][tr]
        sub_meta = {"depth": meta["depth"], "mode": meta["mode"], "gating": lists[tr]}
        s = slice(tr * si, (tr + 1) * si)
        y, m, nn, mg = tree_linear(sub_t, sub_meta, x[:, s], mag[:, s], n)
        ys.append(y)
        ms.append(m)
        ns.append(nn - n)
        margin = min(margin, mg)
    if meta["combine"] == "sum":
        return sum(ys), sum(ms), n + sum(ns), margin
    return np.concatenate(ys, axis=1), np.concatenate(ms, axis=1), n + max(ns), margin


def tree_feedforward(t, meta, x, mag, n, prefix=""):
    """path_sum (node_sum): every node on the path adds V act(U x + a), and the sign of its first
    pre-activation picks the child; leaf_only (leaf_mlp): router hyperplanes r.x + s pick the leaf, whose
    MLP alone contributes. K trees are summed, then the optional output bias is added."""
    depth = int(meta[prefix + "depth"])
    # Files written before tree_mode carry variant = node_sum / leaf_mlp instead of mode.
    if prefix + "mode" in meta:
        path_sum = meta[prefix + "mode"] == "path_sum"
    else:
        path_sum = meta[prefix + "variant"] == "node_sum"
    a_name = meta[prefix + "activation"]
    lip = LIPSCHITZ[a_name]
    U, A, V = (f64(t[prefix + k]) for k in ("hidden_weight", "hidden_bias", "output_weight"))
    trees, width, n_in = U.shape[0], U.shape[2], U.shape[3]
    y = np.zeros((x.shape[0], V.shape[2]))
    m = np.zeros_like(y)
    margin = math.inf

    def unit(e, tr, u):
        pre = U[tr, u] @ x[e] + A[tr, u]
        y[e] += V[tr, u] @ act(a_name, pre)
        m[e] += np.abs(V[tr, u]) @ (lip * (np.abs(U[tr, u]) @ mag[e] + np.abs(A[tr, u])))
        return pre

    for e in range(x.shape[0]):
        for tr in range(trees):
            node = 0
            if path_sum:
                for level in range(depth + 1):
                    pre = unit(e, tr, node)
                    if level < depth:
                        margin = min(margin, abs(pre[0]))
                        node = child(node, gate_bit(pre[0]))
            else:
                R, S = f64(t[prefix + "router_weight"]), f64(t[prefix + "router_bias"])
                for level in range(depth):
                    r = R[tr, node] @ x[e] + S[tr, node]
                    margin = min(margin, abs(r))
                    node = child(node, gate_bit(r))
                unit(e, tr, node - (2 ** depth - 1))
    if prefix + "output_bias" in t:
        y = y + f64(t[prefix + "output_bias"])
        m = m + np.abs(f64(t[prefix + "output_bias"]))
    units_on_path = depth + 1 if path_sum else 1
    return y, m, n + (n_in + 1) + ACT_ROUNDINGS + trees * units_on_path * width + 1, margin


def forward(t, meta, x, gates=None):
    """The layer or model described by the metadata applied to x [batch, in].
    Returns (y, mag, n, margin); see the module docstring."""
    x = f64(x)
    mag, n = np.abs(x), 0
    kind = meta["kind"]
    if kind == "dense":
        return dense(t, x, mag, n)
    if kind == "tree_linear":
        return tree_linear(t, meta, x, mag, n, gates)
    if kind in ("sliced_tree_linear", "tree_linear_blocked"):  # the second: files written before the rename
        return sliced_tree_linear(t, meta, x, mag, n)
    if kind == "tree_feedforward":
        return tree_feedforward(t, meta, x, mag, n)
    if kind == "sequential":
        h, margin = x, math.inf
        for i in range(int(meta["layers"])):
            p = "%d." % i
            k = meta[p + "kind"]
            if k == "dense":
                h, mag, n, mg = dense(t, h, mag, n, prefix=p)
            elif k == "activation":
                h, mag, n, mg = act(meta[p + "activation"], h), LIPSCHITZ[meta[p + "activation"]] * mag, \
                    n + ACT_ROUNDINGS, math.inf
            elif k == "tree_linear":
                h, mag, n, mg = tree_linear(t, meta, h, mag, n, prefix=p)
            elif k == "tree_feedforward":
                h, mag, n, mg = tree_feedforward(t, meta, h, mag, n, prefix=p)
            else:
                raise ValueError("unknown layer kind " + k)
            margin = min(margin, mg)
        return h, mag, n, margin
    raise ValueError("unknown kind " + kind)
