"""`awr_loss`: MACAW's advantage-weighted policy loss per task, in one op (docs/algorithm.md §4).

Per task t, over its N rows:

    w_n    = exp(min((A_n - mean A) / (std A * temp), log max_weight))   (std unbiased; no gradient)
    logp_n = sum_k log N(a_nk; mu_nk, sigma^2)
    loss_t = mean_n(-w_n logp_n) [+ head_weight * mean_n((pred_n - A_n)^2)]

The bracketed advantage-head term is the inner loss's (raw A, not normalised). The weights are
computed from the advantages as constants (MACAW's advantages carry no gradient); the head term
is differentiable in pred, A and head_weight. The backward is one launch (`AWRBackward`);
differentiating it again runs the VJP of the differentiable torch backward, so gradients of
every order are exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import check_tensor, check_triton_mode, load_kernels, loop_vmap, next_pow2, resolve_backend, scalar_params

_OP = "awr_loss"


def awr_launch_config(T: int, N: int, A: int, head: bool, tanh: bool = False) -> dict:
    """Grid, block sizes and warps of `awr_loss_kernel` (shared with the compile test)."""
    return {"grid": (T,), "num_warps": 4,
            "constexprs": {"BLOCK_N": 128, "BLOCK_A": next_pow2(A), "HEAD": head, "TANH": tanh}}


def _constants(sigma, temp, max_weight, A):
    return (0.5 / sigma**2, A * (math.log(sigma) + 0.5 * math.log(2 * math.pi)), float(temp), math.log(max_weight))


def _is_tanh(consts) -> bool:
    """Whether a Function's constants tuple (`_constants` plus an optional tanh flag) asks for tanh."""
    return len(consts) > 4 and bool(consts[4])


def _weights_torch(adv, temp, max_weight):
    mean = adv.mean(-1, keepdim=True)
    std = adv.std(-1, keepdim=True)
    return ((adv - mean) / (std * temp)).clamp(max=math.log(max_weight)).exp()


def _forward_torch(mu, action, adv, pred, hw, sigma, temp, max_weight, tanh=False):
    c_half, c_norm, _, _ = _constants(sigma, temp, max_weight, mu.shape[-1])
    if tanh:
        mu = torch.tanh(mu)
    w = _weights_torch(adv, temp, max_weight)
    logp = -c_half * (action - mu).pow(2).sum(-1) - c_norm
    loss = (-w * logp).mean(-1)
    if pred is not None:
        loss = loss + hw * (pred - adv).pow(2).mean(-1)
    return loss, w


def _forward_triton(mu, action, adv, pred, hw, sigma, temp, max_weight, tanh=False):
    K = load_kernels("_awr_loss_kernels")
    check_triton_mode(mu.device, _OP)
    T, N, A = mu.shape
    par = scalar_params(_constants(sigma, temp, max_weight, A), mu.dtype, mu.device)
    loss = torch.empty((T,), dtype=mu.dtype, device=mu.device)
    w = torch.empty((T, N), dtype=mu.dtype, device=mu.device)
    head = pred is not None
    pr = pred if head else adv
    hwt = hw.reshape(1) if head else par
    cfg = awr_launch_config(T, N, A, head, tanh)
    K.awr_loss_kernel[cfg["grid"]](
        mu, action, adv, pr, hwt, par, loss, w, N, A,
        mu.stride(0), mu.stride(1), mu.stride(2), action.stride(0), action.stride(1), action.stride(2),
        adv.stride(0), adv.stride(1), pr.stride(0), pr.stride(1),
        num_warps=cfg["num_warps"], **cfg["constexprs"])
    return loss, w


def _backward_torch(g, mu, action, adv, pred, hw, w, half_inv_var, needs=(True,) * 5, tanh=False):
    """(dmu, daction, dadv, dpred, dhw) from dL/dloss g (T,), in differentiable torch ops (w constant).

    With ``tanh``, ``mu`` holds pre-activations x (means tanh(x)) and dmu is dL/dx (autograd's own
    tanh_backward, so the values equal autograd's of torch.tanh followed by the loss)."""
    N = mu.shape[1]
    gmu = gact = gadv = gpred = ghw = None
    if needs[0] or needs[1]:
        m = torch.tanh(mu) if tanh else mu
        # d(-w logp / N)/d mu = -(w / N) * 2 c (a - mu), with c = 0.5 / sigma^2
        gmu = ((-2.0 * half_inv_var / N) * g.view(-1, 1, 1)) * w.unsqueeze(-1) * (action - m)
        gact = -gmu if needs[1] else None
        gmu = (torch.ops.aten.tanh_backward(gmu, m) if tanh else gmu) if needs[0] else None
    if pred is not None and (needs[2] or needs[3] or needs[4]):
        e = pred - adv
        if needs[2] or needs[3]:
            gp = (2.0 / N) * (g * hw).unsqueeze(-1) * e
            gpred = gp if needs[3] else None
            gadv = -gp if needs[2] else None
        if needs[4]:
            ghw = (g * e.pow(2).mean(-1)).sum().reshape(hw.shape)
    return gmu, gact, gadv, gpred, ghw


