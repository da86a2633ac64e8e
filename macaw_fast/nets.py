"""MACAW's networks as parameter containers plus batched functional forward passes (docs/algorithm.md §2).

A layer is described by the vector of its *generated parameters* ``theta`` (P = in*out + out):
``weight = theta[:in*out].view(in, out)`` (row-major, used as ``x @ weight``) and
``bias = theta[in*out:]``. A weight-transform layer (`WLinear`) generates theta = W z + b from its
own parameters (z, W, b); a plain layer (`PlainLinear`, the paper's no-WLinear ablation) stores
theta's two parts directly. The forward functions take one theta per layer, either shared, (P,),
or per task, (T, P), and inputs (T, B, in), so every task of a meta-batch runs in one pass.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ._openmp import kernel_threads
from .inner_grad import baddbmm


class _LowRankWGrad:
    """Collects the factors of dL/dW = sum_k u_k v_k^T from every use of one layer's W.

    All of a weight-transform layer's uses of W in the meta-step are matrix products whose
    gradient with respect to W has rank at most T (docs/algorithm.md §5), so instead of letting autograd build
    and add a dense P x D gradient per use, each use records its factors here and the last node to
    run backward (the one that generated theta = W z + b) forms dL/dW with ONE GEMM.
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
        return _generate([(weight, z, bias)])[0]     # the same sums as `theta_leaves`

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


def adapt_many(layers: Sequence["WLinear"], thetas: Sequence[Tensor], grads: Sequence[Tensor], rates: Tensor,
               alpha: float | None = None):
    """`WLinear.adapt` of every layer as one autograd node; ``rates`` (L, 3) for the L layers.

    For theta leaves with a W-gradient gatherer (`WLinear.theta_leaf`, `WLinear.theta(True)`), which
    `can_adapt_many` checks. Returns the list of theta' (T, P) and, with ``alpha``, the list of
    target mixes (no gradient), like `WLinear.adapt` per layer.
    """
    L = len(layers)
    zbg = [t for layer, g in zip(layers, grads) for t in (layer.z, layer.bias, g)]
    out = _AdaptLowRank.apply(rates, alpha, tuple(m.weight.detach() for m in layers),
                              tuple(th._macaw_w_grad for th in thetas), tuple(th.detach() for th in thetas), *zbg)
    return (list(out[:L]), list(out[L:])) if alpha is not None else list(out)


def can_adapt_many(layers: Sequence[nn.Module], thetas: Sequence[Tensor | None]) -> bool:
    """Whether `adapt_many` applies: WLinear layers whose thetas gather W's gradient."""
    return all(isinstance(m, WLinear) and getattr(th, "_macaw_w_grad", None) is not None
               for m, th in zip(layers, thetas))


