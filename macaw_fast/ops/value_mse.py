"""`value_mse`: MACAW's per-task value regression loss, with its bootstrapped target, in one op.

Per task t over its N rows, with the target y = ret (+ disc * v_next):

    loss_t = mean_n (v_tn - y_tn)^2

The inner value loss regresses onto the Monte-Carlo returns (y = ret); the outer one onto the
bootstrapped return y = ret + disc * V_target(terminal_obs), formed inside the kernel. The target
is a constant (no gradient flows into ret, disc or v_next; passing ones that require grad is an
error). Gradients of every order in v: the backward is one launch (`ValueMSEBackward`), its own
backward one launch (`ValueMSEDoubleBackward`), whose backward is differentiable torch ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_tensor, check_triton_mode, load_kernels, loop_vmap, resolve_backend

_OP = "value_mse"


def value_mse_launch_config(T: int, N: int, has_next: bool, backward: bool = False) -> dict:
    """Grid, constexprs and warps of the `value_mse` kernels (shared with the compile test).

    ``backward``: the first-order backward kernel (grid over row blocks too); otherwise the
    forward and double-backward kernels (one program per task).
    """
    block = 256
    grid = (T, -(-N // block)) if backward else (T,)
    return {"grid": grid, "num_warps": 4, "constexprs": {"BLOCK_N": block, "HAS_NEXT": has_next}}


def _target(ret, disc, vn):
    return ret if disc is None else ret + disc * vn


def _strides(v, ret, disc, vn):
    d, n = (disc, vn) if disc is not None else (ret, ret)
    return (*v.stride(), *ret.stride(), *d.stride(), *n.stride())


def _forward_triton(v, ret, disc, vn):
    K = load_kernels("_value_mse_kernels")
    check_triton_mode(v.device, _OP)
    T, N = v.shape
    loss = torch.empty((T,), dtype=v.dtype, device=v.device)
    has = disc is not None
    cfg = value_mse_launch_config(T, N, has)
    K.value_mse_kernel[cfg["grid"]](v, ret, disc if has else ret, vn if has else ret, loss, N,
                                    *_strides(v, ret, disc, vn), num_warps=cfg["num_warps"], **cfg["constexprs"])
    return loss


def _backward_torch(g, v, ret, disc, vn):
    """dL/dv from dL/dloss g (T,), differentiable torch ops (the composition's own rounding)."""
    return (g.unsqueeze(-1) / v.shape[-1]) * (2.0 * (v - _target(ret, disc, vn)))


def _backward_triton(g, v, ret, disc, vn):
    K = load_kernels("_value_mse_kernels")
    check_triton_mode(v.device, _OP)
    T, N = v.shape
    gv = torch.empty((T, N), dtype=v.dtype, device=v.device)
    has = disc is not None
    cfg = value_mse_launch_config(T, N, has, backward=True)
    K.value_mse_bwd_kernel[cfg["grid"]](g, v, ret, disc if has else ret, vn if has else ret, gv, N, g.stride(0),
                                        *_strides(v, ret, disc, vn), num_warps=cfg["num_warps"], **cfg["constexprs"])
    return gv


def _double_backward_torch(c, g, v, ret, disc, vn):
    """VJP of `_backward_torch` w.r.t. (g, v) for the cotangent c (T, N): (d/dg (T,), d/dv (T, N))."""
    N = v.shape[-1]
    gg = (c * (2.0 * (v - _target(ret, disc, vn)))).sum(-1) / N
    gv = (g.unsqueeze(-1) / N) * (2.0 * c)
    return gg, gv


def _double_backward_triton(c, g, v, ret, disc, vn):
    K = load_kernels("_value_mse_kernels")
    check_triton_mode(v.device, _OP)
    T, N = v.shape
    kw = {"dtype": v.dtype, "device": v.device}
    gg, gv = torch.empty((T,), **kw), torch.empty((T, N), **kw)
    has = disc is not None
    cfg = value_mse_launch_config(T, N, has)
    K.value_mse_dbwd_kernel[cfg["grid"]](c, g, v, ret, disc if has else ret, vn if has else ret, gg, gv, N,
                                         c.stride(0), c.stride(1), g.stride(0), *_strides(v, ret, disc, vn),
                                         num_warps=cfg["num_warps"], **cfg["constexprs"])
    return gg, gv


class ValueMSEDoubleBackward(torch.autograd.Function):
    """`ValueMSEBackward`'s backward in one launch: (c, g, v, ret, disc, vn) -> (d/dg, d/dv).

    Its own backward (third order) is the VJP of `_double_backward_torch`, written out in
    differentiable torch ops.
    """

    @staticmethod
    def forward(c, g, v, ret, disc, vn):
        return _double_backward_triton(c, g, v, ret, disc, vn)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, a, b):
        c, g, v, ret, disc, vn = ctx.saved_tensors
        N = v.shape[-1]
        gc = gg = gvv = None
        if a is not None:
            d2 = 2.0 * (v - _target(ret, disc, vn))
            gc = a.unsqueeze(-1) * d2 / N
            gvv = a.unsqueeze(-1) * (2.0 * c) / N
        if b is not None:
            t = (g.unsqueeze(-1) / N) * (2.0 * b)
            gc = t if gc is None else gc + t
            gg = (b * (2.0 * c)).sum(-1) / N
        return gc, gg, gvv, None, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: ValueMSEDoubleBackward.apply(*a), info, in_dims, *args)