def _backward_triton(g, mu, action, adv, pred, hw, w, consts, tanh=False):
    K = load_kernels("_awr_loss_kernels")
    check_triton_mode(mu.device, _OP)
    T, N, A = mu.shape
    par = scalar_params(consts, mu.dtype, mu.device)
    kw = {"dtype": mu.dtype, "device": mu.device}
    head = pred is not None
    gmu, gact = torch.empty((T, N, A), **kw), torch.empty((T, N, A), **kw)
    gadv = torch.empty((T, N) if head else (0,), **kw)
    gpred = torch.empty((T, N) if head else (0,), **kw)
    ghw_t = torch.empty((T,) if head else (0,), **kw)
    pr = pred if head else adv
    cfg = awr_launch_config(T, N, A, head, tanh)
    K.awr_loss_bwd_kernel[cfg["grid"]](
        g, mu, action, adv, pr, hw.reshape(1) if head else par, w, par, gmu, gact,
        gadv if head else gmu, gpred if head else gmu, ghw_t if head else gmu, N, A, g.stride(0),
        mu.stride(0), mu.stride(1), mu.stride(2), action.stride(0), action.stride(1), action.stride(2),
        adv.stride(0), adv.stride(1), pr.stride(0), pr.stride(1),
        num_warps=cfg["num_warps"], **cfg["constexprs"])
    ghw = ghw_t.sum().reshape(hw.shape) if head else ghw_t
    return gmu, gact, gadv, gpred, ghw


def awr_double_backward_launch_config(T: int, N: int, A: int, head: bool, has_cmu: bool = True,
                                      has_cact: bool = False, has_cpred: bool = True, has_cadv: bool = False,
                                      has_chw: bool = False, tanh: bool = False) -> dict:
    """Grid, block sizes, warps and flags of `awr_loss_dbwd_kernel` (shared with the compile test).

    The defaults are the flags of MACAW's meta-step: cotangents of dmu and dpred only.
    """
    cfg = awr_launch_config(T, N, A, head, tanh)
    cfg["constexprs"] = dict(cfg["constexprs"], HAS_CMU=has_cmu, HAS_CACT=has_cact, HAS_CD=has_cmu or has_cact,
                             HAS_CPRED=has_cpred and head, HAS_CADV=has_cadv and head,
                             HAS_CE=(has_cpred or has_cadv) and head, HAS_CHW=has_chw and head)
    return cfg


def _double_backward_torch(cmu, cact, cadv, cpred, chw, g, mu, action, adv, pred, hw, w, half_inv_var, tanh=False):
    """VJP of `_backward_torch` (w constant) in differentiable torch ops.

    Cotangents cmu, cact (T, N, A), cadv, cpred (T, N), chw (like hw) of (dmu, daction, dadv, dpred,
    dhw); any may be None (zero). Returns (d/dg, d/dmu, d/daction, d/dadv, d/dpred, d/dhw), None
    where a term is identically zero.
    """
    N = mu.shape[1]
    k = -2.0 * half_inv_var / N
    if tanh:                 # mu holds pre-activations x; dmu was dL/dx = (...) (1 - tanh(x)^2)
        mu = torch.tanh(mu)
        sd = 1.0 - mu * mu
    dc = cmu if (cmu is None or not tanh) else cmu * sd
    if cact is not None:
        dc = -cact if dc is None else dc - cact
    parts = []
    g_mu = g_act = g_adv = g_pred = g_hw = None
    if dc is not None:
        wd = w.unsqueeze(-1) * dc
        parts.append(k * (wd * (action - mu)).sum((-1, -2)))
        g_mu = (-k) * g.view(-1, 1, 1) * wd
        g_act = -g_mu
        if tanh:
            if cmu is not None:
                g_mu = g_mu + (-2.0 * k) * g.view(-1, 1, 1) * w.unsqueeze(-1) * (mu * (action - mu) * cmu)
            g_mu = g_mu * sd
    if pred is not None:
        e = pred - adv
        E = cpred
        if cadv is not None:
            E = -cadv if E is None else E - cadv
        de = None
        if E is not None:
            eE = (e * E).sum(-1)
            parts.append((2.0 / N) * hw * eE)
            de = (2.0 / N) * (g * hw).unsqueeze(-1) * E
            g_hw = ((2.0 / N) * (g * eE).sum()).reshape(hw.shape)
        if chw is not None:
            parts.append(chw * e.pow(2).mean(-1))
            t2 = (2.0 / N) * (chw * g).unsqueeze(-1) * e
            de = t2 if de is None else de + t2
        if de is not None:
            g_pred, g_adv = de, -de
    g_g = sum(parts[1:], parts[0]) if parts else torch.zeros_like(g)
    return g_g, g_mu, g_act, g_adv, g_pred, g_hw


