"""Ahead-of-time compilation of every kernel specialisation the ops use (needs triton, no GPU).

`kernel_specs` lists, for a model configuration, each kernel with the constexprs and warps its
launcher would use (taken from the same launch-config functions the launchers call);
`compile_spec` compiles one for a CUDA compute capability with ``triton.compile`` and returns the
compiled metadata (shared memory, warps). Used by tests/test_triton_compile.py and the benches.
"""

from __future__ import annotations

import time

import torch

from ...ops.awr_loss import awr_double_backward_launch_config, awr_launch_config
from ...ops.finite import finite_launch_config
from ...ops.value_mse import value_mse_launch_config
from ...ops.wlinear_adapt import adapt_backward_launch_config, adapt_launch_config
from .advantage import advantage_launch_config
from .generate import generate_launch_config
from .metrics import metrics_launch_config
from .objective import objective_launch_config
from .theta_grad import theta_backward_group_launch_config, theta_backward_launch_config
from ...ops.batched_linear import (linear_backward_launch_config, linear_double_backward_launch_config,
                             linear_launch_config)

_TRITON_DTYPE = {torch.float32: "fp32", torch.float64: "fp64"}


def paper_layer_shapes(obs: int = 20, act: int = 6, width: int = 100, depth: int = 3, head: int = 32):
    """(in, out, kind) of every layer of the paper's value net and policy (trunk then head).

    kind: 'first' (no input ReLU), 'hidden' (input ReLU), 'concat' (the head's ReLU(concat(h, a))).
    """
    dims = [obs] + [width] * depth
    trunk = [(dims[0], width, "first")] + [(width, width, "hidden")] * (depth - 1)
    value = trunk + [(width, 1, "hidden")]
    policy = trunk + [(width, act, "hidden")]
    head_layers = [(width + act, head, "concat"), (head, 1, "hidden")]
    return {"value": value, "policy": policy, "head": head_layers}


def _raw(kernel):
    """The plain Python function behind a triton.jit (or interpreted) kernel."""
    return getattr(kernel, "fn", kernel)