class ValueMSEBackward(torch.autograd.Function):
    """The first-order backward of `value_mse` as its own Function (one launch): (g, v, ret,
    disc, vn) -> dL/dv. Its backward is `ValueMSEDoubleBackward`."""

    @staticmethod
    def forward(g, v, ret, disc, vn):
        return _backward_triton(g, v, ret, disc, vn)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, c):
        if c is None:
            return (None,) * 5
        g, v, ret, disc, vn = ctx.saved_tensors
        gg, gv = ValueMSEDoubleBackward.apply(c, g, v, ret, disc, vn)
        nd = ctx.needs_input_grad
        return gg if nd[0] else None, gv if nd[1] else None, None, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: ValueMSEBackward.apply(*a), info, in_dims, *args)


class ValueMSE(torch.autograd.Function):
    """Autograd Function of `value_mse`: (v, ret, disc, vn, backend) -> loss (T,)."""

    @staticmethod
    def forward(v, ret, disc, vn, backend):
        if backend == "triton":
            return _forward_triton(v, ret, disc, vn)
        return (v - _target(ret, disc, vn)).pow(2).mean(-1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, ret, disc, vn, backend = inputs
        ctx.save_for_backward(v, ret, disc, vn)
        ctx.backend = backend
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g):
        if g is None or not ctx.needs_input_grad[0]:
            return (None,) * 5
        v, ret, disc, vn = ctx.saved_tensors
        if ctx.backend == "triton":
            gv = ValueMSEBackward.apply(g, v, ret, disc, vn)
        else:
            gv = _backward_torch(g, v, ret, disc, vn)
        return gv, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, v, ret, disc, vn, backend):
        return loop_vmap(lambda *a: ValueMSE.apply(*a), info, in_dims, v, ret, disc, vn, backend)


def value_mse(v: Tensor, ret: Tensor, disc: Tensor | None = None, v_next: Tensor | None = None, *,
              backend: str = "auto") -> Tensor:
    """Per-task mean squared error of values against (bootstrapped) returns.

    Args:
        v: (T, N) float32/float64 predicted values (any strides); differentiable.
        ret: (T, N) returns (e.g. Monte-Carlo returns), same dtype/device; a constant.
        disc, v_next: (T, N) each, or both None: with them the target is ret + disc * v_next
            (MACAW's bootstrapped outer target); constants.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        loss (T,) = mean over rows of (v - target)^2; differentiable w.r.t. v to any order. The
        torch backend computes exactly ``(v - target).pow(2).mean(-1)`` and its autograd's values.
    """
    v = check_tensor(_OP, "v", v, 2)
    T, N = v.shape
    kw = {"dtype": v.dtype, "device": v.device}
    if T < 1 or N < 1:
        raise ValueError(f"{_OP}: empty input v of shape {tuple(v.shape)}")
    ret = check_tensor(_OP, "ret", ret, 2, shape=(T, N), **kw)
    if (disc is None) != (v_next is None):
        raise ValueError(f"{_OP}: disc and v_next go together (the bootstrapped target); got only one")
    consts = [("ret", ret)]
    if disc is not None:
        disc = check_tensor(_OP, "disc", disc, 2, shape=(T, N), **kw)
        v_next = check_tensor(_OP, "v_next", v_next, 2, shape=(T, N), **kw)
        consts += [("disc", disc), ("v_next", v_next)]
    if torch.is_grad_enabled():
        for name, t in consts:
            if t.requires_grad:
                raise ValueError(f"{_OP}: {name} requires grad, but the target is a constant here "
                                 "(no gradient flows into it); pass it detached")
    be = resolve_backend(backend, v.device, _OP)
    return ValueMSE.apply(v, ret, disc, v_next, be)


def value_mse_reference(v, ret, disc=None, v_next=None):
    """Unfused composition (the oracle): ``(v - (ret [+ disc * v_next])).pow(2).mean(-1)``."""
    return (v - _target(ret, disc, v_next)).pow(2).mean(-1)
