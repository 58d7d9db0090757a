#!/usr/bin/env python3
"""PyTorch models loaded by treegate/io/pytorch.hpp with one call, checked against PyTorch.

Usage: pytorch_interop.py <pytorch_main executable> <work directory> [--venv <virtual environment>]

- fastfeedforward's FFF (the PyPI package): trained a few steps, its state_dict saved with
  safetensors.torch.save_file (F32, depth I64, usage counters), loaded in C++ and compared with
  the package's two hard behaviours: eval_forward (right iff w.x + b >= 0, no b2s) with the
  loader's defaults, and training_forward with hard decisions (right iff round(sigmoid(w.x + b))
  is 1, i.e. w.x + b > 0, plus b2s) with exact_ties off and leaf_bias on, also at exact ties;
  the same inside a larger model (a name prefix) and saved as F16.
- UltraFastBERT's layer (linear_in / linear_out, trees tree-major), written here from its
  formula in PyTorch: the same comparison.
- nn.Sequential(Linear, ReLU, Linear) saved without treegate metadata and read by
  safetensors::load_into (load_options::require_metadata = false) into
  sequential<dense, activation_layer, dense>.
Exit status: 0 pass, 1 failure, 77 skipped (torch, fastfeedforward or safetensors missing).
"""
import math
import os
import subprocess
import sys

try:
    import numpy as np
    import torch
    from fastfeedforward import FFF
    from safetensors.torch import load_file, save_file
except Exception as exc:  # ImportError, or torch failing to load its libraries
    if "--venv" in sys.argv[1:-1] and "TREEGATE_PYTORCH_REEXEC" not in os.environ:
        venv_python = os.path.join(sys.argv[sys.argv.index("--venv") + 1], "bin", "python")
        if os.path.exists(venv_python):
            os.environ["TREEGATE_PYTORCH_REEXEC"] = "1"
            os.execv(venv_python, [venv_python] + sys.argv)
    print("SKIP: the PyTorch test needs torch, fastfeedforward, numpy and safetensors (%s); "
          "run `bash cmake/python_env.sh <build dir>`" % exc)
    sys.exit(77)

U32 = 2.0 ** -24  # unit roundoff of float32
# Examples whose score at a node on their path lies this close to 0 are redrawn: two float32
# implementations summing in different orders may legitimately pick different children there.
ROUTE_MARGIN = 1e-3
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def run_cpp(exe, kind, model, x, work, option=None):
    """y from pytorch_main, or None with the exit status when it did not run."""
    inputs, outputs = os.path.join(work, kind + "_x.safetensors"), os.path.join(work, kind + "_y.safetensors")
    save_file({"x": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))}, inputs)
    cmd = [exe, kind, model, inputs, outputs] + ([option] if option is not None else [])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr.strip())
        return None, r.returncode
    return load_file(outputs)["y"].numpy().astype(np.float64), 0


def fff_route(sd, x):
    """Leaf of every example by the package's rule (right iff w.x + b >= 0) in float64, and the
    smallest |score| met on the way."""
    nw, nb = sd["node_weights"].double().numpy(), sd["node_biases"].double().numpy()[:, 0]
    depth = int(sd["depth"])
    node = np.zeros(len(x), dtype=np.int64)
    margin = np.full(len(x), np.inf)
    for _ in range(depth):
        s = np.einsum("bi,bi->b", x, nw[node]) + nb[node]
        margin = np.minimum(margin, np.abs(s))
        node = 2 * node + 1 + (s >= 0)
    return node - (2 ** depth - 1), margin


def fff_tolerance(sd, x, leaves, act_slope):
    """Per-output bound on |treegate - torch| for float32 both: each side errs by at most
    gamma_n * (sum of |terms|) per dot product (n terms, gamma_n ~ n u), the hidden error passes
    through the activation (slope <= act_slope) and the output dot product; doubled for the two sides."""
    w1, b1, w2 = (sd[k].double().numpy() for k in ("w1s", "b1s", "w2s"))
    n_in, width = w1.shape[1], w1.shape[2]
    pre_mag = np.einsum("bi,bij->bj", np.abs(x), np.abs(w1[leaves])) + np.abs(b1[leaves])
    h = np.einsum("bi,bij->bj", x, w1[leaves]) + b1[leaves]
    e_h = act_slope * (n_in + 1) * U32 * pre_mag + 4 * U32 * np.abs(h)
    out_mag = np.einsum("bj,bjo->bo", np.abs(h) + e_h, np.abs(w2[leaves]))
    return 2.0 * (np.einsum("bj,bjo->bo", e_h, np.abs(w2[leaves])) + width * U32 * out_mag) + 1e-30