def _double_backward_triton(cmu, cact, cadv, cpred, chw, g, mu, action, adv, pred, hw, w, consts, tanh=False):
    """`_double_backward_torch` in one Triton launch (plus a sum over tasks for d/dhw)."""
    K = load_kernels("_awr_loss_kernels")
    check_triton_mode(mu.device, _OP)
    T, N, A = mu.shape
    head = pred is not None
    if not head:
        cadv = cpred = chw = None
    par = scalar_params(consts, mu.dtype, mu.device)
    kw = {"dtype": mu.dtype, "device": mu.device}
    has_cd = cmu is not None or cact is not None
    has_ce = cpred is not None or cadv is not None
    gg = torch.empty((T,), **kw)
    gmu = torch.empty((T, N, A), **kw) if has_cd else None
    gact = torch.empty((T, N, A), **kw) if has_cd else None
    gadv = torch.empty((T, N), **kw) if head else None
    gpred = torch.empty((T, N), **kw) if head else None
    ghw_t = torch.empty((T,), **kw) if head else None
    dummy = gg
    c = lambda t: dummy if t is None else t.contiguous()  # noqa: E731
    pr, av = (pred, adv) if head else (mu, mu)
    cfg = awr_double_backward_launch_config(T, N, A, head, cmu is not None, cact is not None,
                                            cpred is not None, cadv is not None, chw is not None, tanh)
    K.awr_loss_dbwd_kernel[cfg["grid"]](
        c(cmu), c(cact), c(cadv), c(cpred), dummy if chw is None else chw.reshape(1), g, mu, action,
        av, pr, hw.reshape(1) if head else par, w, par, gg, c(gmu), c(gact), c(gadv), c(gpred), c(ghw_t), N, A,
        g.stride(0),
        mu.stride(0), mu.stride(1), mu.stride(2), action.stride(0), action.stride(1), action.stride(2),
        av.stride(0), av.stride(1) if head else av.stride(2), pr.stride(0), pr.stride(1) if head else pr.stride(2),
        num_warps=cfg["num_warps"], **cfg["constexprs"])
    g_hw = ghw_t.sum().reshape(hw.shape) if has_ce else None
    if head and not (has_ce or chw is not None):
        gadv = gpred = None
    return gg, gmu, gact, gadv, gpred, g_hw


class AWRDoubleBackward(torch.autograd.Function):
    """The second-order backward of `awr_loss` (`AWRBackward`'s backward): one Triton launch plus a
    sum for d/dhw. Inputs: cotangents (cmu, cact, cadv, cpred, chw) (None when absent), then
    AWRBackward's inputs. Outputs (d/dg, d/dmu, d/daction, d/dadv, d/dpred, d/dhw), None where a
    term is zero. Its own backward (third order) is the VJP of `_double_backward_torch`.
    """

    @staticmethod
    def forward(cmu, cact, cadv, cpred, chw, g, mu, action, adv, pred, hw, w, consts):
        return _double_backward_triton(cmu, cact, cadv, cpred, chw, g, mu, action, adv, pred, hw, w, consts[:4],
                                       _is_tanh(consts))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:12])
        ctx.consts = inputs[12]
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *cots):
        saved = ctx.saved_tensors
        w = saved[11]
        prim = [k for k in range(11) if saved[k] is not None]
        keep = [k for k, c in enumerate(cots) if c is not None]
        if not keep:
            return (None,) * 13

        def f(*args):
            v = list(saved[:11])
            for k, a in zip(prim, args):
                v[k] = a
            outs = _double_backward_torch(*v, w, ctx.consts[0], _is_tanh(ctx.consts))
            return tuple(outs[k] if outs[k] is not None else torch.zeros_like(cots[k]) for k in keep)

        _, vjp = torch.func.vjp(f, *(saved[k] for k in prim))
        got = dict(zip(prim, vjp(tuple(cots[k] for k in keep))))
        return tuple(got.get(k) for k in range(11)) + (None, None)

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: AWRDoubleBackward.apply(*a), info, in_dims, *args)


