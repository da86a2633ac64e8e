"""The CPU strategy's low-rank W-gradient machinery and its compiled kernels (docs/algorithm.md §5).

Every use of a weight-transform layer's W in the meta-step is a matrix product whose gradient with
respect to W has rank at most T, so instead of letting autograd build a dense P x D gradient per
use, each use records its factors in the layer's `WGradGatherer`, and W's gradient is formed once
(one GEMM, or never: `lowrank_adam` updates W straight from the factors). The gatherer is handed to
every function here explicitly; `CpuBackend` keeps one per generated-parameter leaf of a step.

The compiled kernels (`macaw_fast._C`: ``wlinear_generate``, ``wlinear_left``/``wlinear_right``,
``value_forward``) are used where they apply and fall back to the same torch expression otherwise.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._openmp import kernel_threads
from ..nets import WLinear


class WGradGatherer:
    """Collects the factors of dL/dW = sum_k u_k^T v_k from every use of one layer's W.

    The last node to run backward (the one that generated theta = W z + b, or
    `leaf_factors` after a chunked backward) turns them into W's gradient.
    """

    def __init__(self) -> None:
        self.u: list[Tensor] = []   # (k, P)
        self.v: list[Tensor] = []   # (k, D)


# The Functions below define forward(ctx, ...) rather than a separate setup_context: the latter
# makes every .apply bind its arguments with inspect.signature (~50 us a call, 16 calls a step).

class _GenerateTheta(torch.autograd.Function):
    """theta = W z + b; its backward also folds in the W-gradient factors of later uses of W."""

    @staticmethod
    def forward(ctx, weight, bias, z, acc):
        ctx.save_for_backward(weight, z)
        ctx.acc = acc
        return _generate([(weight, z, bias)])[0]     # the same sums as `generate_thetas`

    @staticmethod
    @once_differentiable
    def backward(ctx, dtheta):
        weight, z = ctx.saved_tensors
        acc = ctx.acc
        # (P, K) @ (K, D) with a contiguous (P, K) left factor: ~1.6x faster than a transposed one.
        u = torch.cat([dtheta.unsqueeze(1)] + [f.t() for f in acc.u], dim=1)
        v = torch.cat([z.unsqueeze(0)] + acc.v)
        acc.u, acc.v = [], []
        return u @ v, dtheta, weight.t() @ dtheta, None


class _LeftMulW(torch.autograd.Function):
    """Y = G @ W for G (T, P): dG = dY W^T; dW = G^T dY is recorded as factors."""

    @staticmethod
    def forward(ctx, g, weight, acc):
        ctx.save_for_backward(g, weight)
        ctx.acc = acc
        return g @ weight

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        g, weight = ctx.saved_tensors
        ctx.acc.u.append(g)
        ctx.acc.v.append(dy)
        return dy @ weight.t(), None, None


class _RightMulWT(torch.autograd.Function):
    """X = Z @ W^T for Z (T, D): dZ = dX W; dW = dX^T Z is recorded as factors."""

    @staticmethod
    def forward(ctx, z, weight, acc):
        ctx.save_for_backward(z, weight)
        ctx.acc = acc
        return z @ weight.t()

    @staticmethod
    @once_differentiable
    def backward(ctx, dx):
        z, weight = ctx.saved_tensors
        ctx.acc.u.append(dx)
        ctx.acc.v.append(z)
        return dx @ weight, None, None


class _AdaptLowRank(torch.autograd.Function):
    """`WLinear.adapt` of several layers as ONE autograd node (theta leaves with a W-gradient gatherer).

    Per layer, with rates (eta_z, eta_W, eta_b) and per-task inner gradients G (T, P):
    z' = z - eta_z G W, c = eta_W z'.z + eta_b, theta' = W z' + b - c G (docs/algorithm.md §5). Backward, from
    dtheta' (T, P): db = sum_t dtheta', dc = -rowdot(dtheta', G), dz' = dtheta' W + eta_W dc z^T,
    dz = sum_t dz' + eta_W z'^T dc, d(eta_z, eta_W, eta_b) = (-<dz', G W>, dc.(z' z), sum dc),
    dG = -c dtheta' - eta_z dz' W^T; W's gradient dtheta'^T z' + G^T (-eta_z dz') goes to the
    layer's gatherer as two factor pairs (the order `_LeftMulW` / `_RightMulWT` record them in).
    Saves the ~40 small autograd nodes per layer of the op-by-op version; first-order only.
    """

    @staticmethod
    def forward(ctx, rates, alpha, ws, accs, thetas, *zbg):
        ctx.set_materialize_grads(False)
        L = len(ws)
        r = rates.tolist()
        outs, tgts, saved = [], [], []
        for k in range(L):
            z, b, g = zbg[3 * k: 3 * k + 3]
            W = ws[k]
            ez, ew, eb = r[k]
            gw = w_left(g, W)                                     # (T, D)
            z_new = torch.add(z, gw, alpha=-ez)
            wz = w_right(z_new, W)                                # (T, P) = W z'
            s = torch.mv(z_new, z)                                # (T,) z'.z
            c = s * ew + eb
            if alpha is not None:
                # W^tgt = W - (1-a) eta_W g z^T, z^tgt = a z + (1-a) z', b^tgt = b - (1-a) eta_b g
                z_tgt = torch.lerp(z_new, z, alpha)
                c_tgt = (torch.mv(z_tgt, z) * ew + eb) * (1.0 - alpha)
                tgt = torch.add(thetas[k] * alpha, wz + b, alpha=1.0 - alpha)
                tgts.append(tgt.addcmul_(c_tgt.unsqueeze(-1), g, value=-1.0))
            outs.append(wz.add_(b).addcmul_(c.unsqueeze(-1), g, value=-1.0))
            saved += [W, z, g, gw, z_new, s, c]
        ctx.accs, ctx.r, ctx.L = accs, r, L
        ctx.save_for_backward(*saved)
        if tgts:
            ctx.mark_non_differentiable(*tgts)
        return (*outs, *tgts)

    @staticmethod
    @once_differentiable
    def backward(ctx, *douts):
        L, r = ctx.L, ctx.r
        sv = ctx.saved_tensors
        drates = torch.zeros(L, 3, dtype=sv[0].dtype, device=sv[0].device)
        grads = []
        for k in range(L):
            dth = douts[k]
            if dth is None:
                grads += [None, None, None]
                continue
            W, z, g, gw, z_new, s, c = sv[7 * k: 7 * k + 7]
            acc = ctx.accs[k]
            ez, ew, eb = r[k]
            db = dth.sum(0)
            dc = (dth * g).sum(1).neg_()                          # (T,)
            dz_new = w_left(dth, W)                               # (T, D)
            dz_new.addr_(dc, z, alpha=ew)
            dz = torch.addmv(dz_new.sum(0), z_new.t(), dc, alpha=ew)
            dgw = dz_new * (-ez)                                  # dL/d(G W)
            dg = w_right(dgw, W, dth * (-c).unsqueeze(-1))
            acc.u += [dth, g]
            acc.v += [z_new, dgw]
            drates[k, 0] = -(dz_new * gw).sum()
            drates[k, 1] = dc @ s
            drates[k, 2] = dc.sum()
            grads += [dz, db, dg]
        return (drates, None, None, None, None, *grads)



def adapt_many(layers: Sequence[WLinear], thetas: Sequence[Tensor], accs: Sequence[WGradGatherer],
               grads: Sequence[Tensor], rates: Tensor, alpha: float | None = None):
    """`WLinear.adapt` of every layer as one autograd node; ``rates`` (L, 3) for the L layers, ``accs``
    the layers' W-gradient gatherers. Returns the list of theta' (T, P) and, with ``alpha``, the list
    of target mixes (no gradient), like `WLinear.adapt` per layer."""
    L = len(layers)
    zbg = [t for layer, g in zip(layers, grads) for t in (layer.z, layer.bias, g)]
    out = _AdaptLowRank.apply(rates, alpha, tuple(m.weight.detach() for m in layers), tuple(accs),
                              tuple(th.detach() for th in thetas), *zbg)
    return (list(out[:L]), list(out[L:])) if alpha is not None else list(out)


def generate(layer: WLinear, acc: WGradGatherer) -> Tensor:
    """theta = W z + b (P,) by a node whose backward also folds in the W-gradient factors that
    later uses of W recorded in ``acc`` (first-order only: misuse raises)."""
    return _GenerateTheta.apply(layer.weight, layer.bias, layer.z, acc)


def adapt(layer: WLinear, theta: Tensor, acc: WGradGatherer, grad: Tensor, rates: Tensor,
          alpha: float | None = None):
    """`WLinear.adapt` with the two products by W recording their W-gradient factors in ``acc``."""
    eta_z, eta_w, eta_b = rates.unbind()
    z_new = layer.z - eta_z * _LeftMulW.apply(grad, layer.weight, acc)
    wz_new = _RightMulWT.apply(z_new, layer.weight, acc)
    return layer.adapt_from(theta, grad, z_new, wz_new, eta_w, eta_b, alpha)


def leaf_factors(layer: WLinear, theta: Tensor, acc: WGradGatherer) -> tuple[Tensor, Tensor]:
    """W's gradient gathered for a generated-parameter leaf ``theta`` as factors (A (K, P), B (K, D)),
    dL/dW = A^T B. Row 0 of A is dL/dtheta (b's gradient; W^T A[0] is z's), row 0 of B is z.
    Clears the gathered factors."""
    dtheta = theta.grad if theta.grad is not None else torch.zeros_like(theta)
    with torch.no_grad():
        a = torch.cat([dtheta.unsqueeze(0)] + acc.u)
        b = torch.cat([layer.z.unsqueeze(0)] + acc.v)
    acc.u, acc.v = [], []
    return a, b


def accumulate_leaf_grad(layer: WLinear, theta: Tensor, acc: WGradGatherer) -> None:
    """Add the gradients gathered for a generated-parameter leaf to z, W and b's ``.grad``."""
    dtheta = theta.grad
    if dtheta is None:
        dtheta = torch.zeros_like(theta)
    with torch.no_grad():
        # (P, K) @ (K, D) with a contiguous (P, K) left factor: ~1.6x faster than a transposed one
        u = torch.cat([dtheta.unsqueeze(1)] + [f.t() for f in acc.u], dim=1)
        v = torch.cat([layer.z.unsqueeze(0)] + acc.v)
        acc.u, acc.v = [], []
        for p, g in ((layer.weight, u @ v), (layer.z, layer.weight.t() @ dtheta), (layer.bias, dtheta)):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)



