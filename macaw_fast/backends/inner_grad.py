"""The inner gradients of the value net and the policy, each as one autograd node whose backward is
a hand-written Hessian-vector product (`value_inner_grads`, `policy_inner_grads`).

The meta-step needs, per task t, G_k[t] = d l_t / d theta_k for every layer k of the value net
(l_t = mean_b (V(s_b) - R_b)^2, theta shared by all tasks), and then differentiates through G.
``torch.autograd.grad(create_graph=True)`` gets there by recording the backward pass as a graph
(about 60 nodes for the paper's 4 layers) that the outer backward walks again. `value_inner_grads`
is ONE autograd node instead: its forward runs the MLP and the backward pass by hand, and its
backward is the exact Hessian-vector product (Pearlmutter's R-operator): given dL/dG_k (T, P_k),
it returns dL/dtheta_k = sum_t H_t dG[t] (each task's Hessian is symmetric), with the sum over tasks
formed inside the GEMMs (rows of all tasks stacked) rather than per task and then added.

Network: a_k = h_{k-1} W_k + b_k, h_k = relu(a_k) (h_{-1} = obs), V = a_{L-1} (one output),
theta_k = [W_k (in x out, row-major), b_k]. Backward: delta_{L-1} = 2 (V - R) / B,
delta_{k-1} = (delta_k W_k^T) * [a_{k-1} > 0], G_k = [h_{k-1}^T delta_k, sum_b delta_k].
R-operator along V = (dW_k, db_k) per task: Ra_k = Rh_{k-1} W_k + h_{k-1} dW_k + db_k,
Rh_k = Ra_k * [a_k > 0]; Rdelta_{L-1} = 2 Ra_{L-1} / B (+ c_t delta_{L-1} for an incoming
dL/dl_t = c_t), Rdelta_{k-1} = (Rdelta_k W_k^T + delta_k dW_k^T) * [a_{k-1} > 0];
dL/dtheta_k = [sum_t (Rh_{k-1}^T delta_k + h_{k-1}^T Rdelta_k), sum_t sum_b Rdelta_k].
The backward is first-order only (the meta-step never differentiates it again; misuse raises).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..nets import baddbmm, bmm

_threshold_backward_out = torch.ops.aten.threshold_backward.grad_input


def _mask_(g: Tensor, a: Tensor, threshold: float = 0) -> Tensor:
    """g * [a > threshold], written into g (a fresh temporary at every call site): in place it reads
    and writes the same lines, ~30-40 % faster than a new output at (T*B, width) from a cold cache."""
    return _threshold_backward_out(g, a, threshold, grad_input=g)


def _mm_t(x: Tensor, w: Tensor) -> Tensor:
    """x @ w.t() for x (R, o), w (i, o); o == 1 as a broadcast multiply."""
    return x * w.t() if w.shape[1] == 1 else x @ w.t()


class _ValueInnerGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, obs, ret, dims, *thetas):
        T, B, _ = obs.shape
        L = len(thetas)
        Ws = [th[: i * o].view(i, o) for th, (i, o) in zip(thetas, dims)]
        bs = [th[i * o:] for th, (i, o) in zip(thetas, dims)]
        hs, pre = [obs.reshape(T * B, -1)], []
        for k in range(L):
            a = torch.addmm(bs[k], hs[-1], Ws[k])                  # (T*B, out)
            pre.append(a)
            if k < L - 1:
                hs.append(torch.relu(a))
        diff = pre[-1].view(T, B) - ret
        loss = diff.pow(2).mean(-1)
        delta = diff.reshape(T * B, 1) * (2.0 / B)
        grads, deltas = [None] * L, [None] * L
        for k in range(L - 1, -1, -1):
            i, o = dims[k]
            deltas[k] = delta
            d3 = delta.view(T, B, o)
            gw = bmm(hs[k].view(T, B, i).transpose(1, 2), d3)
            grads[k] = torch.cat([gw.reshape(T, i * o), d3.sum(1)], 1)
            if k > 0:
                delta = _mask_(_mm_t(delta, Ws[k]), pre[k - 1], 0)
        ctx.dims = dims
        # The ReLU masks [a_k > 0] of the backward are read off h_{k+1} = relu(a_k) (same mask), so
        # the pre-activations are not kept: one activation-sized tensor less per hidden layer.
        ctx.save_for_backward(*thetas, *hs, *deltas)
        return (loss, *grads)

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss, *dgrads):
        dims = ctx.dims
        L = len(dims)
        saved = ctx.saved_tensors
        thetas, hs, deltas = saved[:L], saved[L:2 * L], saved[2 * L:]
        T = dgrads[0].shape[0] if dgrads[0] is not None else (dloss.shape[0] if dloss is not None else None)
        if T is None:
            T = next(g.shape[0] for g in dgrads if g is not None)
        rows = hs[0].shape[0]
        B = rows // T
        Ws = [th[: i * o].view(i, o) for th, (i, o) in zip(thetas, dims)]
        dW, db = [], []
        for g, (i, o), th in zip(dgrads, dims, thetas):
            if g is None:
                dW.append(None)
                db.append(None)
            else:
                dW.append(g[:, : i * o].view(T, i, o))
                db.append(g[:, i * o:])
        # R-forward: Ra_k, and Rh_k = Ra_k * [a_k > 0] for the hidden layers.
        Rh = [None] * L                 # Rh[k]: R of layer k's input h_{k-1} (None: zero)
        Ra_last = None
        for k in range(L):
            i, o = dims[k]
            ra = None
            if dW[k] is not None:
                ra = baddbmm(db[k].unsqueeze(1), hs[k].view(T, B, i), dW[k]).view(rows, o)
            if Rh[k] is not None:
                ra = Rh[k] @ Ws[k] if ra is None else ra.addmm_(Rh[k], Ws[k])
            if k < L - 1:
                Rh[k + 1] = None if ra is None else _mask_(ra, hs[k + 1], 0)
            else:
                Ra_last = ra
        # R-backward, with dL/dtheta_k formed over the rows of all tasks at once.
        rdelta = None
        if Ra_last is not None:
            rdelta = Ra_last * (2.0 / B)
        if dloss is not None:
            c = deltas[L - 1] * dloss.repeat_interleave(B).unsqueeze(1)
            rdelta = c if rdelta is None else rdelta + c
        out = [None] * L
        for k in range(L - 1, -1, -1):
            i, o = dims[k]
            delta = deltas[k]
            parts_h, parts_d = [], []
            if Rh[k] is not None:
                parts_h.append(Rh[k])
                parts_d.append(delta)
            if rdelta is not None:
                parts_h.append(hs[k])
                parts_d.append(rdelta)
            out[k] = _summed_grad(thetas[k], list(zip(parts_h, parts_d)), rdelta, i, o)
            if k > 0:
                nxt = None
                if rdelta is not None:
                    nxt = _mm_t(rdelta, Ws[k])
                if dW[k] is not None:
                    extra = bmm(delta.view(T, B, o), dW[k].transpose(1, 2)).view(rows, i)
                    nxt = extra if nxt is None else nxt.add_(extra)
                rdelta = None if nxt is None else _mask_(nxt, hs[k], 0)
        return (None, None, None, *out)


def value_inner_grads(thetas: Sequence[Tensor], dims: Sequence[tuple[int, int]], obs: Tensor,
                      ret: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Per-task inner losses (T,) and gradients [(T, P_k)] of the value regression, as one node.

    thetas: shared generated parameters (P_k,) of a ReLU MLP with one output; dims: (in, out) per
    layer; obs (T, B, in_0); ret (T, B) regression targets (no gradient). Equal to
    ``autograd.grad(loss.sum(), [th.expand(T, -1) ...], create_graph=True)`` on the plain forward,
    and differentiable once more through a hand-written Hessian-vector product (module docstring).
    """
    if obs.requires_grad or ret.requires_grad:
        raise ValueError("value_inner_grads: obs and ret must not require gradients")
    if len(thetas) != len(dims) or dims[-1][1] != 1:
        raise ValueError(f"value_inner_grads: expected one theta per layer and one output, got "
                         f"{len(thetas)} thetas for dims {list(dims)}")
    for k, (th, (i, o)) in enumerate(zip(thetas, dims)):
        if th.shape != (i * o + o,):
            raise ValueError(f"value_inner_grads: theta {k} has shape {tuple(th.shape)}, expected ({i * o + o},)")
    loss, *grads = _ValueInnerGrad.apply(obs, ret, tuple(tuple(d) for d in dims), *thetas)
    return loss, grads


