"""`batched_linear` and `concat_relu_linear`: one linear layer per task from generated parameters.

A layer's generated parameters theta (P,) = [weight (in*out, row-major (in, out)), bias (out)]
give y = x @ weight + bias (docs/algorithm.md §2). With per-task theta (T, P) every task of a meta-batch runs in
one launch; ReLU on the input (the MLP's ReLU between layers, applied on load so the pre-activation
need not be stored twice), ReLU on the output, and the advantage head's ReLU(concat(h, a)) input
are fused. The backward is two launches (`LinearBackward`); differentiating it again (MACAW's
meta-gradient through the inner loss's gradient) runs the VJP of the differentiable torch
backward, so gradients of every order are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_tensor, check_triton_mode, load_kernels, loop_vmap, next_pow2, resolve_backend

_OP = "batched_linear"


def linear_launch_config(T: int, N: int, K: int, OUT: int) -> dict:
    """Grid, block sizes and warps of `batched_linear_kernel` (shared with the compile test)."""
    block_n = 32
    block_k = min(32, max(16, next_pow2(K)))
    block_o = min(64, max(16, next_pow2(OUT)))
    return {"grid": (-(-N // block_n), -(-OUT // block_o), T), "num_warps": 4,
            "constexprs": {"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_O": block_o}}


def _backward_tiles(T: int, N: int, K: int, OUT: int, shared: bool) -> dict:
    """Tile sizes and tile grids of the input part and the theta part of the backward kernels."""
    bk_in, bo_in = min(64, max(16, next_pow2(K))), min(32, max(16, next_pow2(OUT)))
    bk_th, bo_th = min(32, max(16, next_pow2(K))), min(64, max(16, next_pow2(OUT)))
    return {"in": (-(-N // 32), -(-K // bk_in), T), "th": (-(-K // bk_th), -(-OUT // bo_th), 1 if shared else T),
            "blocks": {"BLOCK_N": 32, "BLOCK_K_IN": bk_in, "BLOCK_O_IN": bo_in, "BLOCK_K_TH": bk_th,
                       "BLOCK_O_TH": bo_th}}


def linear_backward_launch_config(T: int, N: int, K: int, OUT: int, shared: bool, do_input: bool = True) -> dict:
    """Grid, block sizes and warps of `linear_bwd_kernel` (shared with the compile test).

    ``tiles``: the runtime tile counts (NIN0, NIN1, NTH0, NTH1) the kernel decodes its 1-D grid with.
    """
    tl_ = _backward_tiles(T, N, K, OUT, shared)
    n_in = tl_["in"][0] * tl_["in"][1] * T if do_input else 0
    n_th = tl_["th"][0] * tl_["th"][1] * tl_["th"][2]
    return {"grid": (n_in + n_th,), "num_warps": 4,
            "tiles": (tl_["in"][0], tl_["in"][1], tl_["th"][0], tl_["th"][1]),
            "constexprs": dict(tl_["blocks"], SHARED=shared, DO_INPUT=do_input)}


def _input(x, a, in_relu):
    """The layer's effective input: act(x) or act(concat(x, a)) (differentiable torch ops)."""
    xe = x if a is None else torch.cat([x, a], dim=-1)
    return torch.relu(xe) if in_relu else xe, xe


def _split_theta(theta, K, OUT):
    n = K * OUT
    if theta.dim() == 1:
        return theta[:n].view(K, OUT), theta[n:]
    return theta[:, :n].view(-1, K, OUT), theta[:, n:].unsqueeze(1)


def _forward_torch(x, a, theta, OUT, in_relu, out_relu):
    xe, _ = _input(x, a, in_relu)
    K = xe.shape[-1]
    w, b = _split_theta(theta, K, OUT)
    if theta.dim() == 1:
        y = torch.addmm(b, xe.reshape(-1, K), w).view(*xe.shape[:-1], OUT)
    else:
        y = torch.baddbmm(b, xe, w)
    return torch.relu(y) if out_relu else y