def inputs_off_ties(rng, n, n_in, route):
    """n inputs whose every routing score is at least ROUTE_MARGIN from 0."""
    rows = []
    while len(rows) < n:
        x = rng.uniform(-1, 1, size=(4 * n, n_in))
        rows.extend(x[route(x) >= ROUTE_MARGIN])
    return np.array(rows[:n])


def train_fff(rng):
    torch.manual_seed(0)
    m = FFF(input_width=6, leaf_width=5, output_width=3, depth=3, usage_mode="soft")  # ReLU, the default of both
    target = torch.nn.Linear(6, 3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(20):  # a few steps, so that every tensor moves away from its initialisation
        xb = torch.from_numpy(rng.uniform(-1, 1, size=(32, 6)).astype(np.float32))
        loss = ((m(xb) - target(xb).detach()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def fff_train_hard(m, x):
    """The package's training path with hard decisions (no dropout or region leak here)."""
    m.train()
    with torch.no_grad():
        y = m.training_forward(torch.from_numpy(x.astype(np.float32)), use_hard_decisions=True).double().numpy()
    m.eval()
    return y


def b2s_tolerance(sd, leaves, want):
    """The rounding of adding b2s[l] (once on either side) on top of the eval path's bound."""
    return 4 * U32 * (np.abs(want) + np.abs(sd["b2s"].double().numpy()[leaves]))


def compare(name, got, want, tol):
    if got is None:
        check(False, name + ": pytorch_main failed")
        return
    err = np.abs(got - want)
    check(bool(np.all(err <= tol)), "%s: max |treegate - torch| %.3g, at most %.3g of its bound"
          % (name, float(err.max()), float(np.max(err / tol))))


def test_fff(exe, work, rng):
    m = train_fff(rng)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    check(sd["depth"].dtype == torch.int64 and "node_usage" in sd, "FFF state_dict has an I64 depth and usage counters")
    check(float(sd["b2s"].abs().max()) > 0, "the trained b2s is nonzero (and left out by eval_forward)")
    x = inputs_off_ties(rng, 64, 6, lambda x: fff_route(sd, x)[1])
    leaves, _ = fff_route(sd, x)
    with torch.no_grad():
        want = m(torch.from_numpy(x.astype(np.float32))).double().numpy()
    tol = fff_tolerance(sd, x, leaves, 1.0)
    path = os.path.join(work, "fff.safetensors")
    save_file(sd, path)
    compare("FFF, F32 + I64 depth, exact ties", run_cpp(exe, "fff", path, x, work)[0], want, tol)
    compare("FFF, F32, exact_ties off", run_cpp(exe, "fff_direct", path, x, work)[0], want, tol)
    # The training path: b2s included, ties go left (torch.round(0.5) is 0).
    want_train = fff_train_hard(m, x)
    check(float(np.abs(want_train - want).max()) > 1e-3, "the hard training path differs from eval (by b2s)")
    compare("FFF training path (hard decisions, b2s): exact_ties off, leaf_bias on",
            run_cpp(exe, "fff_train", path, x, work)[0], want_train, tol + b2s_tolerance(sd, leaves, want_train))

    # Ties: with every node bias 0, x = 0 scores exactly 0 at every node, which the package's eval
    # path sends right; exact_ties (the default, the tie rule >=) must agree, the direct copy
    # goes left instead, as the package's hard training path does.
    tied = dict(sd)
    tied["node_biases"] = torch.zeros_like(sd["node_biases"])
    m_tied = FFF(6, 5, 3, 3, usage_mode="soft")
    m_tied.load_state_dict(tied)
    m_tied.eval()
    zero = np.zeros((2, 6))
    with torch.no_grad():
        want_tied = m_tied(torch.from_numpy(zero.astype(np.float32))).double().numpy()
    path = os.path.join(work, "fff_tied.safetensors")
    save_file(tied, path)
    tol_tied = fff_tolerance(tied, zero, fff_route(tied, zero)[0], 1.0)
    compare("FFF at a tie (score exactly 0), exact ties", run_cpp(exe, "fff", path, zero, work)[0], want_tied, tol_tied)
    direct = run_cpp(exe, "fff_direct", path, zero, work)[0]
    check(direct is not None and bool(np.any(np.abs(direct - want_tied) > tol_tied)),
          "FFF at a tie, exact_ties off: goes left where the package goes right (differs, as documented)")
    train_tied = fff_train_hard(m_tied, zero)
    left = fff_route(tied, zero)[0] * 0  # leaf 0: every tie goes left
    compare("FFF training path at a tie: exact_ties off, leaf_bias on (left, b2s added)",
            run_cpp(exe, "fff_train", path, zero, work)[0], train_tied,
            fff_tolerance(tied, zero, left, 1.0) + b2s_tolerance(tied, left, train_tied))

    # Near ties: a score z in (0, 1e-7] has float32 sigmoid(z) == 0.5 exactly, so the package's
    # hard training path (round(sigmoid(z))) sends it left, while exact_ties off (the tie rule
    # > 0) sends it right, as the eval path does. The README states this difference; here it is
    # measured: with every node bias z and x = 0, the package reaches leaf 0, treegate leaf 2^D - 1.
    for z in (1e-8, 2e-8, 5e-8):
        near = dict(sd)
        near["node_biases"] = torch.full_like(sd["node_biases"], z)
        m_near = FFF(6, 5, 3, 3, usage_mode="soft")
        m_near.load_state_dict(near)
        with torch.no_grad():
            check(float(torch.sigmoid(torch.tensor(z, dtype=torch.float32))) == 0.5,
                  "float32 sigmoid(%g) rounds to exactly 0.5" % z)
        path = os.path.join(work, "fff_near.safetensors")
        save_file(near, path)
        train_near = fff_train_hard(m_near, zero)
        w1, b1, w2, b2 = (near[k].double().numpy() for k in ("w1s", "b1s", "w2s", "b2s"))
        def leaf_out(l):
            return np.maximum(b1[l], 0.0) @ w2[l] + b2[l]
        tol_near = 8 * U32 * (np.abs(leaf_out(0)) + np.abs(leaf_out(7)) + np.abs(b2[0]) + np.abs(b2[7])) + 1e-30
        check(bool(np.any(np.abs(leaf_out(0) - leaf_out(7)) > tol_near)), "leaves 0 and 7 give different outputs")
        check(bool(np.all(np.abs(train_near - leaf_out(0)) <= tol_near)),
              "package training path at z = %g: every node sends x left (leaf 0)" % z)
        got = run_cpp(exe, "fff_train", path, zero, work)[0]
        check(got is not None and bool(np.all(np.abs(got - leaf_out(7)) <= tol_near)),
              "exact_ties off at z = %g: every node sends x right (leaf 7), unlike the training path (documented)" % z)

    # Inside a larger model, under a prefix, beside other tensors.
    big = {"encoder.fff." + k: v for k, v in sd.items()}
    big["encoder.norm.weight"] = torch.ones(6)
    big["head.weight"] = torch.zeros(2, 6)
    path = os.path.join(work, "model.safetensors")
    save_file(big, path)
    compare("FFF under prefix 'encoder.fff.'", run_cpp(exe, "fff", path, x, work, "encoder.fff.")[0], want, tol)

    # F16: the package on the half-rounded weights is the oracle.
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    path = os.path.join(work, "fff_f16.safetensors")
    save_file(half, path)
    m16 = FFF(6, 5, 3, 3, usage_mode="soft")
    m16.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in half.items()})
    m16.eval()
    sd16 = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}
    x16 = inputs_off_ties(rng, 64, 6, lambda x: fff_route(sd16, x)[1])
    with torch.no_grad():
        want16 = m16(torch.from_numpy(x16.astype(np.float32))).double().numpy()
    tol16 = fff_tolerance(sd16, x16, fff_route(sd16, x16)[0], 1.0)
    compare("FFF saved as F16", run_cpp(exe, "fff", path, x16, work)[0], want16, tol16)