class WLinear(nn.Module):
    """Weight-transform linear layer: parameters z (D,), weight W (P, D), bias b (P,).

    ``theta = W z + b`` gives the layer's weight and bias (see module docstring). Initialisation as
    the paper's: z ~ N(0, (1/out)^2), (W, b) like ``torch.nn.Linear(D, P)``.
    """

    #: Names of the parameter tensors, in the paper's order; each has its own learned inner rate.
    tensor_names = ("z", "weight", "bias")

    def __init__(self, in_features: int, out_features: int, dim: int = 100, *,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dim = in_features, out_features, dim
        P = in_features * out_features + out_features
        kw = {"device": device, "dtype": dtype}
        self.z = nn.Parameter(torch.empty(dim, **kw).normal_(0.0, 1.0 / out_features))
        lin = nn.Linear(dim, P, **kw)
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.bias = nn.Parameter(lin.bias.detach().clone())

    @property
    def num_generated(self) -> int:
        return self.in_features * self.out_features + self.out_features

    def theta(self, low_rank_grad: bool = False) -> Tensor:
        """Generated parameters, (P,).

        With ``low_rank_grad``, theta is made by a node that also gathers the W-gradient of the
        `adapt` call made with it, so that W's gradient is formed by one GEMM (first-order only:
        the meta-step never differentiates W's gradient again; misuse raises).
        """
        if not low_rank_grad:
            return torch.addmv(self.bias, self.weight, self.z)
        acc = _LowRankWGrad()
        theta = _GenerateTheta.apply(self.weight, self.bias, self.z, acc)
        theta._macaw_w_grad = acc
        return theta

    def adapt(self, theta: Tensor, grad: Tensor, rates: Tensor, alpha: float | None = None,
              backend: str | None = None):
        """One inner SGD step of every task at once, without copying W (docs/algorithm.md §5).

        theta: (P,) generated parameters at the shared point; grad: (T, P) per-task gradients of
        the inner loss w.r.t. theta; rates: (3,) step sizes (eta_z, eta_W, eta_b).
        Returns theta' (T, P), and with ``alpha`` also the target mix alpha*phi + (1-alpha)*phi'
        expressed as generated parameters (T, P). ``backend`` runs the fused
        `macaw_fast.ops.wlinear_adapt` instead of torch ops.
        """
        if backend is not None:
            from .ops import wlinear_adapt
            return wlinear_adapt(self.weight, self.bias, self.z, grad, rates, alpha, backend=backend)
        eta_z, eta_w, eta_b = rates.unbind()      # one node (not three selects) in the graph
        acc = getattr(theta, "_macaw_w_grad", None)
        if acc is None:
            z_new = self.z - eta_z * (grad @ self.weight)                 # (T, D)
            wz_new = z_new @ self.weight.t()                              # (T, P) = W z'
        else:
            z_new = self.z - eta_z * _LeftMulW.apply(grad, self.weight, acc)
            wz_new = _RightMulWT.apply(z_new, self.weight, acc)
        coef = eta_w * (z_new @ self.z) + eta_b                       # (T,)
        theta_new = torch.addcmul(wz_new + self.bias, coef.unsqueeze(-1), grad, value=-1.0)
        if alpha is None:
            return theta_new
        # W^tgt = W - (1-a) eta_W g z^T, z^tgt = a z + (1-a) z', b^tgt = b - (1-a) eta_b g.
        z_tgt = alpha * self.z + (1.0 - alpha) * z_new
        coef_tgt = (1.0 - alpha) * (eta_w * (z_tgt @ self.z) + eta_b)
        theta_tgt = alpha * theta + (1.0 - alpha) * (wz_new + self.bias)
        theta_tgt = torch.addcmul(theta_tgt, coef_tgt.unsqueeze(-1), grad, value=-1.0)
        return theta_new, theta_tgt


    def theta_leaf(self, theta: Tensor | None = None) -> Tensor:
        """theta = W z + b, made without a graph, as a leaf that gathers W-gradient factors.

        For a backward split into several passes (task chunks): every pass that uses the leaf
        (directly, or through `adapt`) adds dL/dtheta to its ``.grad`` and records the low-rank
        factors of W's gradient; `accumulate_theta_leaf_grad` then turns them into the gradients
        of z, W (one GEMM for all passes) and b. First-order only, like ``theta(low_rank_grad=True)``.
        ``theta``: W z + b already computed (see `theta_leaves`), made the leaf in place.
        """
        if theta is None:
            with torch.no_grad():
                theta = torch.addmv(self.bias, self.weight, self.z)
        theta.requires_grad_(True)
        theta._macaw_w_grad = _LowRankWGrad()
        return theta

    def theta_leaf_factors(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """W's gradient gathered by a `theta_leaf` as factors (A (K, P), B (K, D)), dL/dW = A^T B.

        Row 0 of A is dL/dtheta (b's gradient; W^T A[0] is z's), row 0 of B is z. Clears the
        gathered factors. For `macaw_fast.lowrank_adam`, which never forms the dense gradient.
        """
        acc = theta._macaw_w_grad
        dtheta = theta.grad if theta.grad is not None else torch.zeros_like(theta)
        with torch.no_grad():
            a = torch.cat([dtheta.unsqueeze(0)] + acc.u)
            b = torch.cat([self.z.unsqueeze(0)] + acc.v)
        acc.u, acc.v = [], []
        return a, b

    def accumulate_theta_leaf_grad(self, theta: Tensor) -> None:
        """Add the gradients gathered by a `theta_leaf` to z, W and b's ``.grad`` (in place)."""
        acc = theta._macaw_w_grad
        dtheta = theta.grad
        if dtheta is None:
            dtheta = torch.zeros_like(theta)
        with torch.no_grad():
            u = torch.cat([dtheta.unsqueeze(1)] + [f.t() for f in acc.u], dim=1)
            v = torch.cat([self.z.unsqueeze(0)] + acc.v)
            acc.u, acc.v = [], []
            for p, g in ((self.weight, u @ v), (self.z, self.weight.t() @ dtheta), (self.bias, dtheta)):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)


def theta_leaves(layers: Sequence[nn.Module]) -> list[Tensor | None]:
    """`WLinear.theta_leaf` of every WLinear layer; None for other layers. On the CPU all the
    thetas W z + b come from one pass of the compiled `macaw_fast._C.wlinear_generate` over the
    layers' W (a memory-bound pass: ~2x faster than one BLAS matrix-vector product per layer)."""
    wl = [layer for layer in layers if isinstance(layer, WLinear)]
    made = iter(generate_thetas(wl))
    return [layer.theta_leaf(next(made)) if isinstance(layer, WLinear) else None for layer in layers]


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
        from . import _C
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


def fused_theta_leaves(layers: Sequence[nn.Module], tasks: int | None = None,
                       backend: str | None = None) -> list[Tensor | None]:
    """For the fused meta-step: theta = W z + b of every WLinear layer made without a graph, as a
    plain leaf (its ``.grad`` gathers dL/dtheta over all backward passes); None for other layers.
    With ``tasks`` the leaf is theta expanded to (tasks, P) (no copy), so that the per-task uses
    need no expand-backward sum: its (tasks, P) gradient is summed by the fused op instead.
    ``backend`` (an ops backend name): all thetas by one `macaw_fast.ops.wlinear_generate` (one
    launch for up to ten layers); None: one addmv per layer.

    `accumulate_fused_theta_grads` then adds the gradients of W, b and z in one fused op per layer.
    """
    wl = [layer for layer in layers if isinstance(layer, WLinear)]
    with torch.no_grad():
        if backend is not None:
            from .ops import wlinear_generate
            made = iter(wlinear_generate([m.weight for m in wl], [m.bias for m in wl], [m.z for m in wl],
                                         backend=backend))
        else:
            made = iter([torch.addmv(m.bias, m.weight, m.z) for m in wl])
    out: list[Tensor | None] = []
    for layer in layers:
        if isinstance(layer, WLinear):
            theta = next(made)
            if tasks is not None:
                theta = theta.expand(tasks, -1)
            out.append(theta.requires_grad_(True))
        else:
            out.append(None)
    return out


def accumulate_fused_theta_grads(layers: Sequence[nn.Module], thetas: Sequence[Tensor | None],
                                 backend: str) -> None:
    """Add dL/dW, dL/db, dL/dz of every leaf made by `fused_theta_leaves` to the layers' ``.grad``
    (`macaw_fast.ops.wlinear_theta_backward_many`, in place: one Triton launch for up to ten layers;
    leaves without a gradient are skipped)."""
    from .ops import wlinear_theta_backward_many
    pairs = [(layer, theta) for layer, theta in zip(layers, thetas) if theta is not None and theta.grad is not None]
    wlinear_theta_backward_many([m.weight for m, _ in pairs], [m.bias for m, _ in pairs], [m.z for m, _ in pairs],
                                [th.grad for _, th in pairs], backend=backend)


class PlainLinear(nn.Module):
    """Plain linear layer for the no-WLinear ablation: weight (in, out), bias (out,).

    Initialised like ``torch.nn.Linear(in, out)``. theta = concat(weight.flatten(), bias).
    """

    tensor_names = ("weight", "bias")

    def __init__(self, in_features: int, out_features: int, dim: int = 0, *, device=None, dtype=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        lin = nn.Linear(in_features, out_features, device=device, dtype=dtype)
        self.weight = nn.Parameter(lin.weight.detach().t().contiguous())
        self.bias = nn.Parameter(lin.bias.detach().clone())

    @property
    def num_generated(self) -> int:
        return self.in_features * self.out_features + self.out_features

    def theta(self) -> Tensor:
        return torch.cat([self.weight.reshape(-1), self.bias])

    def adapt(self, theta: Tensor, grad: Tensor, rates: Tensor, alpha: float | None = None,
              backend: str | None = None):
        n = self.in_features * self.out_features
        eta = torch.cat([rates[0].expand(n), rates[1].expand(self.out_features)])
        theta_new = theta - eta * grad
        if alpha is None:
            return theta_new
        return theta_new, alpha * theta + (1.0 - alpha) * theta_new


def make_layer(in_features: int, out_features: int, wlinear: bool, dim: int, **kw) -> nn.Module:
    return (WLinear if wlinear else PlainLinear)(in_features, out_features, dim, **kw)


class MLP(nn.Module):
    """A stack of generated-parameter layers with widths ``dims`` (ReLU between layers)."""

    def __init__(self, dims: Sequence[int], wlinear: bool = True, dim: int = 100, **kw) -> None:
        super().__init__()
        self.dims = list(dims)
        self.layers = nn.ModuleList(
            make_layer(i, o, wlinear, dim, **kw) for i, o in zip(self.dims[:-1], self.dims[1:]))

    def thetas(self, low_rank_grad: bool = False) -> list[Tensor]:
        return [layer.theta(low_rank_grad) if isinstance(layer, WLinear) else layer.theta()
                for layer in self.layers]

    def layer_dims(self) -> list[tuple[int, int]]:
        return list(zip(self.dims[:-1], self.dims[1:]))


def linear(theta: Tensor, x: Tensor, in_features: int, out_features: int) -> Tensor:
    """y = x @ weight + bias with weight/bias read from theta.

    theta: (P,) shared or (T, P) per task; x: (T, B, in) (or (B, in) with a shared theta).
    Returns (T, B, out).
    """
    # split (one backward node, a cat) rather than two slices (two zero-filled (T, P) grads + add)
    w, b = theta.split([in_features * out_features, out_features], dim=-1)
    if theta.dim() == 1:
        return torch.addmm(b, x.reshape(-1, in_features),
                           w.view(in_features, out_features)).view(*x.shape[:-1], out_features)
    T = theta.shape[0]
    if out_features == 1:       # a batched GEMV: broadcast multiply + sum, ~3x faster than BLAS here
        return baddbmm(b.unsqueeze(1), x, w.view(T, in_features, 1))
    return torch.baddbmm(b.unsqueeze(1), x, w.view(T, in_features, out_features))


def mlp_forward(thetas: Sequence[Tensor], dims: Sequence[int], x: Tensor,
                return_hidden: bool = False, backend: str | None = None):
    """Run an MLP given one theta per layer; ReLU between layers, no output activation.

    With ``return_hidden`` also returns the last hidden layer's output BEFORE its ReLU.
    ``backend`` (an ops backend name) runs each layer, with its input ReLU, as one fused
    `macaw_fast.ops.batched_linear`; None uses plain torch ops.
    """
    h = None
    n = len(thetas)
    if backend is not None:
        from .ops import batched_linear
    for k, th in enumerate(thetas):
        if backend is not None:
            x = batched_linear(x, th, dims[k + 1], in_relu=k > 0, backend=backend)
        else:
            if k > 0:
                # in place on the layer's fresh output (not a view, so autograd needs no view
                # bookkeeping; nothing saved it) unless it is the returned pre-ReLU hidden layer
                inplace = x._base is None and not (return_hidden and k == n - 1)
                x = F.relu(x, inplace=inplace)
            x = linear(th, x, dims[k], dims[k + 1])
        if k == n - 2:
            h = x
    return (x, h) if return_hidden else x


class ValueNet(MLP):
    """V(s): widths [obs, H x depth, 1]."""

    def __init__(self, obs_dim: int, width: int, depth: int, wlinear: bool = True, dim: int = 100, **kw):
        super().__init__([obs_dim] + [width] * depth + [1], wlinear, dim, **kw)

    def forward_thetas(self, thetas: Sequence[Tensor], obs: Tensor, backend: str | None = None) -> Tensor:
        """(T, B, obs) -> (T, B). Without grad mode, per-task thetas on the CPU go through the
        compiled `value_forward` (all layers per block of rows; ~3x torch's layer-by-layer GEMMs)."""
        if backend is None and not torch.is_grad_enabled():
            out = value_forward(thetas, self.dims, obs)
            if out is not None:
                return out
        return mlp_forward(thetas, self.dims, obs, backend=backend).squeeze(-1)


class PolicyNet(nn.Module):
    """Policy mean mu(s) = tanh(trunk(s)) and the advantage head on ReLU(concat(h, a))."""

    def __init__(self, obs_dim: int, act_dim: int, width: int, depth: int, head: bool = True,
                 head_width: int = 32, wlinear: bool = True, dim: int = 100, **kw):
        super().__init__()
        self.trunk = MLP([obs_dim] + [width] * depth + [act_dim], wlinear, dim, **kw)
        self.head = MLP([width + act_dim, head_width, 1], wlinear, dim, **kw) if head else None

    @property
    def layers(self) -> list[nn.Module]:
        """Trunk layers then head layers (the paper's parameter order)."""
        return list(self.trunk.layers) + (list(self.head.layers) if self.head is not None else [])

    @property
    def num_trunk_layers(self) -> int:
        return len(self.trunk.layers)

    def mean(self, trunk_thetas: Sequence[Tensor], obs: Tensor, return_hidden: bool = False,
             backend: str | None = None):
        out, h = mlp_forward(trunk_thetas, self.trunk.dims, obs, return_hidden=True, backend=backend)
        mu = torch.tanh(out)
        return (mu, h) if return_hidden else mu

    def advantage(self, head_thetas: Sequence[Tensor], hidden: Tensor, action: Tensor,
                  backend: str | None = None) -> Tensor:
        """Predicted advantage (T, B) from the trunk's last hidden pre-activation and the action."""
        if backend is not None:
            from .ops import batched_linear, concat_relu_linear
            dims = self.head.dims
            x = concat_relu_linear(hidden, action, head_thetas[0], dims[1], backend=backend)
            for k in range(1, len(head_thetas)):
                x = batched_linear(x, head_thetas[k], dims[k + 1], in_relu=True, backend=backend)
            return x.squeeze(-1)
        x = F.relu(torch.cat([hidden, action], dim=-1))
        return mlp_forward(head_thetas, self.head.dims, x).squeeze(-1)


def gaussian_log_prob(action: Tensor, mean: Tensor, sigma: float) -> Tensor:
    """sum_k log N(a_k; mu_k, sigma^2) over the last axis."""
    k = action.shape[-1]
    return (-0.5 / sigma**2) * (action - mean).pow(2).sum(-1) - k * (math.log(sigma) + 0.5 * math.log(2 * math.pi))


def advantage_weights(adv: Tensor, temp: float, max_weight: float) -> Tensor:
    """exp(min((A - mean A) / (std A * temp), log max_weight)) along the last axis (unbiased std)."""
    mean = adv.mean(-1, keepdim=True)
    std = adv.std(-1, keepdim=True)
    return ((adv - mean) / (std * temp)).clamp(max=math.log(max_weight)).exp()
