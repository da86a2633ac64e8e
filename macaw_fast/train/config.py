"""Run configuration of `macaw-fast train`: the `TrainConfig` dataclass, presets, CLI generation.

A run is fully described by two dataclasses: :class:`macaw_fast.config.MacawConfig` (the
algorithm, docs/algorithm.md §4) and :class:`TrainConfig` (steps, intervals, sampling, evaluation, device).
Their defaults are the paper's. Presets (``macaw_fast/presets/*.json``) are small files that
override fields of either; the command line overrides a preset. Every field becomes a
``--field value`` option whose help text is the field's docstring.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import os
import textwrap
from dataclasses import MISSING, asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Optional

from ..config import MacawConfig

PRESET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")

#: Where the rows of the INNER batches may come from (the paper's data-quality ablation).
INNER_DATA = ("all", "start", "middle", "end")


#: The algorithms `train.algo` accepts.
ALGOS = ("macaw", "meta_bc", "mt_ft", "focal")
#: TrainConfig fields that set mt_ft's fine-tuning (MTFTConfig fields of the same names).
FT_FIELDS = ("ft_steps", "ft_value_lr", "ft_policy_lr")
#: TrainConfig fields that set the focal baseline's own hyper-parameters (FOCALConfig fields of the
#: same names; its other fields are MACAW's of the same names).
FOCAL_FIELDS = ("latent_dim", "encoder_depth", "encoder_lr", "metric_beta", "metric_power", "metric_eps")
#: The TrainConfig fields that belong to one algorithm only.
ALGO_FIELDS = {"mt_ft": FT_FIELDS, "focal": FOCAL_FIELDS}


@dataclass
class TrainConfig:
    """Settings of a training run that are not hyper-parameters of the meta-step."""

    steps: int = 1_000_000
    """Number of meta-steps (the paper's code ran 1,000,000)."""
    seed: int = 0
    """Seed of the network initialisation, the meta-batch sampler and the evaluation draws."""
    tasks_per_step: int = 5
    """Training tasks per meta-step (without replacement; all of them when there are fewer)."""
    batch_size: int = 256
    """Rows per inner and per outer batch, and per evaluation adaptation batch."""
    inner_mode: str = "contiguous"
    """Inner batches: 'contiguous' (a window of consecutive rows, the paper's) or 'uniform'."""
    inner_data: str = "all"
    """Rows the inner batches come from: 'all', or the 'start'/'middle'/'end' of each buffer (data-quality ablation)."""
    inner_data_rows: int = 100_000
    """Size of the start/middle/end slice of each task's buffer when inner_data is not 'all'."""
    train_tasks: Optional[list] = None
    """Training tasks as indices into the dataset's task list (default: the dataset's 'train' split)."""
    test_tasks: Optional[list] = None
    """Test tasks as indices into the dataset's task list (default: the dataset's 'test' split)."""
    family: str = ""
    """Task family the dataset must come from ('' = take it from the dataset)."""
    eval_interval: int = 250
    """Evaluate on the test tasks every this many meta-steps (step 0 included; 0 = never)."""
    eval_batches: int = 1
    """Adaptation batches per test task at each evaluation (each one adapts separately)."""
    eval_rollouts: int = 1
    """Mean-action rollouts per adaptation batch (and of the unadapted policy) per task."""
    eval_train_tasks: int = 0
    """Also evaluate this many training tasks (the paper logged training-task rollouts too)."""
    random_episodes: int = 10
    """Episodes of a uniformly random policy per test task, for the normalised score (seeded by the
    task alone, so every run on the same data shares the reference)."""
    log_interval: int = 50
    """Write the training metrics (losses, advantage/weight stats, rates, kappa) every this many steps."""
    latest_interval: int = 1000
    """Overwrite checkpoints/latest.pt every this many meta-steps."""
    numbered_interval: int = 10_000
    """Keep a numbered checkpoint every this many meta-steps (0 = never)."""
    algo: str = "macaw"
    """The algorithm: 'macaw', or a baseline of the paper: 'meta_bc' (meta-behaviour-cloning: MACAW's
    policy and inner step with behaviour-cloning losses) or 'mt_ft' (multi-task offline AWR, then
    one SGD step of fine-tuning per task) or 'focal' (a FOCAL-style context encoder with a latent-
    conditioned value function and AWR policy). The MACAW fields of the same names set the baselines."""
    ft_steps: Optional[int] = None
    """mt_ft only: SGD steps of each network on a test task's adaptation batch (None: 1, as many as MACAW's adaptation)."""
    ft_value_lr: Optional[float] = None
    """mt_ft only: fine-tuning step size of the value function (None: MTFTConfig's 1e-3; tuned by reproduce)."""
    ft_policy_lr: Optional[float] = None
    """mt_ft only: fine-tuning step size of the policy (None: MTFTConfig's 1e-3; tuned by reproduce)."""
    latent_dim: Optional[int] = None
    """focal only: size of the task latent z (None: FOCALConfig's 8)."""
    encoder_depth: Optional[int] = None
    """focal only: hidden layers of the context encoder (None: 2)."""
    encoder_lr: Optional[float] = None
    """focal only: Adam learning rate of the context encoder (None: 3e-4)."""
    metric_beta: Optional[float] = None
    """focal only: weight of the distance-metric loss's push-apart term (None: 1.0)."""
    metric_power: Optional[float] = None
    """focal only: power n of the distance in the push-apart term beta / (|z_i - z'_j|^n + eps) (None: 2.0)."""
    metric_eps: Optional[float] = None
    """focal only: eps of the push-apart term (None: 0.1)."""
    backend: str = "auto"
    """How the meta-step runs (same results; docs/algorithm.md §4): 'auto' (fused on CUDA, cpu on the
    CPU), 'torch' (plain autograd), 'cpu' (hand-written gradients and compiled kernels) or 'fused'
    (the Triton ops; on the CPU their torch twins, slower than cpu: RESULTS.md)."""
    fused: bool = False
    """The older spelling of --backend fused (true overrides --backend)."""
    device: str = "auto"
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)."""
    dtype: str = "float32"
    """Parameter dtype: 'float32' or 'float64'."""
    threads: int = 0
    """torch CPU threads (0 = leave torch's default)."""
    prefetch: bool = True
    """Sample the next meta-batch on a background thread while the current step trains."""
    tensorboard: bool = True
    """Also log to RUN/tb with TensorBoard when it is installed."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        """Raise ValueError naming the first field with a bad value."""
        for name in ("steps", "eval_interval", "numbered_interval", "eval_train_tasks", "random_episodes",
                     "threads", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"train.{name}: expected a non-negative integer, got {v!r}")
        for name in ("tasks_per_step", "batch_size", "eval_batches", "eval_rollouts", "log_interval",
                     "latest_interval", "inner_data_rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"train.{name}: expected a positive integer, got {v!r}")
        if self.batch_size < 2:
            raise ValueError(f"train.batch_size: expected >= 2 (advantage weights use an unbiased std), got {self.batch_size}")
        if self.inner_mode not in ("contiguous", "uniform"):
            raise ValueError(f"train.inner_mode: expected 'contiguous' or 'uniform', got {self.inner_mode!r}")
        if self.inner_data not in INNER_DATA:
            raise ValueError(f"train.inner_data: expected one of {INNER_DATA}, got {self.inner_data!r}")
        from ..backends import BACKEND_NAMES

        if self.algo not in ALGOS:
            raise ValueError(f"train.algo: expected one of {', '.join(ALGOS)}, got {self.algo!r}")

        for algo, names in ALGO_FIELDS.items():
            for name in names:
                v = getattr(self, name)
                if v is None:
                    continue
                if self.algo != algo:
                    what = "fine-tunes at test time" if algo == "mt_ft" else "has this hyper-parameter"
                    raise ValueError(f"train.{name}: only --algo {algo} {what} (algo is {self.algo!r})")
                integer = name in ("ft_steps", "latent_dim", "encoder_depth")
                ok = isinstance(v, int) and v >= 1 if integer else isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                if not ok or isinstance(v, bool):
                    raise ValueError(f"train.{name}: expected a positive {'integer' if integer else 'number'}, got {v!r}")
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"train.backend: expected one of {', '.join(BACKEND_NAMES)}, got {self.backend!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"train.dtype: expected 'float32' or 'float64', got {self.dtype!r}")
        for name in ("train_tasks", "test_tasks"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, list) or not v or
                                  not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)):
                raise ValueError(f"train.{name}: expected a non-empty list of task indices, got {v!r}")
        if self.family:
            from ..envs import FAMILIES

            if self.family not in FAMILIES:
                raise ValueError(f"train.family: expected one of {', '.join(FAMILIES)}, got {self.family!r}")

    def to_dict(self) -> dict:
        """All fields as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# field docstrings -> --help


@lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """The attribute docstrings (the string literal under each field) of a dataclass, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for a, b in zip(body, body[1:]):
        if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
            out[a.target.id] = " ".join(b.value.value.split())
    return out


def parse_bool(text: str) -> bool:
    """'true/false/1/0/yes/no/on/off' -> bool (argparse type)."""
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return v


def _parse_int_list(text: str) -> list:
    from .._cli_types import task_list

    return task_list(text)


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple = ()) -> None:
    """Add ``--<field> VALUE`` for every MacawConfig and TrainConfig field (default: unset)."""
    for cls, title in ((MacawConfig, "algorithm (MacawConfig, docs/algorithm.md §4)"), (TrainConfig, "run (TrainConfig)")):
        group = parser.add_argument_group(title)
        docs = field_docs(cls)
        for f in fields(cls):
            if f.name in skip:
                continue
            default = f.default if f.default is not MISSING else None
            doc = docs.get(f.name, "")
            # a docstring that already says what an unset field means ("default: ...", "None: ...") is enough
            said = "default" in doc.lower() or (default is None and "None" in doc)
            kw: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": None,
                                  "help": doc if said else f"{doc} (default: {default!r})"}
            t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            if t.startswith("Optional[") and t != "Optional[list]":
                t = t[len("Optional["):-1]
            if t == "bool":
                kw.update(type=parse_bool, nargs="?", const=True, metavar="BOOL")
            elif t == "int":
                kw.update(type=int, metavar="INT")
            elif t == "float":
                kw.update(type=_parse_float, metavar="X")
            elif "list" in t:
                kw.update(type=_parse_int_list, metavar="IDS")
            else:
                kw.update(type=str, metavar="STR")
            group.add_argument("--" + f.name.replace("_", "-"), **kw)
            if t == "bool":      # --no-<field>, as collect's --no-progress / --no-tensorboard
                group.add_argument("--no-" + f.name.replace("_", "-"), dest=f"cfg_{f.name}", action="store_const",
                                   const=False, help=f"same as --{f.name.replace('_', '-')} false")


def overrides_from_args(args: argparse.Namespace) -> tuple[dict, dict]:
    """(MacawConfig overrides, TrainConfig overrides) given explicitly on the command line."""
    mac = {f.name: getattr(args, f"cfg_{f.name}") for f in fields(MacawConfig)
           if getattr(args, f"cfg_{f.name}", None) is not None}
    tr = {f.name: getattr(args, f"cfg_{f.name}") for f in fields(TrainConfig)
          if getattr(args, f"cfg_{f.name}", None) is not None}
    return mac, tr


# ----------------------------------------------------------------------------------------------
# presets


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for name in sorted(os.listdir(PRESET_DIR)):
        if name.endswith(".json"):
            with open(os.path.join(PRESET_DIR, name)) as f:
                out[name[:-5]] = json.load(f).get("description", "")
    return out


def load_preset(name: str, _seen: tuple = ()) -> tuple[dict, dict]:
    """(macaw overrides, train overrides) of a preset, its ``extends`` chain applied first."""
    path = os.path.join(PRESET_DIR, f"{name}.json")
    if not name or "/" in name or not os.path.isfile(path):
        raise ValueError(f"unknown preset {name!r}; presets are: {', '.join(list_presets())}")
    if name in _seen:
        raise ValueError(f"preset {name!r}: 'extends' forms a cycle {' -> '.join(_seen + (name,))}")
    with open(path) as f:
        try:
            p = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"preset file {path}: not valid JSON ({e})") from None
    bad = sorted(set(p) - {"description", "extends", "macaw", "train"})
    if bad:
        raise ValueError(f"preset file {path}: unknown key(s) {bad}; expected description, extends, macaw, train")
    mac, tr = {}, {}
    for parent in p.get("extends", []):
        m, t = load_preset(parent, _seen + (name,))
        mac.update(m)
        tr.update(t)
    mac.update(p.get("macaw", {}))
    tr.update(p.get("train", {}))
    return mac, tr


def resolve_config(presets: list[str] | None = None, macaw: dict | None = None,
                   train: dict | None = None) -> tuple[MacawConfig, TrainConfig]:
    """Paper defaults, then the presets in order, then explicit overrides; both validated."""
    mac, tr = {}, {}
    for name in presets or []:
        m, t = load_preset(name)
        mac.update(m)
        tr.update(t)
    mac.update(macaw or {})
    tr.update(train or {})
    try:
        mc = MacawConfig.from_dict({**MacawConfig().to_dict(), **mac})
        tc = TrainConfig.from_dict({**TrainConfig().to_dict(), **tr})
    except TypeError as e:
        raise ValueError(str(e)) from None
    _check_types(mc, "config")
    _check_types(tc, "train")
    mc.validate()
    tc.validate()
    return mc, tc


def _check_types(cfg, where: str) -> None:
    """Reject values of the wrong JSON type (e.g. a string where a float belongs) by field name."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if t == "float" and isinstance(v, int) and not isinstance(v, bool):
            setattr(cfg, f.name, float(v))
        elif t == "float" and not isinstance(v, float):
            raise ValueError(f"{where}.{f.name}: expected a number, got {v!r}")
        elif t == "bool" and not isinstance(v, bool):
            raise ValueError(f"{where}.{f.name}: expected true or false, got {v!r}")
        elif t == "str" and not isinstance(v, str):
            raise ValueError(f"{where}.{f.name}: expected a string, got {v!r}")
        elif t == "float" and not math.isfinite(getattr(cfg, f.name)):
            raise ValueError(f"{where}.{f.name}: expected a finite number, got {v!r}")