def kernel_specs(T: int = 5, N: int = 256, D: int = 100, dtypes=(torch.float32, torch.float64), **shape_kw):
    """Unique (kernel, dtype, constexprs, num_warps) specialisations used by a MACAW meta-step.

    Returns a list of dicts: name, fn (Python function), dtype (torch), constexprs, num_warps.
    """
    from ...ops import _awr_loss_kernels as ka
    from ...ops import _batched_linear_kernels as kl
    from . import _advantage_kernels as kadv
    from ...ops import _finite_kernels as kf
    from . import _objective_kernels as kobj
    from . import _generate_kernels as kg
    from . import _metrics_kernels as km
    from ...ops import _value_mse_kernels as kv
    from . import _theta_grad_kernels as kt
    from ...ops import _wlinear_adapt_kernels as kw
    shapes = paper_layer_shapes(**shape_kw)
    specs: dict = {}

    def add(name, kernel, dtype, cfg, extra=None):
        const = dict(cfg["constexprs"], **(extra or {}))
        key = (name, dtype, tuple(sorted(const.items())), cfg["num_warps"])
        specs.setdefault(key, {"name": name, "fn": _raw(kernel), "dtype": dtype,
                               "constexprs": const, "num_warps": cfg["num_warps"]})

    for dtype in dtypes:
        for net, layers in shapes.items():
            for i, o, kind in layers:
                flags = {"IN_RELU": kind != "first", "OUT_RELU": False, "CONCAT": kind == "concat"}
                add("batched_linear_kernel", kl.batched_linear_kernel, dtype, linear_launch_config(T, N, i, o), flags)
                # the inner loss is differentiated w.r.t. per-task (expanded) theta: SHARED=False;
                # the first layer's input (observations) needs no gradient: no dL/dx part
                first = kind == "first"
                add("linear_bwd_kernel", kl.linear_bwd_kernel, dtype,
                    linear_backward_launch_config(T, N, i, o, shared=False, do_input=not first), flags)
                # the meta-gradient's double backward: the first layer's dL/dx has no cotangent
                add("linear_dbwd_kernel", kl.linear_dbwd_kernel, dtype,
                    linear_double_backward_launch_config(T, N, i, o, False, has_ggx=not first, has_ggth=True,
                                                         do_input=not first), flags)
                a = adapt_launch_config(T, i * o + o, D, with_target=(net == "value"))
                add("adapt_reduce_kernel", kw.adapt_reduce_kernel, dtype, a["reduce"])
                add("adapt_mix_kernel", kw.adapt_mix_kernel, dtype, a["mix"])
                add("adapt_expand_kernel", kw.adapt_expand_kernel, dtype, a["expand"])
                a = adapt_backward_launch_config(T, i * o + o, D, with_target=(net == "value"))
                add("adapt_bwd_reduce_kernel", kw.adapt_bwd_reduce_kernel, dtype, a["reduce"])
                add("adapt_bwd_mix_kernel", kw.adapt_bwd_mix_kernel, dtype, a["mix"])
                add("adapt_bwd_expand_kernel", kw.adapt_bwd_expand_kernel, dtype, a["expand"])
                # after the backward: adapted layers add to .grad, the unadapted head writes it
                for accumulate in (True, False):
                    add("theta_grad_kernel", kt.theta_grad_kernel, dtype,
                        theta_backward_launch_config(i * o + o, D, accumulate))
        # the output-ReLU flag is part of the public op: compile it once per dtype too
        add("batched_linear_kernel", kl.batched_linear_kernel, dtype,
            linear_launch_config(T, N, shape_kw.get("width", 100), shape_kw.get("width", 100)),
            {"IN_RELU": True, "OUT_RELU": True, "CONCAT": False})
        relu2 = {"IN_RELU": True, "OUT_RELU": True, "CONCAT": False}
        add("linear_bwd_kernel", kl.linear_bwd_kernel, dtype,
            linear_backward_launch_config(T, N, 100, 100, shared=True), relu2)
        add("linear_dbwd_kernel", kl.linear_dbwd_kernel, dtype,
            linear_double_backward_launch_config(T, N, 100, 100, True), relu2)
        act = shape_kw.get("act", 6)
        # the fused meta-step passes pre-activations (TANH: the policy mean's tanh inside the op)
        for tanh in (False, True):
            for head in (False, True):
                add("awr_loss_kernel", ka.awr_loss_kernel, dtype, awr_launch_config(T, N, act, head, tanh))
                add("awr_loss_bwd_kernel", ka.awr_loss_bwd_kernel, dtype, awr_launch_config(T, N, act, head, tanh))
            # second order: the meta-step's flags (cotangents of dmu and dpred), and every cotangent present
            add("awr_loss_dbwd_kernel", ka.awr_loss_dbwd_kernel, dtype,
                awr_double_backward_launch_config(T, N, act, True, tanh=tanh))
            add("awr_loss_dbwd_kernel", ka.awr_loss_dbwd_kernel, dtype,
                awr_double_backward_launch_config(T, N, act, True, True, True, True, True, True, tanh))
        # the step's metrics: meta_step (with the chunk losses) and meta_loss (without)
        for has_loss in (True, False):
            add("step_metrics_kernel", km.step_metrics_kernel, dtype, metrics_launch_config(has_loss))
        # the value losses: inner (returns) and outer (bootstrapped target), forward and two backwards
        for has_next in (False, True):
            add("value_mse_kernel", kv.value_mse_kernel, dtype, value_mse_launch_config(T, N, has_next))
            add("value_mse_bwd_kernel", kv.value_mse_bwd_kernel, dtype, value_mse_launch_config(T, N, has_next, True))
            add("value_mse_dbwd_kernel", kv.value_mse_dbwd_kernel, dtype, value_mse_launch_config(T, N, has_next))
        # theta = W z + b of both nets' WLinear layers in one launch: with the head (10 layers at
        # depth 3), without it (8), and a single layer
        P_max = max(i * o + o for layers in shapes.values() for i, o, _ in layers)
        for n_layers in (10, 8, 1):
            add("wlinear_generate_kernel", kg.wlinear_generate_kernel, dtype,
                generate_launch_config(P_max, n_layers, D))
        add("advantage_kernel", kadv.advantage_kernel, dtype, advantage_launch_config(T, N))
        add("objective_kernel", kobj.objective_kernel, dtype, objective_launch_config())
        # after the backward: every layer's theta gradient into W, b, z in one launch (10, 8, 1 layers)
        Ps = [i * o + o for net in ("value", "policy", "head") for i, o, _ in shapes[net]]
        for n_layers in (10, 8, 1):
            add("theta_grad_group_kernel", kt.theta_grad_group_kernel, dtype,
                theta_backward_group_launch_config(Ps[:n_layers], D))
        # a net's inner steps in three launches forward and three backward (ops.wlinear_adapt_many):
        # the value net with its target mix, the policy trunk; the meta-step's backward has no target
        # cotangent; and all six slots once
        for net, n_layers in (("value", 4), ("policy", 4), ("policy", 6)):
            i, o, _ = shapes[net][0]
            tgt = net == "value"
            a = adapt_launch_config(T, i * o + o, D, with_target=tgt)
            for part in ("reduce", "mix", "expand"):
                add(f"adapt_{part}_group_kernel", getattr(kw, f"adapt_{part}_group_kernel"), dtype, a[part],
                    {"NL": n_layers})
            a = adapt_backward_launch_config(T, i * o + o, D, with_target=False)
            for part in ("reduce", "mix", "expand"):
                add(f"adapt_bwd_{part}_group_kernel", getattr(kw, f"adapt_bwd_{part}_group_kernel"), dtype, a[part],
                    {"NL": n_layers})
        # the batches' NaN/inf check: Batch.validate passes its eight fields (one tensor: the smallest case)
        for n_tensors in (8, 1):
            add("nonfinite_kernel", kf.nonfinite_kernel, dtype, finite_launch_config(n_tensors))
    return list(specs.values())