class UltraFastBERT(torch.nn.Module):
    """UltraFastBERT's layer from its formula: K trees of depth D of single neurons, tree t's
    node n at row t*N + n of linear_in; every neuron on a tree's path adds gelu(z) times its
    column of linear_out, and z > 0 sends the path right."""

    def __init__(self, n_in, n_out, trees, depth):
        super().__init__()
        self.trees, self.depth, self.nodes = trees, depth, 2 ** (depth + 1) - 1
        self.linear_in = torch.nn.Linear(n_in, trees * self.nodes, bias=True)
        self.linear_out = torch.nn.Linear(trees * self.nodes, n_out, bias=False)

    def forward(self, x):
        y = torch.zeros(x.shape[0], self.linear_out.out_features, dtype=x.dtype)
        for t in range(self.trees):
            node = torch.zeros(x.shape[0], dtype=torch.long)
            for _ in range(self.depth + 1):
                row = t * self.nodes + node
                z = (x * self.linear_in.weight[row]).sum(-1) + self.linear_in.bias[row]
                y = y + torch.nn.functional.gelu(z)[:, None] * self.linear_out.weight[:, row].T
                node = 2 * node + 1 + (z > 0).long()
        return y


def ufb_walk(m, x):
    """(smallest |z| on the paths, per-output bound on |treegate - torch|) in float64: every z is
    a dot product of n_in + 1 terms, its error passes through GELU (slope <= 1.13), and each of
    the K (D + 1) nodes adds gelu(z) times a column; doubled for the two float32 sides."""
    W, b, O = (p.detach().double().numpy() for p in (m.linear_in.weight, m.linear_in.bias, m.linear_out.weight))
    n_in, N = W.shape[1], m.nodes
    erf = np.vectorize(math.erf)
    margin = np.full(len(x), np.inf)
    bound = np.zeros((len(x), O.shape[0]))
    mag = np.zeros_like(bound)
    for t in range(m.trees):
        node = np.zeros(len(x), dtype=np.int64)
        for _ in range(m.depth + 1):
            row = t * N + node
            z = np.einsum("bi,bi->b", x, W[row]) + b[row]
            e_z = (n_in + 1) * U32 * (np.einsum("bi,bi->b", np.abs(x), np.abs(W[row])) + np.abs(b[row]))
            margin = np.minimum(margin, np.abs(z))
            g = 0.5 * z * (1 + erf(z / np.sqrt(2)))
            e_g = 1.13 * e_z + 4 * U32 * np.abs(g)
            bound += e_g[:, None] * np.abs(O[:, row].T)
            mag += (np.abs(g) + e_g)[:, None] * np.abs(O[:, row].T)
            node = 2 * node + 1 + (z > 0)
    return margin, 2.0 * (bound + m.trees * (m.depth + 1) * U32 * mag) + 1e-30