def _forward_triton(x, a, theta, OUT, in_relu, out_relu):
    Kmod = load_kernels("_batched_linear_kernels")
    check_triton_mode(x.device, _OP)
    T, N, K1 = x.shape
    K = K1 + (a.shape[-1] if a is not None else 0)
    y = torch.empty((T, N, OUT), dtype=x.dtype, device=x.device)
    cfg = linear_launch_config(T, N, K, OUT)
    aa = a if a is not None else x
    stt = theta.stride(0) if theta.dim() == 2 else 0
    Kmod.batched_linear_kernel[cfg["grid"]](
        x, aa, theta, y, N, K, K1, OUT, x.stride(0), x.stride(1), x.stride(2),
        aa.stride(0), aa.stride(1), aa.stride(2), stt, theta.stride(-1), y.stride(0), y.stride(1),
        IN_RELU=in_relu, OUT_RELU=out_relu, CONCAT=a is not None,
        num_warps=cfg["num_warps"], **cfg["constexprs"])
    return y


def _backward_torch(gy, x, a, theta, y, OUT, in_relu, out_relu, needs=(True, True, True)):
    """(dL/dx, dL/da, dL/dtheta) from dL/dy, in differentiable torch ops (y: output, OUT_RELU only)."""
    if out_relu:
        gy = torch.where(y > 0, gy, 0.0)
    xe, pre = _input(x, a, in_relu)
    K = xe.shape[-1]
    w, _ = _split_theta(theta, K, OUT)
    gx = ga = gth = None
    if needs[0] or needs[1]:
        gxe = gy @ w.transpose(-1, -2)                             # (T, N, K)
        if in_relu:
            gxe = torch.where(pre > 0, gxe, 0.0)
        if a is None:
            gx = gxe
        else:
            K1 = x.shape[-1]
            gx, ga = gxe[..., :K1], gxe[..., K1:]
    if needs[2]:
        if theta.dim() == 1:
            gw = xe.reshape(-1, K).t() @ gy.reshape(-1, OUT)
            gth = torch.cat([gw.reshape(-1), gy.reshape(-1, OUT).sum(0)])
        else:
            gw = xe.transpose(1, 2) @ gy                           # (T, K, OUT)
            gth = torch.cat([gw.flatten(1), gy.sum(1)], dim=1)
    return gx, ga, gth


def _backward_triton(gy, x, a, theta, y, OUT, in_relu, out_relu, need_input=True):
    """(dL/dx, dL/da, dL/dtheta) in one Triton launch; dL/dx and dL/da are None (or, without a,
    dL/da an empty tensor) when ``need_input`` is False."""
    Kmod = load_kernels("_batched_linear_kernels")
    check_triton_mode(x.device, _OP)
    gy = gy.contiguous()
    T, N, K1 = x.shape
    K = K1 + (a.shape[-1] if a is not None else 0)
    shared = theta.dim() == 1
    c = linear_backward_launch_config(T, N, K, OUT, shared, need_input)
    kw = {"dtype": x.dtype, "device": x.device}
    gth = torch.empty(theta.shape, **kw)
    gx = torch.empty((T, N, K1), **kw) if need_input else gth
    ga = torch.empty((T, N, K - K1), **kw) if (need_input or a is None) else gth
    aa = a if a is not None else x
    yy = y if y is not None else gy
    stt = 0 if shared else theta.stride(0)
    flags = {"IN_RELU": in_relu, "OUT_RELU": out_relu, "CONCAT": a is not None}
    Kmod.linear_bwd_kernel[c["grid"]](
        gy, yy, x, aa, theta, gx, ga, gth, T, N, K, K1, OUT, gy.stride(0), gy.stride(1), yy.stride(0), yy.stride(1),
        x.stride(0), x.stride(1), x.stride(2), aa.stride(0), aa.stride(1), aa.stride(2), stt, theta.stride(-1),
        *c["tiles"], num_warps=c["num_warps"], **c["constexprs"], **flags)
    if not need_input:
        gx, ga = None, (ga if a is None else None)
    return gx, ga, gth