# ------------------------------------------------------------------------------------------------
# The policy: trunk MLP with mu = tanh(o), Gaussian log-likelihood weighted by w, and the
# advantage head on relu(cat(a_{L-2}, action)) (a_{L-2}: the last hidden layer before its ReLU).
#
#   l_t = mean_b w_b [ |mu_b - act_b|^2 / (2 sigma^2) + k (log sigma + log(2 pi) / 2) ]
#         + s * mean_b (pred_b - A_b)^2                         (s = softplus(kappa), head only)
#
# Backward: delta_o = w (mu - act)(1 - mu^2) / (B sigma^2); delta_pred = 2 s (pred - A) / B down
# the head to delta_cat = (delta_h0 H_0^T) * [cat > 0], whose first `width` columns join the trunk
# at a_{L-2}: delta_{L-2} = (delta_{L-1} W_{L-1}^T) * [a_{L-2} > 0] + delta_cat[:, :width].
# R-operator: as for the value net through the ReLU layers, plus at the output
# R delta_o = w Rmu ((1 - mu^2) - 2 mu (mu - act)) / (B sigma^2) with Rmu = (1 - mu^2) Ro, and
# R delta_pred = 2 s Rpred / B. d<G, dG>/ds = sum_t R(mean_b (pred - A)^2) = sum 2 (pred - A) Rpred / B.

