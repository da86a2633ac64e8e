"""The value function's inner gradients with a hand-written Hessian-vector product as their backward.

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

from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_mask = torch.ops.aten.threshold_backward        # threshold_backward(g, a, 0) = g * [a > 0]


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
            gw = torch.bmm(hs[k].view(T, B, i).transpose(1, 2), d3)
            grads[k] = torch.cat([gw.reshape(T, i * o), d3.sum(1)], 1)
            if k > 0:
                delta = _mask(delta @ Ws[k].t(), pre[k - 1], 0)
        ctx.dims = dims
        ctx.save_for_backward(*thetas, *hs, *pre[:-1], *deltas)
        return (loss, *grads)

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss, *dgrads):
        dims = ctx.dims
        L = len(dims)
        saved = ctx.saved_tensors
        thetas, hs, pre, deltas = saved[:L], saved[L:2 * L], saved[2 * L:3 * L - 1], saved[3 * L - 1:]
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
                ra = torch.baddbmm(db[k].unsqueeze(1), hs[k].view(T, B, i), dW[k]).view(rows, o)
            if Rh[k] is not None:
                ra = Rh[k] @ Ws[k] if ra is None else ra.addmm_(Rh[k], Ws[k])
            if k < L - 1:
                Rh[k + 1] = None if ra is None else _mask(ra, pre[k], 0)
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
            if parts_h:
                h_cat = parts_h[0] if len(parts_h) == 1 else torch.cat(parts_h)
                d_cat = parts_d[0] if len(parts_d) == 1 else torch.cat(parts_d)
                gw = h_cat.t() @ d_cat
                gb = rdelta.sum(0) if rdelta is not None else torch.zeros_like(thetas[k][i * o:])
                out[k] = torch.cat([gw.reshape(-1), gb])
            else:
                out[k] = torch.zeros_like(thetas[k])
            if k > 0:
                nxt = None
                if rdelta is not None:
                    nxt = rdelta @ Ws[k].t()
                if dW[k] is not None:
                    extra = torch.bmm(delta.view(T, B, o), dW[k].transpose(1, 2)).view(rows, i)
                    nxt = extra if nxt is None else nxt.add_(extra)
                rdelta = None if nxt is None else _mask(nxt, pre[k - 1], 0)
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