def test_ufb(exe, work, rng):
    for seed, (K, D, option) in enumerate([(2, 3, "ffn.:2"), (1, 4, "ffn.")]):
        torch.manual_seed(seed + 1)
        m = UltraFastBERT(7, 4, K, D)
        x = inputs_off_ties(rng, 64, 7, lambda x: ufb_walk(m, x)[0])
        with torch.no_grad():
            want = m(torch.from_numpy(x.astype(np.float32))).double().numpy()
        path = os.path.join(work, "ufb%d.safetensors" % K)
        save_file({"ffn." + k: v.detach().clone() for k, v in m.state_dict().items()}, path)
        how = "K given" if ":" in option else "K = 1 and D derived from the shapes"
        compare("UltraFastBERT layer, %d tree(s) of depth %d (%s)" % (K, D, how),
                run_cpp(exe, "ufb", path, x, work, option)[0], want, ufb_walk(m, x)[1])


def test_sequential(exe, work, rng):
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    path = os.path.join(work, "sequential.safetensors")
    save_file({k: v.detach().clone() for k, v in net.state_dict().items()}, path)  # no metadata
    x = rng.uniform(-1, 1, size=(32, 5))
    with torch.no_grad():
        want = net(torch.from_numpy(x.astype(np.float32))).double().numpy()
    got, status = run_cpp(exe, "sequential", path, x, work, "5,7,3")
    if got is None:
        check(False, "nn.Sequential via load_into: pytorch_main exited %d" % status)
        return
    # Per output: two dot products of 6 and 8 terms; a generous common bound.
    h = np.maximum(x @ net[0].weight.detach().double().numpy().T + net[0].bias.detach().double().numpy(), 0)
    mag = np.abs(h) @ np.abs(net[2].weight.detach().double().numpy().T) + 1
    compare("nn.Sequential(Linear, ReLU, Linear) via load_into", got, want, 2 * 16 * U32 * mag * 8)


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 1
    exe, work = sys.argv[1], sys.argv[2]
    os.makedirs(work, exist_ok=True)
    print("torch %s, fastfeedforward, numpy %s" % (torch.__version__, np.__version__))
    rng = np.random.default_rng(12)
    test_fff(exe, work, rng)
    test_ufb(exe, work, rng)
    test_sequential(exe, work, rng)
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    print("pytorch interop: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