def _layer_grads(h, d, T, B):
    """Per-task generated-parameter gradients [(T, in*out + out)] of a layer: [h^T d, sum_b d]."""
    i, o = h.shape[1], d.shape[1]
    gw = bmm(h.view(T, B, i).transpose(1, 2), d.view(T, B, o))
    return torch.cat([gw.reshape(T, i * o), d.view(T, B, o).sum(1)], 1)


def _summed_grad(th, h_pairs, rdelta, i, o):
    """dL/dtheta of one layer from (input, delta) pairs stacked over all tasks' rows."""
    if not h_pairs:
        return torch.zeros_like(th)
    out = torch.empty_like(th)
    gw = out[: i * o].view(i, o)
    torch.mm(h_pairs[0][0].t(), h_pairs[0][1], out=gw)
    for h, d in h_pairs[1:]:
        gw.addmm_(h.t(), d)
    if rdelta is not None:
        torch.sum(rdelta, 0, out=out[i * o:])
    else:
        out[i * o:].zero_()
    return out


class _PolicyInnerGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, obs, action, adv, weights, head_weight, cfg, *thetas):
        tdims, hdims, n_out, sigma = cfg
        T, B, _ = obs.shape
        R = T * B
        L, H = len(tdims), len(hdims)
        W = [th[: i * o].view(i, o) for th, (i, o) in zip(thetas, tdims + hdims)]
        b = [th[i * o:] for th, (i, o) in zip(thetas, tdims + hdims)]
        hs, pre = [obs.reshape(R, -1)], []
        for k in range(L):
            a = torch.addmm(b[k], hs[-1], W[k])
            pre.append(a)
            if k < L - 1:
                hs.append(torch.relu(a))
        mu = torch.tanh(pre[-1])
        act = action.reshape(R, -1)
        diff = mu - act
        wr = weights.reshape(R, 1)
        k_act = act.shape[1]
        const = k_act * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        nll = (0.5 / sigma ** 2) * diff.pow(2).sum(1) + const
        loss = (weights * nll.view(T, B)).mean(-1)
        one_m = 1.0 - mu * mu
        d_out = diff * one_m * (wr / (B * sigma ** 2))
        hh, hpre, hd, hc, e, d_cat = [], [], [None] * H, None, None, None
        if H:
            width = tdims[-1][0]
            hc = torch.cat([pre[L - 2], act], 1)
            hh = [torch.relu(hc)]
            for j in range(H):
                z = torch.addmm(b[L + j], hh[-1], W[L + j])
                hpre.append(z)
                if j < H - 1:
                    hh.append(torch.relu(z))
            e = hpre[-1].view(T, B) - adv
            loss = loss + head_weight * e.pow(2).mean(-1)
            d = e.reshape(R, 1) * (2.0 / B) * head_weight
            for j in range(H - 1, -1, -1):
                hd[j] = d
                if j > 0:
                    d = _mask_(_mm_t(d, W[L + j]), hpre[j - 1], 0)
            d_cat = _mask_(_mm_t(d, W[L]), hc, 0)[:, :width]
        deltas = [None] * L
        d = d_out
        for k in range(L - 1, -1, -1):
            deltas[k] = d
            if k > 0:
                d = _mask_(_mm_t(d, W[k]), pre[k - 1], 0)
                if H and k - 1 == L - 2:
                    d = d + d_cat
        grads = [_layer_grads(hs[k], deltas[k], T, B) for k in range(min(n_out, L))]
        grads += [_layer_grads(hh[j], hd[j], T, B) for j in range(max(0, n_out - L))]
        ctx.cfg = cfg
        ctx.T, ctx.B = T, B
        # ReLU masks in the backward come from the ReLU outputs (hs, hh), so the pre-activations
        # (pre, hpre and the head's input hc) are not kept.
        ctx.save_for_backward(head_weight if H else None, wr, mu, diff, one_m, e, *thetas, *hs,
                              *deltas, *hh, *hd)
        return (loss, *grads)

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss, *dgrads):
        tdims, hdims, n_out, sigma = ctx.cfg
        T, B = ctx.T, ctx.B
        R = T * B
        L, H = len(tdims), len(hdims)
        dims = tdims + hdims
        sv = list(ctx.saved_tensors)
        s, wr, mu, diff, one_m, e = sv[:6]
        pos = 6
        thetas = sv[pos:pos + L + H]; pos += L + H
        hs = sv[pos:pos + L]; pos += L                  # hs[k + 1] = relu(a_k): the mask of a_k
        deltas = sv[pos:pos + L]; pos += L
        hh = sv[pos:pos + H]; pos += H                  # hh[0] = relu(cat(a_{L-2}, act)), hh[j + 1] = relu(z_j)
        hd = sv[pos:pos + H]
        W = [th[: i * o].view(i, o) for th, (i, o) in zip(thetas, dims)]
        V = [None] * (L + H)
        for k, g in enumerate(dgrads):
            if g is not None:
                i, o = dims[k]
                V[k] = (g[:, : i * o].view(T, i, o), g[:, i * o:])

        def r_pre(k, h, rh):        # R of a layer's pre-activation from its input h and R input rh
            ra = None
            if V[k] is not None:
                i, o = dims[k]
                ra = baddbmm(V[k][1].unsqueeze(1), h.view(T, B, i), V[k][0]).view(R, o)
            if rh is not None:
                ra = rh @ W[k] if ra is None else ra.addmm_(rh, W[k])
            return ra

        # R-forward through the trunk
        rh_in, ra_trunk = [None] * L, [None] * L
        for k in range(L):
            ra_trunk[k] = r_pre(k, hs[k], rh_in[k])
            if k < L - 1 and ra_trunk[k] is not None:
                rh_in[k + 1] = _mask_(ra_trunk[k], hs[k + 1], 0)
                ra_trunk[k] = None          # only the last layer's is used again: free it now
        rd_out = None
        if ra_trunk[-1] is not None:
            rmu = one_m * ra_trunk[-1]
            rd_out = rmu * (one_m - 2.0 * mu * diff) * (wr / (B * sigma ** 2))
        d_out = deltas[-1]
        c = dloss.repeat_interleave(B).unsqueeze(1) if dloss is not None else None
        if c is not None:
            rd_out = d_out * c if rd_out is None else rd_out + d_out * c
        out = [None] * (L + H)
        ds = None
        rd_cat = None
        if H:
            width = tdims[-1][0]
            # R-forward through the head: its input relu(cat(a_{L-2}, act)) has R [Rh_{L-1}, 0]
            rhh_in = [None] * H
            if rh_in[L - 1] is not None:
                rhh_in[0] = torch.cat([rh_in[L - 1], torch.zeros_like(hh[0][:, width:])], 1)
            rz = [None] * H
            for j in range(H):
                rz[j] = r_pre(L + j, hh[j], rhh_in[j])
                if j < H - 1 and rz[j] is not None:
                    rhh_in[j + 1] = _mask_(rz[j], hh[j + 1], 0)
            rpred = rz[-1]
            rd = None
            if rpred is not None:
                rd = rpred * (2.0 / B) * s
                ds = (e.reshape(R, 1) * rpred).sum() * (2.0 / B)
            if c is not None:
                rd = hd[-1] * c if rd is None else rd + hd[-1] * c
                lh = e.pow(2).mean(-1)
                dsl = (dloss * lh).sum()
                ds = dsl if ds is None else ds + dsl
            for j in range(H - 1, -1, -1):
                i, o = dims[L + j]
                pairs = ([(rhh_in[j], hd[j])] if rhh_in[j] is not None else []) + \
                        ([(hh[j], rd)] if rd is not None else [])
                out[L + j] = _summed_grad(thetas[L + j], pairs, rd, i, o)
                nxt = _mm_t(rd, W[L + j]) if rd is not None else None
                if V[L + j] is not None:
                    extra = bmm(hd[j].view(T, B, o), V[L + j][0].transpose(1, 2)).view(R, i)
                    nxt = extra if nxt is None else nxt.add_(extra)
                if j > 0:
                    rd = None if nxt is None else _mask_(nxt, hh[j], 0)
                else:
                    rd_cat = None if nxt is None else _mask_(nxt, hh[0], 0)[:, :width]
        # R-backward through the trunk
        rd = rd_out
        for k in range(L - 1, -1, -1):
            i, o = dims[k]
            pairs = ([(rh_in[k], deltas[k])] if rh_in[k] is not None else []) + \
                    ([(hs[k], rd)] if rd is not None else [])
            out[k] = _summed_grad(thetas[k], pairs, rd, i, o)
            if k > 0:
                nxt = _mm_t(rd, W[k]) if rd is not None else None
                if V[k] is not None:
                    extra = bmm(deltas[k].view(T, B, o), V[k][0].transpose(1, 2)).view(R, i)
                    nxt = extra if nxt is None else nxt.add_(extra)
                rd = None if nxt is None else _mask_(nxt, hs[k], 0)
                if H and k - 1 == L - 2 and rd_cat is not None:
                    rd = rd_cat if rd is None else rd + rd_cat
        if ds is not None:
            ds = ds.reshape(s.shape)
        return (None, None, None, None, ds, None, *out)


