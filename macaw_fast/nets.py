"""MACAW's networks as parameter containers plus batched functional forward passes (docs/algorithm.md §2).

A layer is described by the vector of its *generated parameters* ``theta`` (P = in*out + out):
``weight = theta[:in*out].view(in, out)`` (row-major, used as ``x @ weight``) and
``bias = theta[in*out:]``. A weight-transform layer (`WLinear`) generates theta = W z + b from its
own parameters (z, W, b); a plain layer (`PlainLinear`, the paper's no-WLinear ablation) stores
theta's two parts directly. The forward functions take one theta per layer, either shared, (P,),
or per task, (T, P), and inputs (T, B, in), so every task of a meta-batch runs in one pass.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Products with a dimension of size one (the value net's and the advantage head's single output):
# as broadcast multiplies (and a sum), ~3-8x faster on the CPU than the BLAS call, whose batched
# GEMM is slow on such degenerate shapes (measured at the paper config: 90-190 us vs 10-35 us).

def bmm(a: Tensor, b: Tensor) -> Tensor:
    """``torch.bmm(a, b)`` for a (T, M, K), b (T, K, N); K == 1 or N == 1 without BLAS."""
    if a.shape[2] == 1:
        return a * b
    if b.shape[2] == 1:
        return (a * b.transpose(1, 2)).sum(2, keepdim=True)
    return torch.bmm(a, b)


def baddbmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.baddbmm(c, a, b)`` (c broadcast to (T, M, N)); N == 1 without BLAS."""
    if b.shape[2] == 1:
        return (a * b.transpose(1, 2)).sum(2, keepdim=True).add_(c)
    return torch.baddbmm(c, a, b)



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

    def theta(self) -> Tensor:
        """Generated parameters theta = W z + b, (P,)."""
        return torch.addmv(self.bias, self.weight, self.z)

    def adapt(self, theta: Tensor, grad: Tensor, rates: Tensor, alpha: float | None = None):
        """One inner SGD step of every task at once, without copying W (docs/algorithm.md §5).

        theta: (P,) generated parameters at the shared point; grad: (T, P) per-task gradients of
        the inner loss w.r.t. theta; rates: (3,) step sizes (eta_z, eta_W, eta_b).
        Returns theta' (T, P), and with ``alpha`` also the target mix alpha*phi + (1-alpha)*phi'
        expressed as generated parameters (T, P).
        """
        eta_z, eta_w, eta_b = rates.unbind()      # one node (not three selects) in the graph
        z_new = self.z - eta_z * (grad @ self.weight)                 # z' = z - eta_z G W    (T, D)
        wz_new = z_new @ self.weight.t()                              # W z'                 (T, P)
        return self.adapt_from(theta, grad, z_new, wz_new, eta_w, eta_b, alpha)

    def adapt_from(self, theta: Tensor, grad: Tensor, z_new: Tensor, wz_new: Tensor, eta_w: Tensor,
                   eta_b: Tensor, alpha: float | None):
        """The rest of `adapt` once z' and W z' are known (shared with the strategies that form
        those two products their own way): theta' = W z' + b - (eta_W z'.z + eta_b) G."""
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

    def adapt(self, theta: Tensor, grad: Tensor, rates: Tensor, alpha: float | None = None):
        """theta' = theta - eta * grad per task (eta_W on the weight, eta_b on the bias), and with
        ``alpha`` also the target mix alpha*theta + (1-alpha)*theta'."""
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

    def thetas(self) -> list[Tensor]:
        """Every layer's generated parameters (P_k,), with graph."""
        return [layer.theta() for layer in self.layers]

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


def mlp_forward(thetas: Sequence[Tensor], dims: Sequence[int], x: Tensor, return_hidden: bool = False):
    """Run an MLP given one theta per layer; ReLU between layers, no output activation.

    With ``return_hidden`` also returns the last hidden layer's output BEFORE its ReLU.
    """
    h = None
    n = len(thetas)
    for k, th in enumerate(thetas):
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

    def forward_thetas(self, thetas: Sequence[Tensor], obs: Tensor) -> Tensor:
        """V(obs): (T, B, obs) -> (T, B)."""
        return mlp_forward(thetas, self.dims, obs).squeeze(-1)


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

    def mean(self, trunk_thetas: Sequence[Tensor], obs: Tensor, return_hidden: bool = False):
        """mu(obs) = tanh(trunk(obs)) (T, B, act); with ``return_hidden`` also the trunk's last
        hidden pre-activation (the advantage head's input)."""
        out, h = mlp_forward(trunk_thetas, self.trunk.dims, obs, return_hidden=True)
        mu = torch.tanh(out)
        return (mu, h) if return_hidden else mu

    def advantage(self, head_thetas: Sequence[Tensor], hidden: Tensor, action: Tensor) -> Tensor:
        """Predicted advantage (T, B) from the trunk's last hidden pre-activation and the action."""
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