def generate_thetas(layers: Sequence["WLinear"]) -> list[Tensor]:
    """theta = W z + b of each WLinear layer (no graph): one compiled pass over all of them for
    C-contiguous float32/float64 CPU parameters, else one ``torch.addmv`` per layer."""
    return _generate([(m.weight, m.z, m.bias) for m in layers])


def _generate(ps: Sequence[tuple[Tensor, Tensor, Tensor]]) -> list[Tensor]:
    """W z + b for each (W, z, b), without a graph (see `generate_thetas`)."""
    with torch.no_grad():
        gen = _generate_extension()
        if (gen is None or not ps
                or any(t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64)
                       or t.dtype != ps[0][0].dtype or not t.is_contiguous() for p in ps for t in p)):
            return [torch.addmv(b, w, z) for w, z, b in ps]
        out = [torch.empty_like(b) for _, _, b in ps]
        # torch's thread count: the kernel runs on torch's OpenMP workers (macaw_fast._openmp);
        # in a paper-config step 2 threads took 0.49-0.61 ms against 0.73-0.84 for one
        gen([(w.detach().numpy(), z.detach().numpy(), b.detach().numpy(), o.numpy())
             for (w, z, b), o in zip(ps, out)], kernel_threads())
        return out


@functools.lru_cache(maxsize=None)
def _compiled(name: str):
    """``macaw_fast._C.<name>``, or None where the extension (or that function) is missing."""
    try:
        from .. import _C
    except ImportError:
        return None
    return getattr(_C, name, None)