def _double_backward_torch(ggx, gga, ggth, gy, x, a, theta, y, OUT, in_relu, out_relu):
    """VJP of `_backward_torch` for cotangents (ggx, gga, ggth) of (dL/dx, dL/da, dL/dtheta).

    Returns (g_gy, g_x, g_a, g_theta) in differentiable torch ops; with mask_out = (y > 0)
    (OUT_RELU), mask_in = (X > 0) (IN_RELU), X = concat(x, a), gy' = mask_out * gy:
    g_gy = mask_out * ((mask_in * ggX) @ W + act_in(X) @ ggW + ggb), g_W = (mask_in * ggX)^T gy',
    g_b = 0, g_X = mask_in * (gy' @ ggW^T). Absent cotangents (None) give absent terms (None).
    """
    if out_relu:
        gy = torch.where(y > 0, gy, 0.0)
    xe, pre = _input(x, a, in_relu)
    K = xe.shape[-1]
    w, _ = _split_theta(theta, K, OUT)
    shared = theta.dim() == 1
    g_gy = g_x = g_a = g_th = None
    if ggx is not None:
        gge = ggx if a is None else torch.cat([ggx, gga], dim=-1)
        if in_relu:
            gge = torch.where(pre > 0, gge, 0.0)
        g_gy = gge @ w
        if shared:
            gw = gge.reshape(-1, K).t() @ gy.reshape(-1, OUT)
            g_th = torch.cat([gw.reshape(-1), gw.new_zeros(OUT)])
        else:
            gw = gge.transpose(1, 2) @ gy
            g_th = torch.cat([gw.flatten(1), gw.new_zeros(gw.shape[0], OUT)], dim=1)
    if ggth is not None:
        ggw, ggb = _split_theta(ggth, K, OUT)
        t = xe @ ggw + ggb
        g_gy = t if g_gy is None else g_gy + t
        gxe = gy @ ggw.transpose(-1, -2)
        if in_relu:
            gxe = torch.where(pre > 0, gxe, 0.0)
        if a is None:
            g_x = gxe
        else:
            K1 = x.shape[-1]
            g_x, g_a = gxe[..., :K1], gxe[..., K1:]
    if out_relu:
        g_gy = torch.where(y > 0, g_gy, 0.0)
    return g_gy, g_x, g_a, g_th


def linear_double_backward_launch_config(T: int, N: int, K: int, OUT: int, shared: bool, has_ggx: bool = True,
                                         has_ggth: bool = True, do_input: bool = True) -> dict:
    """Grid, block sizes and warps of `linear_dbwd_kernel` (shared with the compile test).

    Its parts: d/dgy (tiles like the forward's), d/dtheta (with ``has_ggx``; tiles like the
    backward's theta part) and d/dX (with ``has_ggth`` and ``do_input``; like the backward's input
    part). ``tiles``: (NGY0, NGY1, NTH0, NTH1, NIN0, NIN1).
    """
    fw = linear_launch_config(T, N, K, OUT)
    bw = _backward_tiles(T, N, K, OUT, shared)
    do_input = do_input and has_ggth
    n = fw["grid"][0] * fw["grid"][1] * T
    n += bw["th"][0] * bw["th"][1] * bw["th"][2] if has_ggx else 0
    n += bw["in"][0] * bw["in"][1] * T if do_input else 0
    fc = fw["constexprs"]
    const = dict(bw["blocks"], BLOCK_N_GY=fc["BLOCK_N"], BLOCK_K_GY=fc["BLOCK_K"], BLOCK_O_GY=fc["BLOCK_O"],
                 SHARED=shared, HAS_GGX=has_ggx, HAS_GGTH=has_ggth, DO_INPUT=do_input)
    return {"grid": (n,), "num_warps": 4, "constexprs": const,
            "tiles": (fw["grid"][0], fw["grid"][1], bw["th"][0], bw["th"][1], bw["in"][0], bw["in"][1])}


