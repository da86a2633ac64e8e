"""Op-level benchmarks of `macaw_fast.ops`: each op vs its unfused torch composition.

Workload per op: forward, backward with ``create_graph=True`` (as MACAW's inner step), then a
double backward, at the paper's shapes (T=5 tasks, N=256 rows, width 100, D=100, obs 20, act 6).

Run as a script for a table (CPU time, torch twin vs unfused; kernel-launch counts; with
TRITON_INTERPRET=1 also the Triton launch counts)::

    python bench/bench_ops.py [--reps 20] [--markdown out.md]

or with pytest-benchmark (one group per op, fused and unfused side by side)::

    pytest bench/bench_ops.py --benchmark-only
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import macaw_fast.ops as ops
from macaw_fast.ops import awr_loss, batched_linear, concat_relu_linear, value_mse, wlinear_adapt, wlinear_adapt_many
from macaw_fast.ops._common import interpreter_requested, triton_importable

# ------------------------------------------------------------------ launch counting

#: aten ops that only make views, metadata or allocations: they launch no device kernel.
NO_KERNEL = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "select", "slice",
    "unsqueeze", "squeeze", "as_strided", "alias", "detach", "empty", "empty_strided", "empty_like",
    "split", "split_with_sizes", "unbind", "lift_fresh", "lift_fresh_copy", "_reshape_alias",
    "new_empty", "new_empty_strided", "numpy_T", "_local_scalar_dense", "is_same_size", "sym_size",
    # profiler annotations (torch.autograd.profiler.record_function, e.g. in Optimizer.step)
    "_record_function_enter_new", "_record_function_exit",
}


_IN_TRITON = [0]     # > 0 while a Triton launch runs: the interpreter's own tensor copies are not counted


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL and not _IN_TRITON[0]:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def _count_triton():
    """Count Triton kernel launches (JIT or interpreted) made inside the block."""
    counts = Counter()
    patched = []
    if triton_importable():
        from triton.runtime import interpreter, jit
        for cls in (jit.JITFunction, interpreter.InterpretedFunction):
            orig = cls.run

            def run(self, *a, _orig=orig, **k):
                counts[getattr(self, "__name__", None) or self.fn.__name__] += 1
                _IN_TRITON[0] += 1
                try:
                    return _orig(self, *a, **k)
                finally:
                    _IN_TRITON[0] -= 1
            cls.run = run
            patched.append((cls, orig))
    try:
        yield counts
    finally:
        for cls, orig in patched:
            cls.run = orig


def count_launches(fn, *args, **kwargs) -> dict:
    """Device kernels launched by ``fn(*args, **kwargs)``: torch ops (dispatch-mode count of
    non-view aten ops) plus Triton launches. Returns {'torch', 'triton', 'total', 'ops'}."""
    with _count_triton() as tri, _Counter() as c:
        fn(*args, **kwargs)
    n_torch, n_tri = sum(c.ops.values()), sum(tri.values())
    return {"torch": n_torch, "triton": n_tri, "total": n_torch + n_tri, "ops": c.ops + tri}


# ------------------------------------------------------------------ workloads

def _adapt_unfused(W, b, z, G, rates, alpha):
    eta_z, eta_w, eta_b = rates[0], rates[1], rates[2]
    z_new = z - eta_z * (G @ W)
    wz = z_new @ W.t()
    theta_new = wz + b - (eta_w * (z_new @ z) + eta_b).unsqueeze(-1) * G
    z_tgt = alpha * z + (1 - alpha) * z_new
    theta_tgt = (alpha * (W @ z + b) + (1 - alpha) * (wz + b)
                 - ((1 - alpha) * (eta_w * (z_tgt @ z) + eta_b)).unsqueeze(-1) * G)
    return theta_new, theta_tgt


def _linear_unfused(x, theta, out, in_relu):
    x = torch.relu(x) if in_relu else x
    K = x.shape[-1]
    return torch.baddbmm(theta[:, K * out:].unsqueeze(1), x, theta[:, :K * out].view(-1, K, out))


def _concat_unfused(h, a, theta, out):
    return _linear_unfused(torch.cat([h, a], -1), theta, out, True)


def _awr_unfused(mu, act, adv, pred, hw, sigma=0.2, temp=1.0, max_weight=20.0):
    w = ((adv - adv.mean(-1, keepdim=True)) / (adv.std(-1, keepdim=True) * temp)).clamp(max=math.log(max_weight)).exp()
    k = act.shape[-1]
    logp = (-0.5 / sigma**2) * (act - mu).pow(2).sum(-1) - k * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    return (-w * logp).mean(-1) + hw * (pred - adv).pow(2).mean(-1)


def make_cases(T=5, N=256, width=100, D=100, obs=20, act=6, head=32, dtype=torch.float32, seed=0):
    """name -> (fused callable, unfused callable, differentiable inputs) at the given shapes."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    P = width * width + width
    W, b, z, G, rates = r(P, D), r(P), r(D), r(T, P), torch.rand(3, generator=g, dtype=dtype).requires_grad_()
    x, th = r(T, N, width), r(T, P)
    h, a, th_h = r(T, N, width), r(T, N, act), r(T, (width + act) * head + head)
    mu, ac, adv, pred, hw = r(T, N, act), r(T, N, act), r(T, N).detach(), r(T, N), r(())
    v, ret, disc, vn = r(T, N), r(T, N).detach(), torch.rand(T, N, generator=g, dtype=dtype), r(T, N).detach()
    shapes = [(obs * width + width, D)] + [(P, D)] * 2 + [(width + 1, D)]        # the value net's layers
    many = ([r(*s) for s in shapes] + [r(s[0]) for s in shapes] + [r(D) for _ in shapes]
            + [r(T, s[0]) for s in shapes] + [(torch.rand(4, 3, generator=g, dtype=dtype) * 0.1).requires_grad_()])

    def adapt_many(be):
        def f(*t):
            outs = wlinear_adapt_many(t[0:4], t[4:8], t[8:12], t[12:16], t[16], 0.9, backend=be)
            return tuple(x for o in outs for x in o)
        return f

    def adapt_many_unfused(*t):
        return tuple(x for k in range(4) for x in _adapt_unfused(t[k], t[4 + k], t[8 + k], t[12 + k], t[16][k], 0.9))

    return {
        "wlinear_adapt": (lambda be: (lambda W, b, z, G, rt: wlinear_adapt(W, b, z, G, rt, 0.9, backend=be)),
                          lambda W, b, z, G, rt: _adapt_unfused(W, b, z, G, rt, 0.9), (W, b, z, G, rates)),
        "batched_linear": (lambda be: (lambda x, th: batched_linear(x, th, width, in_relu=True, backend=be)),
                           lambda x, th: _linear_unfused(x, th, width, True), (x, th)),
        "concat_relu_linear": (lambda be: (lambda h, a, th: concat_relu_linear(h, a, th, head, backend=be)),
                               lambda h, a, th: _concat_unfused(h, a, th, head), (h, a, th_h)),
        "awr_loss": (lambda be: (lambda mu, ac, pred, hw: awr_loss(mu, ac, adv, pred=pred, head_weight=hw, backend=be)),
                     lambda mu, ac, pred, hw: _awr_unfused(mu, ac, adv, pred, hw), (mu, ac, pred, hw)),
        "value_mse": (lambda be: (lambda v: value_mse(v, ret, disc, vn, backend=be)),
                      lambda v: (v - (ret + disc * vn)).pow(2).mean(-1), (v,)),
        "wlinear_adapt_many": (adapt_many, adapt_many_unfused, tuple(many)),
    }