class AWRBackward(torch.autograd.Function):
    """The first-order backward of `awr_loss` as its own Function (one Triton launch, plus a sum
    for dL/dhw). Outputs (dmu, daction, dadv, dpred, dhw); the last three are empty without the
    head term. Its own backward is `AWRDoubleBackward` (one Triton launch plus a sum), itself
    differentiable, so every order is exact.
    """

    @staticmethod
    def forward(g, mu, action, adv, pred, hw, w, consts):
        return _backward_triton(g, mu, action, adv, pred, hw, w, consts[:4], _is_tanh(consts))

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, mu, action, adv, pred, hw, w, consts = inputs
        ctx.save_for_backward(g, mu, action, adv, pred, hw, w)
        ctx.consts = consts
        ctx.set_materialize_grads(False)          # absent cotangents stay None: no zero tensors made
        if pred is None:
            ctx.mark_non_differentiable(*output[2:])

    @staticmethod
    def backward(ctx, c_mu, c_act, c_adv, c_pred, c_hw):
        g, mu, action, adv, pred, hw, w = ctx.saved_tensors
        if pred is None:
            c_adv = c_pred = c_hw = None
        if all(c is None for c in (c_mu, c_act, c_adv, c_pred, c_hw)):
            return (None,) * 8
        out = AWRDoubleBackward.apply(c_mu, c_act, c_adv, c_pred, c_hw, g, mu, action, adv, pred, hw, w, ctx.consts)
        return (*out, None, None)

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: AWRBackward.apply(*a), info, in_dims, *args)


class AWRLoss(torch.autograd.Function):
    """Autograd Function of `awr_loss`; outputs (loss (T,), weights (T, N), not differentiable)."""

    @staticmethod
    def forward(mu, action, adv, pred, hw, sigma, temp, max_weight, backend, tanh=False):
        fwd = _forward_triton if backend == "triton" else _forward_torch
        return fwd(mu, action, adv, pred, hw, sigma, temp, max_weight, tanh)

    @staticmethod
    def setup_context(ctx, inputs, output):
        mu, action, adv, pred, hw, sigma, temp, max_weight, backend = inputs[:9]
        tanh = bool(inputs[9]) if len(inputs) > 9 else False
        ctx.n_inputs = len(inputs)
        _, w = output
        ctx.mark_non_differentiable(w)
        ctx.set_materialize_grads(False)          # no zero tensor for the weights' (absent) gradient
        ctx.save_for_backward(mu, action, adv, pred, hw, w)
        ctx.consts = _constants(sigma, temp, max_weight, mu.shape[-1]) + (1.0 if tanh else 0.0,)
        ctx.backend = backend

    @staticmethod
    def backward(ctx, g, _gw):
        mu, action, adv, pred, hw, w = ctx.saved_tensors
        pad = (None,) * (ctx.n_inputs - 5)
        if g is None:
            return (None,) * 5 + pad
        if ctx.backend == "triton":
            gmu, gact, gadv, gpred, ghw = AWRBackward.apply(g, mu, action, adv, pred, hw, w, ctx.consts)
            if pred is None:
                gadv = gpred = ghw = None
        else:
            gmu, gact, gadv, gpred, ghw = _backward_torch(g, mu, action, adv, pred, hw, w, ctx.consts[0],
                                                          ctx.needs_input_grad[:5], _is_tanh(ctx.consts))
        nd = ctx.needs_input_grad
        return (gmu if nd[0] else None, gact if nd[1] else None, gadv if nd[2] else None,
                gpred if nd[3] else None, ghw if nd[4] else None) + pad

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: AWRLoss.apply(*a), info, in_dims, *args)