def _double_backward_triton(ggx, gga, ggth, gy, x, a, theta, y, OUT, in_relu, out_relu, need_x=True):
    """`_double_backward_torch` in one Triton launch; g_x, g_a are None unless ``need_x``."""
    Kmod = load_kernels("_batched_linear_kernels")
    check_triton_mode(x.device, _OP)
    gy = gy.contiguous()
    T, N, K1 = x.shape
    K = K1 + (a.shape[-1] if a is not None else 0)
    shared = theta.dim() == 1
    has_x, has_th = ggx is not None, ggth is not None
    c = linear_double_backward_launch_config(T, N, K, OUT, shared, has_x, has_th, need_x)
    kw = {"dtype": x.dtype, "device": x.device}
    aa = a if a is not None else x
    yy = y if y is not None else gy
    stt = 0 if shared else theta.stride(0)
    flags = {"IN_RELU": in_relu, "OUT_RELU": out_relu, "CONCAT": a is not None}
    ggx = ggx.contiguous() if has_x else gy
    gga = gga.contiguous() if (has_x and a is not None) else ggx
    ggth = ggth.contiguous() if has_th else theta
    g_gy = torch.empty((T, N, OUT), **kw)
    do_input = c["constexprs"]["DO_INPUT"]
    g_th = torch.empty(theta.shape, **kw) if has_x else None
    g_x = torch.empty((T, N, K1), **kw) if do_input else None
    g_a = torch.empty((T, N, K - K1), **kw) if (do_input and a is not None) else None
    dummy = g_gy
    Kmod.linear_dbwd_kernel[c["grid"]](
        ggx, gga, ggth, gy, x, aa, theta, yy, g_gy, dummy if g_th is None else g_th,
        dummy if g_x is None else g_x, dummy if g_a is None else g_a, T, N, K, K1, OUT,
        gy.stride(0), gy.stride(1), yy.stride(0), yy.stride(1),
        x.stride(0), x.stride(1), x.stride(2), aa.stride(0), aa.stride(1), aa.stride(2), stt, theta.stride(-1),
        0 if shared else K * OUT + OUT, *c["tiles"], num_warps=c["num_warps"], **c["constexprs"], **flags)
    return g_gy, g_x, g_a, g_th


class LinearDoubleBackward(torch.autograd.Function):
    """The second-order backward of `batched_linear` (`LinearBackward`'s backward), 1-3 Triton launches.

    Inputs: the cotangents (ggx, gga, ggtheta) of LinearBackward's outputs (None when absent) and
    LinearBackward's inputs. Outputs (g_gy, g_x, g_a, g_theta), None where a term is absent. Its own
    backward (third order, never needed by MACAW) is the VJP of `_double_backward_torch`, so every
    order stays exact.
    """

    @staticmethod
    def forward(ggx, gga, ggth, gy, x, a, theta, y, OUT, in_relu, out_relu, need_x=True):
        return _double_backward_triton(ggx, gga, ggth, gy, x, a, theta, y, OUT, in_relu, out_relu, need_x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ggx, gga, ggth, gy, x, a, theta, y, OUT, in_relu, out_relu = inputs[:11]
        ctx.save_for_backward(ggx, gga, ggth, gy, x, a, theta, y)
        ctx.cfg = (OUT, in_relu, out_relu)
        ctx.n_inputs = len(inputs)               # need_x (the 12th) is optional
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, c_gy, c_x, c_a, c_th):
        ggx, gga, ggth, gy, x, a, theta, y = ctx.saved_tensors
        OUT, in_relu, out_relu = ctx.cfg
        names = ["ggx", "gga", "ggth", "gy", "x", "a", "theta"]
        vals = dict(zip(names, (ggx, gga, ggth, gy, x, a, theta)))
        prim = [n for n in names if vals[n] is not None]
        cots = [c_gy, c_x, c_a, c_th]
        keep = [k for k, c in enumerate(cots) if c is not None and _double_output_present(k, ggx, ggth, a)]
        pad = (None,) * (ctx.n_inputs - 7)
        if not keep:
            return (None,) * 7 + pad

        def f(*args):
            v = dict(vals, **dict(zip(prim, args)))
            outs = _double_backward_torch(v["ggx"], v["gga"], v["ggth"], v["gy"], v["x"], v["a"], v["theta"],
                                          y, OUT, in_relu, out_relu)
            return tuple(outs[k] for k in keep)

        _, vjp = torch.func.vjp(f, *(vals[n] for n in prim))
        g = dict(zip(prim, vjp(tuple(cots[k] for k in keep))))
        return tuple(g.get(n) for n in names) + pad

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: LinearDoubleBackward.apply(*a), info, in_dims, *args)