def full_pass(fn, inputs):
    """Forward, first-order grads with create_graph, then a double backward (grad of |grad|^2)."""
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((o * o).sum() for o in out)
    grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
    gg = sum((gr * gr).sum() for gr in grads if gr is not None and gr.requires_grad)
    return torch.autograd.grad(gg, inputs, allow_unused=True)


def first_order(fn, inputs):
    """Forward and first-order grads with create_graph=True (MACAW's inner gradient)."""
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    return torch.autograd.grad(sum((o * o).sum() for o in out), inputs, create_graph=True, allow_unused=True)


def forward_only(fn, inputs):
    """Forward pass only (no graph)."""
    with torch.no_grad():
        return fn(*inputs)


def time_it(f, reps: int) -> float:
    """Median wall time of ``f()`` in milliseconds over ``reps`` runs after 2 warm-ups."""
    for _ in range(2):
        f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


# ------------------------------------------------------------------ a prototype fused meta-step

def prototype_meta_step_launches(be: str) -> tuple[int, int]:
    """Launches of a whole MACAW meta-step (value + policy, docs/algorithm.md §4) written with the ops, on
    backend ``be`` at tiny float64 shapes: (forward, forward + meta-backward). A stand-in for the
    lead's ``MetaLearner(fused=True)`` until that exists; counts do not depend on the shapes."""
    F = torch.nn.functional
    torch.manual_seed(0)
    T, N, obs, act, H, D, hd = 5, 16, 4, 2, 8, 6, 5
    d = torch.float64
    def layer(i, o):
        P = i * o + o
        return [torch.randn(D, dtype=d).div(o).requires_grad_(), (torch.randn(P, D, dtype=d) / D**.5).requires_grad_(), (torch.randn(P, dtype=d) * .1).requires_grad_()]
    vdims = [(obs, H), (H, H), (H, H), (H, 1)]
    pdims = [(obs, H), (H, H), (H, H), (H, act), (H + act, hd), (hd, 1)]
    V = [layer(*x) for x in vdims]
    Pn = [layer(*x) for x in pdims]
    vl = torch.full((4, 3), math.log(1e-3), dtype=d, requires_grad=True)
    pl = torch.full((6, 3), math.log(1e-3), dtype=d, requires_grad=True)
    kap = torch.tensor(math.log(.01), dtype=d, requires_grad=True)
    r = lambda *s: torch.randn(*s, dtype=d)
    inn = dict(obs=r(T, N, obs), act=r(T, N, act), mc=r(T, N), tobs=r(T, N, obs), tdisc=torch.rand(T, N, dtype=d))
    out = dict(obs=r(T, N, obs), act=r(T, N, act), mc=r(T, N), tobs=r(T, N, obs), tdisc=torch.rand(T, N, dtype=d))
    def mlp(ths, dims, x, hidden=False):
        h = None
        for k, (th, (i, o)) in enumerate(zip(ths, dims)):
            x = ops.batched_linear(x, th, o, in_relu=k > 0, backend=be)
            if k == len(dims) - 2:
                h = x
        return (x, h) if hidden else x
    def step():
        th = [torch.addmv(b, W, z) for z, W, b in V]
        pt = [t.expand(T, -1) for t in th]
        v = mlp(pt, vdims, inn['obs']).squeeze(-1)
        lin = (v - inn['mc']).pow(2).mean(-1)
        g = torch.autograd.grad(lin.sum(), pt, create_graph=True)
        rates = F.softplus(vl)
        ad = [ops.wlinear_adapt(W, b, z, gg, rates[k], 0.9, backend=be) for k, ((z, W, b), gg) in enumerate(zip(V, g))]
        vnew = [a[0] for a in ad]; vtgt = [a[1].detach() for a in ad]
        vo = mlp(vnew, vdims, out['obs']).squeeze(-1)
        with torch.no_grad():
            y = out['mc'] + out['tdisc'] * mlp(vtgt, vdims, out['tobs']).squeeze(-1)
            def adv(b):
                both = mlp([t.detach() for t in vnew], vdims, torch.cat([b['tobs'], b['obs']], 1)).squeeze(-1)
                return b['mc'] + b['tdisc'] * both[:, :N] - both[:, N:]
            ai, ao = adv(inn), adv(out)
        lvo = (vo - y).pow(2).mean(-1)
        tp = [torch.addmv(b, W, z) for z, W, b in Pn]
        pp = [t.expand(T, -1) for t in tp]
        mu, h = mlp(pp[:4], pdims[:4], inn['obs'], hidden=True)
        mu = mu.tanh()
        a1 = ops.concat_relu_linear(h, inn['act'], pp[4], hd, backend=be)
        pred = ops.batched_linear(a1, pp[5], 1, in_relu=True, backend=be).squeeze(-1)
        lpi = ops.awr_loss(mu, inn['act'], ai, pred=pred, head_weight=F.softplus(kap), backend=be)
        gp = torch.autograd.grad(lpi.sum(), pp[:4], create_graph=True)
        prates = F.softplus(pl)
        pnew = [ops.wlinear_adapt(W, b, z, gg, prates[k], backend=be) for k, ((z, W, b), gg) in enumerate(zip(Pn[:4], gp))]
        muo = mlp(pnew, pdims[:4], out['obs']).tanh()
        lpo = ops.awr_loss(muo, out['act'], ao, backend=be)
        loss = (lvo.sum() + lpo.sum()) / 35
        return loss
    def fwd_bwd():
        loss = step()
        params = [t for l in V + Pn for t in l] + [vl, pl, kap]
        return torch.autograd.grad(loss, params, allow_unused=True)

    return count_launches(step)["total"], count_launches(fwd_bwd)["total"]


