"""MACAW's algorithm configuration. Defaults are the paper's (`config/alg/standard.json`, docs/algorithm.md §4)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


@dataclass
class MacawConfig:
    """Hyper-parameters of the MACAW meta-step. Every field is overridable from the CLI."""

    net_width: int = 100
    """Hidden width H of the value and policy trunks."""
    net_depth: int = 3
    """Number of hidden layers (so depth + 1 linear layers per trunk)."""
    wlinear: bool = True
    """Weight-transform layers (docs/algorithm.md §2); False = plain linear layers with the same learned-rate scheme."""
    wlinear_dim: int = 100
    """Size D of each weight-transform layer's latent z."""
    advantage_head: bool = True
    """Attach the advantage-regression head to the policy (the paper's 'no_adv' ablation sets False)."""
    head_width: int = 32
    """Hidden width of the advantage head."""
    inner_value_lr: float = 1e-3
    """Initial inner-loop learning rate of the value function (each tensor learns its own)."""
    inner_policy_lr: float = 1e-3
    """Initial inner-loop learning rate of the policy (each tensor learns its own)."""
    outer_value_lr: float = 1e-5
    """Adam learning rate of the value function's parameters."""
    outer_policy_lr: float = 1e-4
    """Adam learning rate of the policy's parameters (advantage head included)."""
    lrlr: float = 1e-3
    """Adam learning rate of the learned inner rates rho and of the head weight kappa."""
    advantage_head_coef: float = 0.01
    """Initial weight softplus(kappa) of the advantage-head loss in the inner policy loss."""
    target_vf_alpha: float = 0.9
    """Parameter-space mix alpha of the per-task target value function."""
    action_sigma: float = 0.2
    """Fixed standard deviation of the Gaussian policy."""
    adaptation_temp: float = 1.0
    """Temperature tau of the advantage weights."""
    exp_advantage_clip: float = 20.0
    """Largest advantage weight (normalised advantages are clamped at its log)."""
    discount: float = 0.99
    """Discount factor gamma of the returns (used when data is made; informative here)."""

    def validate(self) -> None:
        """Raise ValueError naming the first field with a bad value."""
        positive_ints = ("net_width", "net_depth", "wlinear_dim", "head_width")
        for name in positive_ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"config.{name}: expected a positive integer, got {v!r}")
        positive = ("inner_value_lr", "inner_policy_lr", "advantage_head_coef", "action_sigma",
                    "adaptation_temp", "exp_advantage_clip")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"config.{name}: expected a positive finite number, got {v!r}")
        for name in ("outer_value_lr", "outer_policy_lr", "lrlr"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"config.{name}: expected a non-negative finite number, got {v!r}")
        for name in ("target_vf_alpha", "discount"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"config.{name}: expected a number in [0, 1], got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MacawConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MacawConfig field(s): {', '.join(unknown)}")
        return cls(**d)