def awr_loss(mu: Tensor, action: Tensor, adv: Tensor, *, sigma: float = 0.2, temp: float = 1.0,
             max_weight: float = 20.0, pred: Tensor | None = None, head_weight: Tensor | float | None = None,
             return_weights: bool = False, tanh: bool = False, backend: str = "auto"):
    """Per-task advantage-weighted Gaussian log-likelihood loss of MACAW's policy.

    For task t with rows n = 1..N, means m (``mu``, or tanh(mu) with ``tanh``), actions a and
    advantages A:

        w_n    = exp(min((A_n - mean(A)) / (std(A) * temp), log(max_weight)))     (std unbiased)
        loss_t = mean_n [ -w_n * log N(a_n; m_n, sigma^2 I) ]
                 (+ head_weight * mean_n (pred_n - A_n)^2 with ``pred`` and ``head_weight``),

    log N(a; m, sigma^2 I) = -|a - m|^2 / (2 sigma^2) - A_dim (log sigma + log(2 pi) / 2) summed over
    the A_dim action dimensions. The weights are constants (no gradient through A there).

    Args:
        mu: (T, N, A) float32/float64 policy means (any strides).
        action: (T, N, A) dataset actions, same dtype/device.
        adv: (T, N) advantages; the weights use them as constants (N >= 2: unbiased std).
        sigma: the fixed policy standard deviation. temp: temperature tau of the weights.
        max_weight: weights are clamped at this value (normalised advantages at its log).
        pred: (T, N) the advantage head's predictions; with ``head_weight`` adds the inner loss's
            head_weight * mean((pred - adv)^2) (raw advantages).
        head_weight: 0-d tensor (e.g. softplus(kappa), differentiable) or float.
        return_weights: also return the weights (T, N) (no gradient).
        tanh: ``mu`` holds the policy's pre-activations x and the means are tanh(x) (MACAW's
            policy head), applied inside the op: its gradient is w.r.t. x.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        loss (T,) (and weights (T, N) with ``return_weights``). Differentiable (any order) w.r.t.
        mu, action, pred, head_weight, and adv through the head term only.
    """
    mu = check_tensor(_OP, "mu", mu, 3)
    T, N, A = mu.shape
    kw = {"dtype": mu.dtype, "device": mu.device}
    action = check_tensor(_OP, "action", action, 3, shape=(T, N, A), **kw)
    adv = check_tensor(_OP, "adv", adv, 2, shape=(T, N), **kw)
    if N < 2:
        raise ValueError(f"{_OP}: advantage weights need at least 2 rows per task (unbiased std), got N={N}")
    if T < 1 or A < 1:
        raise ValueError(f"{_OP}: empty input mu of shape {tuple(mu.shape)}")
    for name, v in (("sigma", sigma), ("temp", temp), ("max_weight", max_weight)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{_OP}: {name} must be a positive finite float, got {v!r}")
    if (pred is None) != (head_weight is None):
        raise ValueError(f"{_OP}: pred and head_weight go together (the advantage-head term); got only one")
    hw = None
    if pred is not None:
        pred = check_tensor(_OP, "pred", pred, 2, shape=(T, N), **kw)
        if isinstance(head_weight, Tensor):
            hw = check_tensor(_OP, "head_weight", head_weight, **kw)
            if hw.numel() != 1:
                raise ValueError(f"{_OP}: head_weight must hold one number, got shape {tuple(hw.shape)}")
        elif isinstance(head_weight, (int, float)) and not isinstance(head_weight, bool):
            hw = torch.tensor(float(head_weight), **kw)
        else:
            raise TypeError(f"{_OP}: head_weight must be a tensor or a float, got {type(head_weight).__name__}")
    be = resolve_backend(backend, mu.device, _OP)
    if tanh:
        loss, w = AWRLoss.apply(mu, action, adv, pred, hw, float(sigma), float(temp), float(max_weight), be, True)
    else:
        loss, w = AWRLoss.apply(mu, action, adv, pred, hw, float(sigma), float(temp), float(max_weight), be)
    return (loss, w) if return_weights else loss


def awr_loss_reference(mu, action, adv, sigma=0.2, temp=1.0, max_weight=20.0, pred=None, head_weight=None):
    """Unfused autograd composition, as in the paper's code (the oracle and the bench baseline)."""
    adv_c = adv.detach()
    w = ((adv_c - adv_c.mean(-1, keepdim=True)) / (adv_c.std(-1, keepdim=True) * temp)).clamp(
        max=math.log(max_weight)).exp()
    k = action.shape[-1]
    logp = (-0.5 / sigma**2) * (action - mu).pow(2).sum(-1) - k * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    loss = (-w * logp).mean(-1)
    if pred is not None:
        loss = loss + head_weight * (pred - adv).pow(2).mean(-1)
    return loss