def _double_output_present(k, ggx, ggth, a):
    """Whether output k of `LinearDoubleBackward` (g_gy, g_x, g_a, g_theta) can be a tensor (g_x and
    g_a are also None when not needed; their cotangents are then None too)."""
    return (k == 0 or (k == 1 and ggth is not None) or (k == 2 and ggth is not None and a is not None)
            or (k == 3 and ggx is not None))


class LinearBackward(torch.autograd.Function):
    """The first-order backward of `batched_linear` as its own Function (one Triton launch).

    Outputs (dL/dx, dL/da (empty without concat), dL/dtheta); with ``need_input`` False dL/dx and
    dL/da are None (not computed). Its own backward, used when the inner loss is differentiated
    twice (MACAW's meta-gradient), is `LinearDoubleBackward` (one Triton launch), itself
    differentiable, so every order stays exact.
    """

    @staticmethod
    def forward(gy, x, a, theta, y, OUT, in_relu, out_relu, need_input=True):
        return _backward_triton(gy, x, a, theta, y, OUT, in_relu, out_relu, need_input)

    @staticmethod
    def setup_context(ctx, inputs, output):
        gy, x, a, theta, y, OUT, in_relu, out_relu = inputs[:8]
        ctx.n_inputs = len(inputs)
        ctx.save_for_backward(gy, x, a, theta, y)
        ctx.cfg = (OUT, in_relu, out_relu)
        ctx.set_materialize_grads(False)          # absent cotangents stay None: no zero tensors made
        if a is None:
            ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, ggx, gga, ggth):
        gy, x, a, theta, y = ctx.saved_tensors
        OUT, in_relu, out_relu = ctx.cfg
        if a is None:
            gga = None
        elif (ggx is None) != (gga is None):         # one half of the concat cotangent is absent
            ggx = torch.zeros_like(x) if ggx is None else ggx
            gga = torch.zeros_like(a) if gga is None else gga
        pad = (None,) * (ctx.n_inputs - 4)
        if ggx is None and ggth is None:
            return (None,) * 4 + pad
        need_x = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        g_gy, g_x, g_a, g_th = LinearDoubleBackward.apply(ggx, gga, ggth, gy, x, a, theta, y, OUT, in_relu, out_relu,
                                                          need_x)
        return (g_gy, g_x, g_a, g_th) + pad

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: LinearBackward.apply(*a), info, in_dims, *args)


class BatchedLinear(torch.autograd.Function):
    """Autograd Function of `batched_linear` / `concat_relu_linear` (a is None unless concat)."""

    @staticmethod
    def forward(x, a, theta, OUT, in_relu, out_relu, backend):
        fwd = _forward_triton if backend == "triton" else _forward_torch
        return fwd(x, a, theta, OUT, in_relu, out_relu)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, a, theta, OUT, in_relu, out_relu, backend = inputs
        ctx.save_for_backward(x, a, theta, output if out_relu else None)
        ctx.cfg = (OUT, in_relu, out_relu)
        ctx.backend = backend

    @staticmethod
    def backward(ctx, gy):
        x, a, theta, y = ctx.saved_tensors
        OUT, in_relu, out_relu = ctx.cfg
        if ctx.backend == "triton":
            need_input = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
            gx, ga, gth = LinearBackward.apply(gy, x, a, theta, y, OUT, in_relu, out_relu, need_input)
            ga = ga if a is not None else None
        else:
            gx, ga, gth = _backward_torch(gy, x, a, theta, y, OUT, in_relu, out_relu, ctx.needs_input_grad[:3])
        return gx, ga, gth, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, x, a, theta, OUT, in_relu, out_relu, backend):
        return loop_vmap(lambda *args: BatchedLinear.apply(*args), info, in_dims,
                         x, a, theta, OUT, in_relu, out_relu, backend)


