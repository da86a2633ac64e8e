"""`wlinear_adapt`: one inner SGD step of a weight-transform layer for every task at once (docs/algorithm.md §5).

For a layer with weight W (P, D), bias b (P,), latent z (D,) and per-task gradients G (T, P) of the
inner loss w.r.t. the generated parameters theta = W z + b, one step with rates
(eta_z, eta_W, eta_b) gives, per task t,

    u_t      = G_t W                              (D,)
    z'_t     = z - eta_z u_t
    c_t      = eta_W (z . z'_t) + eta_b
    theta'_t = W z'_t + b - c_t G_t

and, for a parameter-space target mix alpha * phi + (1 - alpha) * phi',

    z^tgt_t     = alpha z + (1 - alpha) z'_t
    theta^tgt_t = W z^tgt_t + b - (1 - alpha)(eta_W (z . z^tgt_t) + eta_b) G_t

W is read twice (once for U = G W, once for [Z'; Z^tgt] W^T), the minimum: no task ever gets its
own copy of W. On the Triton backend the backward takes three more launches (`AdaptBackward`);
differentiating it again (a second derivative of the op) runs the VJP of the differentiable torch
backward, which is also the torch backend's backward, so gradients of every order are exact.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import check_tensor, check_triton_mode, load_kernels, loop_vmap, next_pow2, resolve_backend, scalar_params

_OP = "wlinear_adapt"


def adapt_launch_config(T: int, P: int, D: int, with_target: bool) -> dict:
    """Block sizes and grids of the three kernels for a layer of shape (P, D) and T tasks.

    Shared by the launcher and the ahead-of-time compile test, so both see the same
    specialisations. Returns a dict with one entry per kernel: ``grid``, ``constexprs``,
    ``num_warps``, plus ``P_CHUNK``/``NPART``.
    """
    R = 2 * T if with_target else T
    block_p = 64
    block_d = min(next_pow2(D), 64)
    n_blocks = -(-P // block_p)
    per_prog = -(-n_blocks // 128)                   # at most ~128 programs: enough for one wave
    p_chunk = per_prog * block_p
    npart = -(-P // p_chunk)
    return {
        "P_CHUNK": p_chunk, "NPART": npart, "R": R,
        "reduce": {"grid": (npart, -(-D // block_d)), "num_warps": 4,
                   "constexprs": {"BLOCK_T": max(16, next_pow2(T)), "BLOCK_P": block_p, "BLOCK_D": block_d}},
        "mix": {"grid": (1,), "num_warps": 4,
                "constexprs": {"BLOCK_T": next_pow2(T), "BLOCK_D": next_pow2(D), "WITH_TARGET": with_target}},
        "expand": {"grid": (-(-P // block_p),), "num_warps": 4,
                   "constexprs": {"BLOCK_R": max(16, next_pow2(R)), "BLOCK_P": block_p, "BLOCK_D": block_d}},
    }


def adapt_backward_launch_config(T: int, P: int, D: int, with_target: bool, has_gu: bool = False) -> dict:
    """Block sizes and grids of the three backward kernels (shared with the compile test)."""
    R = 2 * T if with_target else T
    block_p, block_d = 64, min(next_pow2(D), 64)
    n_blocks = -(-P // block_p)
    p_chunk = -(-n_blocks // 128) * block_p
    npart = -(-P // p_chunk)
    return {
        "P_CHUNK": p_chunk, "NPART": npart, "R": R,
        "reduce": {"grid": (npart, -(-D // block_d)), "num_warps": 4,
                   "constexprs": {"BLOCK_R": max(16, next_pow2(R)), "BLOCK_P": block_p, "BLOCK_D": block_d}},
        "mix": {"grid": (1,), "num_warps": 4,
                "constexprs": {"BLOCK_T": next_pow2(T), "BLOCK_D": next_pow2(D), "WITH_TARGET": with_target,
                               "HAS_GU": has_gu}},
        "expand": {"grid": (n_blocks,), "num_warps": 4,
                   "constexprs": {"BLOCK_M": max(16, next_pow2(R + T)), "BLOCK_T": max(16, next_pow2(T)),
                                  "BLOCK_P": block_p, "BLOCK_D": block_d, "WITH_TARGET": with_target}},
    }


def _forward_torch(W, b, z, G, rates, alpha):
    eta_z, eta_w, eta_b = rates[0], rates[1], rates[2]
    u = G @ W                                                      # (T, D), first read of W
    z_new = z - eta_z * u
    c = eta_w * (z_new @ z) + eta_b
    if alpha is None:
        wz = z_new @ W.t()                                         # second read of W
        return torch.addcmul(wz + b, c.unsqueeze(-1), G, value=-1.0), None, u
    z_tgt = alpha * z + (1.0 - alpha) * z_new
    c_tgt = (1.0 - alpha) * (eta_w * (z_tgt @ z) + eta_b)
    T = G.shape[0]
    wz = torch.addmm(b, torch.cat([z_new, z_tgt]), W.t())         # (2T, P), second read of W
    theta_new = torch.addcmul(wz[:T], c.unsqueeze(-1), G, value=-1.0)
    theta_tgt = torch.addcmul(wz[T:], c_tgt.unsqueeze(-1), G, value=-1.0)
    return theta_new, theta_tgt, u


def _forward_triton(W, b, z, G, rates, alpha):
    K = load_kernels("_wlinear_adapt_kernels")
    check_triton_mode(W.device, _OP)
    P, D = W.shape
    T = G.shape[0]
    with_target = alpha is not None
    cfg = adapt_launch_config(T, P, D, with_target)
    kw = {"device": W.device, "dtype": W.dtype}
    part = torch.empty((cfg["NPART"], T, D), **kw)
    c = cfg["reduce"]
    K.adapt_reduce_kernel[c["grid"]](G, W, part, T, P, D, cfg["P_CHUNK"], G.stride(0), G.stride(1),
                                     W.stride(0), W.stride(1), num_warps=c["num_warps"], **c["constexprs"])
    R = cfg["R"]
    zc = torch.empty((R, D), **kw)
    coef = torch.empty((R,), **kw)
    u = torch.empty((T, D), **kw)
    alpha_t = scalar_params([alpha if with_target else 0.0], W.dtype, W.device)
    c = cfg["mix"]
    K.adapt_mix_kernel[c["grid"]](part, z, rates, alpha_t, zc, coef, u, T, D, cfg["NPART"],
                                  num_warps=c["num_warps"], **c["constexprs"])
    out = torch.empty((T, P), **kw)
    tgt = torch.empty((T, P), **kw) if with_target else None
    c = cfg["expand"]
    K.adapt_expand_kernel[c["grid"]](zc, coef, W, b, G, out, tgt if with_target else out, T, R, P, D,
                                     W.stride(0), W.stride(1), G.stride(0), G.stride(1),
                                     num_warps=c["num_warps"], **c["constexprs"])
    return out, tgt, u


def _backward_torch(W, z, G, rates, u, alpha, A, At, gu, needs):
    """Gradients of (theta', theta^tgt, u) w.r.t. (W, b, z, G, rates), in differentiable torch ops.

    A, At, gu are the incoming gradients of theta', theta^tgt and u; any may be None (zero), and
    the terms they feed are then skipped (the double-backward pass reaches this node through u only).
    """
    eta_z, eta_w, eta_b = rates[0], rates[1], rates[2]
    T = G.shape[0]
    z_new = z - eta_z * u
    zz_new = z_new @ z                                             # (T,) z . z'_t
    if At is not None:
        a1 = 1.0 - alpha
        z_tgt = alpha * z + a1 * z_new
        zz_tgt = z_tgt @ z
    rows = [m for m in (A, At) if m is not None]
    AW = (torch.cat(rows) @ W if len(rows) == 2 else rows[0] @ W) if rows else None   # one GEMM
    g_znew = g_zt = None
    if A is not None:
        s = -(A * G).sum(-1)                                       # dL/dc_t
        g_znew = AW[:T] + eta_w * s.unsqueeze(-1) * z
    if At is not None:
        st = -(At * G).sum(-1)                                     # dL/dc^tgt_t / (1 - alpha)
        g_zt = AW[-T:] + (a1 * eta_w) * st.unsqueeze(-1) * z
        g_znew = a1 * g_zt if g_znew is None else g_znew + a1 * g_zt
    g_u = None if g_znew is None else -eta_z * g_znew
    if gu is not None:
        g_u = gu if g_u is None else g_u + gu
    gW = gb = gz = gG = grates = None
    if needs[0]:
        pairs = [(m, v) for m, v in ((A, z_new), (At, z_tgt if At is not None else None), (G, g_u))
                 if m is not None and v is not None]
        if pairs:
            gW = torch.cat([m for m, _ in pairs]).t() @ torch.cat([v for _, v in pairs])   # (P, D), one GEMM
    if needs[1] and rows:
        gb = sum(m.sum(0) for m in rows)
    if needs[2] and g_znew is not None:
        gz = g_znew.sum(0)
        if A is not None:
            gz = gz + eta_w * (s @ z_new)
        if At is not None:
            gz = gz + alpha * g_zt.sum(0) + (a1 * eta_w) * (st @ z_tgt)
    if needs[3]:
        terms = []
        if g_u is not None:
            terms.append(g_u @ W.t())
        if A is not None:
            terms.append(-(eta_w * zz_new + eta_b).unsqueeze(-1) * A)
        if At is not None:
            terms.append(-(a1 * (eta_w * zz_tgt + eta_b)).unsqueeze(-1) * At)
        gG = sum(terms[1:], terms[0]) if terms else None
    if needs[4]:
        zero = torch.zeros((), dtype=G.dtype, device=G.device)
        g_ez = -(g_znew * u).sum() if g_znew is not None else zero
        g_ew = s @ zz_new if A is not None else zero
        g_eb = s.sum() if A is not None else zero
        if At is not None:
            g_ew = g_ew + a1 * (st @ zz_tgt)
            g_eb = g_eb + a1 * st.sum()
        grates = torch.stack([g_ez, g_ew, g_eb])
    return gW, gb, gz, gG, grates


def _backward_triton(W, z, G, rates, u, alpha, A, At, gu):
    """First-order gradients (W, b, z, G, rates) with three Triton launches (A must be given)."""
    K = load_kernels("_wlinear_adapt_kernels")
    check_triton_mode(W.device, _OP)
    P, D = W.shape
    T = G.shape[0]
    with_target = At is not None
    cfg = adapt_backward_launch_config(T, P, D, with_target, gu is not None)
    R = cfg["R"]
    kw = {"device": W.device, "dtype": W.dtype}
    part = torch.empty((cfg["NPART"], R, D), **kw)
    spart = torch.empty((cfg["NPART"], R), **kw)
    At_ = At if with_target else A
    c = cfg["reduce"]
    K.adapt_bwd_reduce_kernel[c["grid"]](
        A, At_, G, W, part, spart, T, R, P, D, cfg["P_CHUNK"], A.stride(0), A.stride(1), At_.stride(0), At_.stride(1),
        G.stride(0), G.stride(1), W.stride(0), W.stride(1), num_warps=c["num_warps"], **c["constexprs"])
    v = torch.empty((R + T, D), **kw)
    coef = torch.empty((R,), **kw)
    gz = torch.empty((D,), **kw)
    grates = torch.empty((3,), **kw)
    alpha_t = scalar_params([alpha if with_target else 0.0], W.dtype, W.device)
    gu_ = gu.contiguous() if gu is not None else u
    c = cfg["mix"]
    K.adapt_bwd_mix_kernel[c["grid"]](part, spart, z, rates, alpha_t, u, gu_, v, coef, gz, grates, T, D,
                                      cfg["NPART"], num_warps=c["num_warps"], **c["constexprs"])
    gW = torch.empty((P, D), **kw)
    gG = torch.empty((T, P), **kw)
    gb = torch.empty((P,), **kw)
    c = cfg["expand"]
    K.adapt_bwd_expand_kernel[c["grid"]](
        A, At_, G, W, v, coef, gW, gG, gb, T, R, P, D, A.stride(0), A.stride(1), At_.stride(0), At_.stride(1),
        G.stride(0), G.stride(1), W.stride(0), W.stride(1), num_warps=c["num_warps"], **c["constexprs"])
    return gW, gb, gz, gG, grates


def _backward_vjp(base, alpha, cot):
    """VJP of `_backward_torch` at base = [W, z, G, rates, u, A, At, gu] (None: absent) for the
    cotangents ``cot`` of (gW, gb, gz, gG, grates) (None: zero). Returns 8 gradients (None for
    absent inputs): the backward of `AdaptBackward` (third order of the op)."""
    W, z, G, rates = base[0], base[1], base[2], base[3]
    names = [k for k, t in enumerate(base) if t is not None]

    def f(*ts):
        args = list(base)
        for k, t in zip(names, ts):
            args[k] = t
        W_, z_, G_, r_, u_, A_, At_, gu_ = args
        return _backward_torch(W_, z_, G_, r_, u_, alpha, A_, At_, gu_, (True,) * 5)

    shapes = (W.shape, W.shape[:1], z.shape, G.shape, rates.shape)
    cot = tuple(W.new_zeros(sh) if c is None else c for c, sh in zip(cot, shapes))
    _, vjp = torch.func.vjp(f, *[base[k] for k in names])
    grads = vjp(cot)
    out = [None] * 8
    for k, g in zip(names, grads):
        out[k] = g
    return out


class AdaptBackward(torch.autograd.Function):
    """The first-order backward of `wlinear_adapt` as its own Function (Triton forward).

    Its own backward (needed only for third-order use of the op: double backward through the
    inner step's backward) is the vector-Jacobian product of the differentiable torch twin of the
    backward, so every order stays exact.
    """

    @staticmethod
    def forward(W, z, G, rates, u, A, At, gu, alpha):
        return _backward_triton(W, z, G, rates, u, alpha, A, At, gu)

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, z, G, rates, u, A, At, gu, alpha = inputs
        ctx.save_for_backward(W, z, G, rates, u, A, At, gu)
        ctx.alpha = alpha

    @staticmethod
    def backward(ctx, *cot):
        return (*_backward_vjp(list(ctx.saved_tensors), ctx.alpha, cot), None)

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: AdaptBackward.apply(*a), info, in_dims, *args)


class WLinearAdapt(torch.autograd.Function):
    """Autograd Function of `wlinear_adapt`; outputs (theta', theta^tgt or empty, u = G W)."""

    @staticmethod
    def forward(W, b, z, G, rates, alpha, backend):
        fwd = _forward_triton if backend == "triton" else _forward_torch
        out, tgt, u = fwd(W, b, z, G, rates, alpha)
        if tgt is None:
            tgt = out.new_empty((0,) + tuple(out.shape[1:]))
        return out, tgt, u

    @staticmethod
    def setup_context(ctx, inputs, output):
        W, b, z, G, rates, alpha, backend = inputs
        _, _, u = output
        ctx.save_for_backward(W, z, G, rates, u)
        ctx.alpha = alpha
        ctx.backend = backend
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_out, g_tgt, g_u):
        W, z, G, rates, u = ctx.saved_tensors
        if ctx.alpha is None:
            g_tgt = None
        if g_out is None and g_tgt is None and g_u is None:
            return (None,) * 7
        if ctx.backend == "triton" and g_out is not None:
            grads = AdaptBackward.apply(W, z, G, rates, u, g_out, g_tgt, g_u, ctx.alpha)
        else:
            grads = _backward_torch(W, z, G, rates, u, ctx.alpha, g_out, g_tgt, g_u, ctx.needs_input_grad[:5])
        return (*grads, None, None)

    @staticmethod
    def vmap(info, in_dims, W, b, z, G, rates, alpha, backend):
        return loop_vmap(lambda *a: WLinearAdapt.apply(*a), info, in_dims, W, b, z, G, rates, alpha, backend)


def wlinear_adapt(W: Tensor, b: Tensor, z: Tensor, G: Tensor, rates: Tensor, alpha: float | None = None,
                  *, backend: str = "auto"):
    """Adapted generated parameters of one weight-transform layer for T tasks (docs/algorithm.md §5).

    The layer's parameters (z, W, b) generate theta = W z + b. One SGD step of task t on them, with
    inner-loss gradient G[t] = dL_t/dtheta (so dL_t/dW = G[t] z^T, dL_t/db = G[t], dL_t/dz = W^T G[t]),
    gives z'_t = z - eta_z W^T G[t] and the adapted generated parameters

        theta'_t = (W - eta_W G[t] z^T) z'_t + (b - eta_b G[t]) = W z'_t + b - (eta_W z.z'_t + eta_b) G[t],

    computed without any per-task copy of W. With ``alpha`` also the target mix of the parameters
    before (phi = (z, W, b)) and after (phi'_t) the step, alpha*phi + (1-alpha)*phi'_t, as generated
    parameters: theta^tgt_t = W z^tgt_t + b - (1-alpha)(eta_W z.z^tgt_t + eta_b) G[t] with
    z^tgt_t = alpha z + (1-alpha) z'_t. No reduction: one row per task.

    Args:
        W: (P, D) float32/float64, the layer's weight (any strides).
        b: (P,) same dtype/device, the layer's bias.
        z: (D,) the layer's latent.
        G: (T, P) per-task gradients of the inner loss w.r.t. theta = W z + b (any strides).
        rates: (3,) the step sizes (eta_z, eta_W, eta_b), e.g. softplus of learned rho.
        alpha: with a float in [0, 1], also return the target mix alpha*phi + (1-alpha)*phi'.
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        theta' (T, P); with ``alpha``, the pair (theta' (T, P), theta^tgt (T, P)).
        Differentiable (any order) w.r.t. W, b, z, G and rates.
    """
    W = check_tensor(_OP, "W", W, 2)
    P, D = W.shape
    kw = {"dtype": W.dtype, "device": W.device}
    b = check_tensor(_OP, "b", b, 1, shape=(P,), **kw)
    z = check_tensor(_OP, "z", z, 1, shape=(D,), **kw)
    G = check_tensor(_OP, "G", G, 2, shape=(None, P), **kw)
    rates = check_tensor(_OP, "rates", rates, 1, shape=(3,), **kw)
    if G.shape[0] < 1 or P < 1 or D < 1:
        raise ValueError(f"{_OP}: empty input (T={G.shape[0]}, P={P}, D={D})")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"{_OP}: alpha must be None or a float in [0, 1], got {alpha!r}")
        alpha = float(alpha)
    be = resolve_backend(backend, W.device, _OP)
    if be == "triton":
        b, z, rates = b.contiguous(), z.contiguous(), rates.contiguous()
    out, tgt, _ = WLinearAdapt.apply(W, b, z, G, rates, alpha, be)
    return out if alpha is None else (out, tgt)


def wlinear_adapt_reference(W, b, z, G, rates, alpha=None):
    """Plain autograd composition of the same step (the float64 oracle for tests and benches)."""
    eta_z, eta_w, eta_b = rates[0], rates[1], rates[2]
    T = G.shape[0]
    outs, tgts = [], []
    for t in range(T):
        g = G[t]
        Wn = W - eta_w * torch.outer(g, z)                         # explicit per-task copy of W
        zn = z - eta_z * (W.t() @ g)
        bn = b - eta_b * g
        outs.append(Wn @ zn + bn)
        if alpha is not None:
            tgts.append((alpha * W + (1 - alpha) * Wn) @ (alpha * z + (1 - alpha) * zn)
                        + alpha * b + (1 - alpha) * bn)
    out = torch.stack(outs)
    return out if alpha is None else (out, torch.stack(tgts))


# ---------------------------------------------------------------------------- many layers at once

MAX_GROUP_LAYERS = 6     # = _wlinear_adapt_kernels.MAX_GROUP_LAYERS (that module needs triton)


def _groups(n: int):
    return [range(s, min(s + MAX_GROUP_LAYERS, n)) for s in range(0, n, MAX_GROUP_LAYERS)]


def _launch_group(kernel, grid, slots: list[dict], shared: dict, cfg: dict) -> None:
    """Launch a group kernel: slot l's arguments get suffix l (pointers: before '_ptr'); unused
    slots repeat slot 0's (never read)."""
    kw = dict(shared)
    for l in range(MAX_GROUP_LAYERS):
        for k, v in (slots[l] if l < len(slots) else slots[0]).items():
            kw[k[:-4] + f"{l}_ptr" if k.endswith("_ptr") else f"{k}{l}"] = v
    kernel[grid](**kw, NL=len(slots), num_warps=cfg["num_warps"], **cfg["constexprs"])


def _forward_triton_many(Ws, bs, zs, Gs, rates, alpha):
    K = load_kernels("_wlinear_adapt_kernels")
    check_triton_mode(Ws[0].device, _OP)
    T, D = Gs[0].shape[0], Ws[0].shape[1]
    with_target = alpha is not None
    kw = {"device": Ws[0].device, "dtype": Ws[0].dtype}
    alpha_t = scalar_params([alpha if with_target else 0.0], Ws[0].dtype, Ws[0].device)
    outs, tgts, us = [None] * len(Ws), [None] * len(Ws), [None] * len(Ws)
    for grp in _groups(len(Ws)):
        cfgs = {i: adapt_launch_config(T, Ws[i].shape[0], D, with_target) for i in grp}
        parts = {i: torch.empty((cfgs[i]["NPART"], T, D), **kw) for i in grp}
        R = cfgs[grp[0]]["R"]
        zc = {i: torch.empty((R, D), **kw) for i in grp}
        coef = {i: torch.empty((R,), **kw) for i in grp}
        for i in grp:
            us[i] = torch.empty((T, D), **kw)
            outs[i] = torch.empty((T, Ws[i].shape[0]), **kw)
            tgts[i] = torch.empty((T, Ws[i].shape[0]), **kw) if with_target else None
        c = cfgs[grp[0]]["reduce"]
        _launch_group(K.adapt_reduce_group_kernel,
                      (max(cfgs[i]["NPART"] for i in grp), c["grid"][1], len(grp)),
                      [{"g_ptr": Gs[i], "w_ptr": Ws[i], "part_ptr": parts[i], "P": Ws[i].shape[0],
                        "P_CHUNK": cfgs[i]["P_CHUNK"], "stride_gt": Gs[i].stride(0), "stride_gp": Gs[i].stride(1),
                        "stride_wp": Ws[i].stride(0), "stride_wd": Ws[i].stride(1), "NPART": cfgs[i]["NPART"]}
                       for i in grp], {"T": T, "D": D}, c)
        c = cfgs[grp[0]]["mix"]
        _launch_group(K.adapt_mix_group_kernel, (len(grp),),
                      [{"part_ptr": parts[i], "z_ptr": zs[i], "rates_ptr": rates[i], "zc_ptr": zc[i],
                        "coef_ptr": coef[i], "u_ptr": us[i], "NPART": cfgs[i]["NPART"]} for i in grp],
                      {"alpha_ptr": alpha_t, "T": T, "D": D}, c)
        c = cfgs[grp[0]]["expand"]
        _launch_group(K.adapt_expand_group_kernel,
                      (max(-(-Ws[i].shape[0] // c["constexprs"]["BLOCK_P"]) for i in grp), len(grp)),
                      [{"zc_ptr": zc[i], "coef_ptr": coef[i], "w_ptr": Ws[i], "b_ptr": bs[i], "g_ptr": Gs[i],
                        "out_ptr": outs[i], "tgt_ptr": tgts[i] if with_target else outs[i], "P": Ws[i].shape[0],
                        "stride_wp": Ws[i].stride(0), "stride_wd": Ws[i].stride(1), "stride_gt": Gs[i].stride(0),
                        "stride_gp": Gs[i].stride(1)} for i in grp], {"T": T, "R": R, "D": D}, c)
    return outs, tgts, us


def _backward_triton_many(Ws, zs, Gs, rates, us, alpha, As, Ats, gus, grates):
    """`_backward_triton` for many layers (each with A given; At / gu present for all or none):
    returns per-layer (gW, gb, gz, gG) and writes each layer's rate gradient into grates[i]."""
    K = load_kernels("_wlinear_adapt_kernels")
    check_triton_mode(Ws[0].device, _OP)
    T, D = Gs[0].shape[0], Ws[0].shape[1]
    with_target = Ats[0] is not None
    has_gu = gus[0] is not None
    kw = {"device": Ws[0].device, "dtype": Ws[0].dtype}
    alpha_t = scalar_params([alpha if with_target else 0.0], Ws[0].dtype, Ws[0].device)
    res = [None] * len(Ws)
    for grp in _groups(len(Ws)):
        cfgs = {i: adapt_backward_launch_config(T, Ws[i].shape[0], D, with_target, has_gu) for i in grp}
        R = cfgs[grp[0]]["R"]
        At_ = {i: Ats[i] if with_target else As[i] for i in grp}
        part = {i: torch.empty((cfgs[i]["NPART"], R, D), **kw) for i in grp}
        spart = {i: torch.empty((cfgs[i]["NPART"], R), **kw) for i in grp}
        c = cfgs[grp[0]]["reduce"]
        _launch_group(K.adapt_bwd_reduce_group_kernel,
                      (max(cfgs[i]["NPART"] for i in grp), c["grid"][1], len(grp)),
                      [{"a_ptr": As[i], "at_ptr": At_[i], "g_ptr": Gs[i], "w_ptr": Ws[i], "part_ptr": part[i],
                        "spart_ptr": spart[i], "P": Ws[i].shape[0], "P_CHUNK": cfgs[i]["P_CHUNK"],
                        "stride_at_": As[i].stride(0), "stride_ap": As[i].stride(1), "stride_tt": At_[i].stride(0),
                        "stride_tp": At_[i].stride(1), "stride_gt": Gs[i].stride(0), "stride_gp": Gs[i].stride(1),
                        "stride_wp": Ws[i].stride(0), "stride_wd": Ws[i].stride(1), "NPART": cfgs[i]["NPART"]}
                       for i in grp], {"T": T, "R": R, "D": D}, c)
        v = {i: torch.empty((R + T, D), **kw) for i in grp}
        coef = {i: torch.empty((R,), **kw) for i in grp}
        gz = {i: torch.empty((D,), **kw) for i in grp}
        gu_ = {i: gus[i].contiguous() if has_gu else us[i] for i in grp}
        c = cfgs[grp[0]]["mix"]
        _launch_group(K.adapt_bwd_mix_group_kernel, (len(grp),),
                      [{"part_ptr": part[i], "spart_ptr": spart[i], "z_ptr": zs[i], "rates_ptr": rates[i],
                        "u_ptr": us[i], "gu_ptr": gu_[i], "v_ptr": v[i], "coef_ptr": coef[i], "gz_ptr": gz[i],
                        "grates_ptr": grates[i], "NPART": cfgs[i]["NPART"]} for i in grp],
                      {"alpha_ptr": alpha_t, "T": T, "D": D}, c)
        gW = {i: torch.empty(tuple(Ws[i].shape), **kw) for i in grp}
        gG = {i: torch.empty((T, Ws[i].shape[0]), **kw) for i in grp}
        gb = {i: torch.empty((Ws[i].shape[0],), **kw) for i in grp}
        c = cfgs[grp[0]]["expand"]
        _launch_group(K.adapt_bwd_expand_group_kernel,
                      (max(-(-Ws[i].shape[0] // c["constexprs"]["BLOCK_P"]) for i in grp), len(grp)),
                      [{"a_ptr": As[i], "at_ptr": At_[i], "g_ptr": Gs[i], "w_ptr": Ws[i], "v_ptr": v[i],
                        "coef_ptr": coef[i], "gw_ptr": gW[i], "gg_ptr": gG[i], "gb_ptr": gb[i], "P": Ws[i].shape[0],
                        "stride_at_": As[i].stride(0), "stride_ap": As[i].stride(1), "stride_tt": At_[i].stride(0),
                        "stride_tp": At_[i].stride(1), "stride_gt": Gs[i].stride(0), "stride_gp": Gs[i].stride(1),
                        "stride_wp": Ws[i].stride(0), "stride_wd": Ws[i].stride(1)} for i in grp],
                      {"T": T, "R": R, "D": D}, c)
        for i in grp:
            res[i] = (gW[i], gb[i], gz[i], gG[i])
    return res


def _stack_rows(rows, rates):
    """(Lr, 3) rate gradient from per-layer rows (None: zero) for the first len(rows) layers."""
    if all(r is None for r in rows) and len(rows) > 0:
        return None
    zero = rates.new_zeros((3,))
    full = [r if r is not None else zero for r in rows] + [zero] * (rates.shape[0] - len(rows))
    return torch.stack(full)


class AdaptBackwardMany(torch.autograd.Function):
    """`AdaptBackward` for L layers at once (three group launches per six layers): inputs
    (alpha, L, rates (Lr, 3), then per layer W, z, G, u, A, At, gu as seven lists of L);
    outputs per layer gW, gb, gz, gG (four lists of L), then the rate gradient (Lr, 3) (rows past L
    zero). Its backward (third order) is the per-layer VJP of the torch backward."""

    @staticmethod
    def forward(alpha, L, rates, *flat):
        Ws, zs, Gs, us, As, Ats, gus = (list(flat[k * L:(k + 1) * L]) for k in range(7))
        Lr = rates.shape[0]
        grates = (rates.new_zeros if L < Lr else rates.new_empty)((Lr, 3))
        res = _backward_triton_many(Ws, zs, Gs, rates, us, alpha, As, Ats, gus, grates)
        return (*[r[0] for r in res], *[r[1] for r in res], *[r[2] for r in res], *[r[3] for r in res], grates)

    @staticmethod
    def setup_context(ctx, inputs, output):
        alpha, L, rates = inputs[:3]
        ctx.save_for_backward(rates, *inputs[3:])
        ctx.alpha, ctx.L = alpha, L
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *cot):
        saved = ctx.saved_tensors
        rates, L = saved[0], ctx.L
        flat = saved[1:]
        per = [[flat[k * L + i] for k in range(7)] for i in range(L)]    # W, z, G, u, A, At, gu
        cg = cot[-1]
        outs = [[None] * 7 for _ in range(L)]
        rate_rows = [None] * L
        for i, (W, z, G, u, A, At, gu) in enumerate(per):
            c = (cot[i], cot[L + i], cot[2 * L + i], cot[3 * L + i], None if cg is None else cg[i])
            if all(x is None for x in c):
                continue
            g = _backward_vjp([W, z, G, rates[i], u, A, At, gu], ctx.alpha, c)
            outs[i] = [g[0], g[1], g[2], g[4], g[5], g[6], g[7]]
            rate_rows[i] = g[3]
        flat_out = [outs[i][k] for k in range(7) for i in range(L)]
        return (None, None, _stack_rows(rate_rows, rates), *flat_out)

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: AdaptBackwardMany.apply(*a), info, in_dims, *args)


class WLinearAdaptMany(torch.autograd.Function):
    """Autograd Function of `wlinear_adapt_many`: inputs (alpha, backend, L, rates (Lr, 3), then
    W, b, z, G as four lists of L); outputs theta' (L), theta^tgt or empty (L), u = G W (L)."""

    @staticmethod
    def forward(alpha, backend, L, rates, *flat):
        Ws, bs, zs, Gs = (list(flat[k * L:(k + 1) * L]) for k in range(4))
        if backend == "triton":
            outs, tgts, us = _forward_triton_many(Ws, bs, zs, Gs, rates, alpha)
        else:
            res = [_forward_torch(Ws[i], bs[i], zs[i], Gs[i], rates[i], alpha) for i in range(L)]
            outs, tgts, us = ([r[k] for r in res] for k in range(3))
        tgts = [t if t is not None else o.new_empty((0,) + tuple(o.shape[1:])) for t, o in zip(tgts, outs)]
        return (*outs, *tgts, *us)

    @staticmethod
    def setup_context(ctx, inputs, output):
        alpha, backend, L, rates = inputs[:4]
        flat = inputs[4:]
        ctx.save_for_backward(rates, *flat[:L], *flat[2 * L:3 * L], *flat[3 * L:4 * L], *output[2 * L:])
        ctx.alpha, ctx.backend, ctx.L = alpha, backend, L
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, *grads):
        L = ctx.L
        saved = ctx.saved_tensors
        rates = saved[0]
        Ws, zs, Gs, us = (list(saved[1 + k * L:1 + (k + 1) * L]) for k in range(4))
        g_out = list(grads[:L])
        g_tgt = list(grads[L:2 * L]) if ctx.alpha is not None else [None] * L
        g_u = list(grads[2 * L:])
        nd = ctx.needs_input_grad
        gWs, gbs, gzs, gGs = [None] * L, [None] * L, [None] * L, [None] * L
        flags = {(g_tgt[i] is None, g_u[i] is None) for i in range(L)}
        if ctx.backend == "triton" and all(g is not None for g in g_out) and len(flags) == 1:
            res = AdaptBackwardMany.apply(ctx.alpha, L, rates, *Ws, *zs, *Gs, *us, *g_out, *g_tgt, *g_u)
            gWs, gbs, gzs, gGs = (list(res[k * L:(k + 1) * L]) for k in range(4))
            grates = res[-1]
        else:
            rows = [None] * L
            for i in range(L):
                if g_out[i] is None and g_tgt[i] is None and g_u[i] is None:
                    continue
                if ctx.backend == "triton" and g_out[i] is not None:
                    g = AdaptBackward.apply(Ws[i], zs[i], Gs[i], rates[i], us[i], g_out[i], g_tgt[i], g_u[i],
                                            ctx.alpha)
                else:
                    g = _backward_torch(Ws[i], zs[i], Gs[i], rates[i], us[i], ctx.alpha, g_out[i], g_tgt[i], g_u[i],
                                        (True,) * 5)
                gWs[i], gbs[i], gzs[i], gGs[i], rows[i] = g
            grates = _stack_rows(rows, rates)
        pick = lambda k, xs: [x if nd[4 + k * L + i] else None for i, x in enumerate(xs)]  # noqa: E731
        return (None, None, None, grates if nd[3] else None,
                *pick(0, gWs), *pick(1, gbs), *pick(2, gzs), *pick(3, gGs))

    @staticmethod
    def vmap(info, in_dims, *args):
        return loop_vmap(lambda *a: WLinearAdaptMany.apply(*a), info, in_dims, *args)


def wlinear_adapt_many(Ws, bs, zs, Gs, rates: Tensor, alpha: float | None = None, *, backend: str = "auto"):
    """`wlinear_adapt` for the first L layers of a net at once (three launches per six layers).

    Args:
        Ws, bs, zs, Gs: per layer W (P_l, D), b (P_l,), z (D,), G (T, P_l): L layers sharing T and D,
            one dtype and device.
        rates: (Lr, 3) step sizes of all the net's layers (Lr >= L); layer l uses rates[l]. Passing
            the whole tensor (not rows of it) keeps its gradient one tensor, with zero rows past L.
        alpha: None, or a float in [0, 1] for the target mix (every layer).
        backend: 'auto' | 'triton' | 'torch' (see `macaw_fast.ops`).

    Returns:
        A list of L results of `wlinear_adapt` (theta', or (theta', theta^tgt) with ``alpha``);
        differentiable to any order like it.
    """
    Ws, bs, zs, Gs = list(Ws), list(bs), list(zs), list(Gs)
    L = len(Ws)
    if not (L == len(bs) == len(zs) == len(Gs)) or L < 1:
        raise ValueError(f"{_OP}: Ws, bs, zs and Gs must have one entry per layer (at least one), got "
                         f"{len(Ws)}, {len(bs)}, {len(zs)} and {len(Gs)}")
    W0 = check_tensor(_OP, "Ws[0]", Ws[0], 2)
    D = W0.shape[1]
    kw = {"dtype": W0.dtype, "device": W0.device}
    T = check_tensor(_OP, "Gs[0]", Gs[0], 2, **kw).shape[0]
    for i in range(L):
        W = check_tensor(_OP, f"Ws[{i}]", Ws[i], 2, shape=(None, D), **kw)
        P = W.shape[0]
        check_tensor(_OP, f"bs[{i}]", bs[i], 1, shape=(P,), **kw)
        check_tensor(_OP, f"zs[{i}]", zs[i], 1, shape=(D,), **kw)
        check_tensor(_OP, f"Gs[{i}]", Gs[i], 2, shape=(T, P), **kw)
        if T < 1 or P < 1 or D < 1:
            raise ValueError(f"{_OP}: empty input in layer {i} (T={T}, P={P}, D={D})")
    rates = check_tensor(_OP, "rates", rates, 2, shape=(None, 3), **kw)
    if rates.shape[0] < L:
        raise ValueError(f"{_OP}: rates must have a row per layer (>= {L}), got shape {tuple(rates.shape)}")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"{_OP}: alpha must be None or a float in [0, 1], got {alpha!r}")
        alpha = float(alpha)
    be = resolve_backend(backend, W0.device, _OP)
    if be == "triton":
        bs, zs, rates = [b.contiguous() for b in bs], [z.contiguous() for z in zs], rates.contiguous()
    res = WLinearAdaptMany.apply(alpha, be, L, rates, *Ws, *bs, *zs, *Gs)
    outs, tgts = res[:L], res[L:2 * L]
    return list(outs) if alpha is None else list(zip(outs, tgts))