def policy_inner_grads(thetas: Sequence[Tensor], trunk_dims: Sequence[tuple[int, int]],
                       head_dims: Sequence[tuple[int, int]], obs: Tensor, action: Tensor, adv: Tensor,
                       weights: Tensor, sigma: float, head_weight: Tensor | None,
                       n_grads: int) -> tuple[Tensor, list[Tensor]]:
    """Per-task inner policy losses (T,) and gradients for the first ``n_grads`` layers, one node.

    thetas: shared generated parameters (P_k,) of the trunk layers then the head layers;
    trunk_dims / head_dims: (in, out) per layer (head_dims empty: no advantage head);
    obs (T, B, obs), action (T, B, act), adv and weights (T, B) (no gradient); head_weight: the
    scalar softplus(kappa) (differentiable) or None without a head. Equal to MetaLearner's
    `_policy_inner_loss` + ``autograd.grad(create_graph=True)``, differentiable once more through a
    hand-written Hessian-vector product (see the comment above `_PolicyInnerGrad`).
    """
    for name, t in (("obs", obs), ("action", action), ("adv", adv), ("weights", weights)):
        if t.requires_grad:
            raise ValueError(f"policy_inner_grads: {name} must not require gradients")
    tdims, hdims = tuple(tuple(d) for d in trunk_dims), tuple(tuple(d) for d in head_dims)
    if len(thetas) != len(tdims) + len(hdims):
        raise ValueError(f"policy_inner_grads: {len(thetas)} thetas for {len(tdims)} trunk and {len(hdims)} head layers")
    if hdims and (len(tdims) < 2 or head_weight is None or hdims[0][0] != tdims[-1][0] + action.shape[-1]
                  or hdims[-1][1] != 1):
        raise ValueError("policy_inner_grads: the head needs >= 2 trunk layers, a head_weight, input width "
                         "(last hidden width + act) and one output")
    for k, (th, (i, o)) in enumerate(zip(thetas, tdims + hdims)):
        if th.shape != (i * o + o,):
            raise ValueError(f"policy_inner_grads: theta {k} has shape {tuple(th.shape)}, expected ({i * o + o},)")
    if not 1 <= n_grads <= len(thetas):
        raise ValueError(f"policy_inner_grads: n_grads must be in [1, {len(thetas)}], got {n_grads}")
    hw = head_weight if hdims else torch.zeros((), dtype=obs.dtype, device=obs.device)
    loss, *grads = _PolicyInnerGrad.apply(obs, action, adv, weights, hw, (tdims, hdims, n_grads, float(sigma)),
                                          *thetas)
    return loss, grads