def _check(x, a, theta, out_features, op):
    x = check_tensor(op, "x", x, 3)
    T, N, K = x.shape
    kw = {"dtype": x.dtype, "device": x.device}
    if a is not None:
        a = check_tensor(op, "a", a, 3, shape=(T, N, None), **kw)
        K = K + a.shape[-1]
    if isinstance(out_features, bool) or not isinstance(out_features, int) or out_features < 1:
        raise ValueError(f"{op}: out_features must be a positive int, got {out_features!r}")
    P = K * out_features + out_features
    if not isinstance(theta, Tensor) or theta.dim() not in (1, 2):
        raise ValueError(f"{op}: theta must be a (P,) or (T, P) tensor, got "
                         f"{tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__}")
    shape = (P,) if theta.dim() == 1 else (T, P)
    theta = check_tensor(op, "theta", theta, len(shape), shape=shape, **kw)
    if T < 1 or N < 1 or K < 1:
        raise ValueError(f"{op}: empty input x of shape {tuple(x.shape)}")
    return x, a, theta


def batched_linear(x: Tensor, theta: Tensor, out_features: int, *, in_relu: bool = False,
                   out_relu: bool = False, backend: str = "auto") -> Tensor:
    """y[t] = act(act_in(x[t]) @ weight_t + bias_t) for every task t in one launch.

    act_in is ReLU with ``in_relu`` (else the identity), act is ReLU with ``out_relu``; weight_t and
    bias_t are task t's row of ``theta`` (or the shared ``theta``). No reduction: one output row per
    input row.

    Args:
        x: (T, N, in) float32/float64 (any strides).
        theta: generated parameters, (T, P) per task or (P,) shared, P = in*out + out, same
            dtype/device; weight = theta[:in*out].view(in, out) (row-major), bias = theta[in*out:].
        out_features: out.
        in_relu: apply ReLU to x first (the MLP's ReLU between layers).
        out_relu: apply ReLU to the result.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        y: (T, N, out), contiguous; differentiable (any order) w.r.t. x and theta.
    """
    x, _, theta = _check(x, None, theta, out_features, _OP)
    be = resolve_backend(backend, x.device, _OP)
    return BatchedLinear.apply(x, None, theta, out_features, bool(in_relu), bool(out_relu), be)


def concat_relu_linear(h: Tensor, a: Tensor, theta: Tensor, out_features: int, *, out_relu: bool = False,
                       backend: str = "auto") -> Tensor:
    """y[t] = act(ReLU(concat(h[t], a[t])) @ weight_t + bias_t): the advantage head's first layer.

    act is ReLU with ``out_relu`` (else the identity); concat joins the last axis (H then A).

    Args:
        h: (T, N, H) the policy's last hidden pre-activation; a: (T, N, A) actions (same dtype/device).
        theta: (T, P) or (P,), P = (H + A)*out + out.
        out_features: out. out_relu: apply ReLU to the result. backend: as in `batched_linear`.

    Returns:
        y: (T, N, out); differentiable (any order) w.r.t. h, a and theta.
    """
    h, a, theta = _check(h, a, theta, out_features, "concat_relu_linear")
    be = resolve_backend(backend, h.device, "concat_relu_linear")
    return BatchedLinear.apply(h, a, theta, out_features, True, bool(out_relu), be)


def batched_linear_reference(x, theta, out_features, in_relu=False, out_relu=False, a=None):
    """Unfused autograd composition (the oracle for tests and the baseline for benches)."""
    if a is not None:
        x = torch.cat([x, a], dim=-1)
        in_relu = True
    if in_relu:
        x = torch.relu(x)
    K = x.shape[-1]
    n = K * out_features
    if theta.dim() == 1:
        y = x @ theta[:n].view(K, out_features) + theta[n:]
    else:
        y = torch.bmm(x, theta[:, :n].reshape(-1, K, out_features)) + theta[:, n:].unsqueeze(1)
    return torch.relu(y) if out_relu else y