def _skinny_extension():
    left, right = _compiled("wlinear_left"), _compiled("wlinear_right")
    return None if left is None or right is None else (left, right)


#: Smallest P for which `w_left` / `w_right` use the compiled kernels (smaller W fit in cache,
#: where the BLAS is as fast).
_SKINNY_MIN_ROWS = 1024


def _lanes(dtype: torch.dtype) -> int:
    """Lanes of the compiled kernels' 64-byte vectors (csrc/simd.hpp) for a float32/float64 dtype."""
    return 16 if dtype == torch.float32 else 8


def _skinny_ok(a: Tensor, W: Tensor) -> bool:
    return (a.device.type == "cpu" and W.dtype in (torch.float32, torch.float64) and a.dtype == W.dtype
            and W.shape[0] >= _SKINNY_MIN_ROWS and W.shape[1] >= _lanes(W.dtype)
            and a.shape[0] >= 2 and a.is_contiguous() and W.is_contiguous())


def w_left(x: Tensor, W: Tensor) -> Tensor:
    """x (T, P) @ W (P, D), no graph. On the CPU, for a tall W (the WLinear layers' P x D), by the
    compiled `macaw_fast._C.wlinear_left`: W's rows stream through once in blocks that stay in L1
    while register tiles of all T rows accumulate over them, on torch's own OpenMP threads."""
    ext = _skinny_extension() if _skinny_ok(x, W) else None
    if ext is None:
        return x @ W
    out = torch.empty(x.shape[0], W.shape[1], dtype=W.dtype)
    ext[0](x.detach().numpy(), W.detach().numpy(), out.numpy(), kernel_threads())
    return out