def signature(fn, dtype: torch.dtype, constexprs: dict) -> dict:
    """Triton signature of ``fn``: pointers (``*_ptr``) in ``dtype``, other runtime args i32."""
    import inspect
    sig = {}
    for name in inspect.signature(fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + _TRITON_DTYPE[dtype]
        else:
            sig[name] = "i32"
    return sig


def _gpu_function(fn):
    """``fn`` with every interpreted helper it calls (``triton.jit`` under TRITON_INTERPRET=1)
    swapped for a GPU ``JITFunction`` in its globals, so the compiler can inline it."""
    import types

    from triton.runtime.jit import JITFunction
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:          # pragma: no cover - older triton
        return fn
    names = fn.__code__.co_names
    swap = {k: v for k, v in fn.__globals__.items() if k in names and isinstance(v, InterpretedFunction)}
    if not swap:
        return fn
    glb = dict(fn.__globals__)
    for k, v in swap.items():
        glb[k] = JITFunction(_gpu_function(v.fn))
    new = types.FunctionType(fn.__code__, glb, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__doc__, new.__module__, new.__qualname__ = fn.__doc__, fn.__module__, fn.__qualname__
    return new


def compile_spec(spec: dict, capability: int) -> dict:
    """Compile one spec for ``cuda`` sm_<capability> (warp size 32) without a GPU.

    Returns name, dtype, capability, constexprs, num_warps, shared (bytes), seconds, and the
    sizes of the PTX and cubin produced.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = JITFunction(_gpu_function(spec["fn"]))   # a GPU JIT function even under TRITON_INTERPRET=1
    src = ASTSource(fn=fn, signature=signature(spec["fn"], spec["dtype"], spec["constexprs"]),
                    constexprs=spec["constexprs"])
    t0 = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", capability, 32),
                              options={"num_warps": spec["num_warps"]})
    seconds = time.perf_counter() - t0
    md = compiled.metadata
    return {"name": spec["name"], "dtype": _TRITON_DTYPE[spec["dtype"]], "capability": capability,
            "constexprs": spec["constexprs"], "num_warps": md.num_warps, "shared": md.shared,
            "seconds": seconds, "ptx_bytes": len(compiled.asm["ptx"]), "cubin_bytes": len(compiled.asm["cubin"])}