# ------------------------------------------------------------------ pytest-benchmark entry points

import pytest  # noqa: E402


@pytest.mark.parametrize("impl", ["fused_torch_twin", "unfused"])
@pytest.mark.parametrize("op", ["wlinear_adapt", "batched_linear", "concat_relu_linear", "awr_loss", "value_mse",
                                "wlinear_adapt_many"])
def test_bench_op(benchmark, op, impl):
    """Forward + backward + double backward at the paper's shapes on CPU."""
    fused, unfused, inputs = make_cases()[op]
    fn = fused("torch") if impl == "fused_torch_twin" else unfused
    benchmark.group = op
    benchmark.extra_info.update({"device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads()})
    benchmark(lambda: full_pass(fn, inputs))


# ------------------------------------------------------------------ ahead-of-time compile metadata

def compile_table() -> list[str]:
    """Markdown rows: every kernel specialisation compiled for sm_80 and sm_90 (no GPU needed)."""
    from macaw_fast.backends.fused_ops._aot import compile_spec, kernel_specs
    rows = ["Ahead-of-time compile (triton.compile, GPUTarget('cuda', cc, 32)), paper config T=5 N=256 D=100:", "",
            "| kernel | dtype | constexprs | warps | shared bytes sm_80 | shared bytes sm_90 | compile s (sm_80 / sm_90) |",
            "|---|---|---|---|---|---|---|"]
    for spec in kernel_specs():
        a, b = compile_spec(spec, 80), compile_spec(spec, 90)
        flags = ", ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in spec["constexprs"].items())
        rows.append(f"| {spec['name']} | {a['dtype']} | {flags} | {a['num_warps']} | {a['shared']} | {b['shared']} "
                    f"| {a['seconds']:.2f} / {b['seconds']:.2f} |")
    return rows


# ------------------------------------------------------------------ script

def cuda_meta_step_report(Ts=(5, 35), B: int = 256, reps: int = 20, device: str = "cuda") -> list[str]:
    """On a CUDA GPU at the paper config (fp32), per T: launches per meta-step (real kernel
    launches), median ms per step and peak GPU memory for the paper-style per-task loop, the
    batched step, the fused step (Triton) and the fused step replayed as a CUDA graph.
    ``device='cpu'`` runs the same table on the CPU (host timer; a dry run of this report)."""
    import statistics

    from macaw_fast import MacawConfig, MetaLearner
    from macaw_fast.train.cuda_graph import GraphedMetaStep
    from macaw_fast.data.synthetic import synthetic_batch
    from macaw_fast.reference import reference_backward

    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    lines = [f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, triton "
             f"{_triton_version()}, paper config fp32, B={B}; median of {reps} steps (CUDA events)", "",
             "| T | step | launches (torch + triton) | ms / step | vs loop | peak GPU MB |", "|---|---|---|---|---|---|"]

    def timed(step, data):
        for i in range(3):
            step(*data[i % len(data)])
        sync()
        times = []
        for i in range(reps):
            if cuda:
                ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                ev0.record()
                step(*data[i % len(data)])
                ev1.record()
                ev1.synchronize()
                times.append(ev0.elapsed_time(ev1))
            else:
                t0 = time.perf_counter()
                step(*data[i % len(data)])
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    def peak_mb(step, data):
        if not cuda:
            return float("nan")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(*data[0])
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20

    for T in Ts:
        g = torch.Generator().manual_seed(0)
        data = [(synthetic_batch(T, B, 20, 6, g).to(device), synthetic_batch(T, B, 20, 6, g).to(device))
                for _ in range(4)]
        rows = []
        for name in ("paper loop", "batched", "fused (triton)", "fused, CUDA graph"):
            try:
                torch.manual_seed(0)
                learner = MetaLearner(20, 6, 35, MacawConfig(), device=device, fused=name.startswith("fused"))
                if name == "paper loop":
                    def step(inner, outer, learner=learner):
                        learner.optimizer.zero_grad(set_to_none=True)
                        reference_backward(learner, inner, outer)
                        learner.optimizer.step()
                elif name == "fused, CUDA graph":
                    step = GraphedMetaStep(learner, T, B).step
                else:
                    step = learner.meta_step
                step(*data[0])
                if name == "fused, CUDA graph":
                    launches, mb = "1 graph", "(graph pool)"
                else:
                    c = count_launches(step, *data[1])
                    launches = f"{c['total']} ({c['torch']} + {c['triton']})"
                    mb = f"{peak_mb(step, data):.0f}"
                rows.append((name, launches, timed(step, data), mb))
            except Exception as e:  # noqa: BLE001 - one failing row must not hide the others
                rows.append((name, f"FAILED: {type(e).__name__}: {e}"[:300], float("nan"), ""))
        loop_ms = rows[0][2]
        for name, launches, ms, mb in rows:
            lines.append(f"| {T} | {name} | {launches} | {ms:.3f} | {loop_ms / ms:.1f}x | {mb} |")
    return lines


def _triton_version() -> str:
    try:
        import triton
        return triton.__version__
    except Exception:  # noqa: BLE001
        return "absent"


def main(argv=None) -> int:
    """Print (and optionally write as markdown) times and launch counts of every op."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--no-times", action="store_true", help="skip the CPU timings (launch counts only)")
    p.add_argument("--compile", action="store_true",
                   help="also compile every kernel for sm_80/sm_90 and tabulate shared memory and warps")
    p.add_argument("--cuda-meta-step", action="store_true",
                   help="only the CUDA meta-step table: launches and ms for batched, fused, CUDA graph")
    args = p.parse_args(argv)
    if args.cuda_meta_step:
        text = "\n".join(cuda_meta_step_report(reps=args.reps))
        print(text)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text + "\n")
        return 0
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, float32, "
             "T=5 N=256 width=100 D=100 act=6 head=32; median of %d runs" % args.reps, "",
             "| op | fused (torch twin) fwd ms | unfused fwd ms | fused fwd+bwd+2nd ms | unfused fwd+bwd+2nd ms | ratio |",
             "|---|---|---|---|---|---|"]
    cases = {} if args.no_times else make_cases()
    for name, (fused, unfused, inputs) in cases.items():
        f = fused("torch")
        tf = time_it(lambda: forward_only(f, inputs), args.reps)
        tu = time_it(lambda: forward_only(unfused, inputs), args.reps)
        ff = time_it(lambda: full_pass(f, inputs), args.reps)
        fu = time_it(lambda: full_pass(unfused, inputs), args.reps)
        lines.append(f"| {name} | {tf:.3f} | {tu:.3f} | {ff:.2f} | {fu:.2f} | {fu / ff:.2f}x |")
    backends = ["torch"] + (["triton"] if interpreter_requested() and triton_importable() else [])
    small = make_cases(T=2, N=40, width=20, D=8, act=3, head=8, dtype=torch.float64)   # counts do not depend on shapes
    lines += ["", "Kernel launches (torch aten ops that compute + Triton launches) for forward / "
              "forward + first-order backward with create_graph / forward + backward + double backward "
              "(each includes the harness's own loss ops: 2-4 for the forward, ~7 per backward):", "",
              "| op | unfused | " + " | ".join(f"fused ({b})" for b in backends) + " |",
              "|---|---|" + "---|" * len(backends)]
    for name, (fused, unfused, inputs) in small.items():
        cells = []
        for fn in [unfused] + [fused(b) for b in backends]:
            fw = count_launches(forward_only, fn, inputs)["total"]
            f1 = count_launches(first_order, fn, inputs)["total"]
            fb = count_launches(full_pass, fn, inputs)["total"]
            cells.append(f"{fw} / {f1} / {fb}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Prototype meta-step built from the ops (forward / forward + meta-backward launches):", ""]
    for b in backends:
        fw, total = prototype_meta_step_launches(b)
        lines.append(f"- backend {b}: {fw} / {total}")
    if args.compile:
        lines += ["", *compile_table()]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