def w_right(z: Tensor, W: Tensor, add: Tensor | None = None) -> Tensor:
    """add + z (T, D) @ W^T (W: (P, D)), no graph; add None or (T, P) contiguous. Compiled like
    `w_left` (each output a dot product of one W row with one z row)."""
    ext = (_skinny_extension() if _skinny_ok(z, W) and (add is None or (add.is_contiguous() and add.dtype == W.dtype))
           else None)
    if ext is None:
        return z @ W.t() if add is None else torch.addmm(add, z, W.t())
    out = torch.empty(z.shape[0], W.shape[0], dtype=W.dtype)
    ext[1](z.detach().numpy(), W.detach().numpy(), out.numpy(),
           None if add is None else add.detach().numpy(), 1.0, kernel_threads())
    return out


def value_forward(thetas: Sequence[Tensor], dims: Sequence[int], x: Tensor) -> Tensor | None:
    """V(x) (T, B) of a ReLU MLP with one output and per-task thetas (T, P_k), without a graph, by the
    compiled `macaw_fast._C.value_forward` (each block of 32 rows of a task through every layer
    while its activations stay in L1; torch's OpenMP threads). None where it does not apply
    (not the CPU, not float32/float64, shared or non-contiguous thetas, a hidden layer narrower
    than one vector of 16 float32 / 8 float64 lanes, more than one output)."""
    fn = _compiled("value_forward")
    if (fn is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.dim() != 3
            or not x.is_contiguous() or dims[-1] != 1 or len(thetas) != len(dims) - 1
            or any(d < _lanes(x.dtype) for d in dims[1:-1])
            or any(t.dim() != 2 or t.shape[0] != x.shape[0] or t.dtype != x.dtype or t.device.type != "cpu"
                   or not t.is_contiguous() for t in thetas)):
        return None
    out = torch.empty(x.shape[0], x.shape[1], dtype=x.dtype)
    fn(x.detach().numpy(), [t.detach().numpy() for t in thetas], out.numpy(), kernel_threads())
    return out


def _generate_extension():
    return _compiled("wlinear_generate")

