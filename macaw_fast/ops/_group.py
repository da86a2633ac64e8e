"""Group kernels: one Triton launch running a per-layer kernel body for up to N layers.

A group kernel takes every layer's pointers, sizes and strides as separate scalar arguments (one
"slot" per layer; Triton has no arrays of pointers of mixed shapes), reads the layer from the last
grid axis and calls the per-layer body with that slot's arguments. Its source is the same few lines
repeated N times with a different suffix, so it is generated here from one description instead of
being written out by hand: `group_kernel` builds the function's source, registers it with
`linecache` (Triton reads a kernel's source through `inspect`) and returns the ``triton.jit``
function. Imported lazily: needs triton.
"""

from __future__ import annotations

import linecache
from typing import Sequence

import triton
import triton.language as tl


def group_source(name: str, body: str, n: int, sections: Sequence[Sequence[str]], shared: Sequence[str],
                 constexprs: Sequence[str], pids: Sequence[str], call: str, guard: str | None = None,
                 doc: str = "") -> str:
    """The Python source of a group kernel.

    Args:
        name: the kernel's name. body: the name of the per-layer ``@triton.jit`` function it calls.
        n: slots (layers per launch).
        sections: the per-slot parameters, as groups of templates with ``{l}`` for the slot number;
            the signature lists each group for slot 0, 1, ..., n-1 in turn (e.g. all pointers of
            every slot, then all sizes), in the order the launcher passes them.
        shared: parameters common to all slots (after the per-slot ones).
        constexprs: ``tl.constexpr`` parameters after ``NL`` (the number of slots in use).
        pids: names of the program ids before the layer axis (the layer is the last grid axis).
        call: the body's arguments, a template with ``{l}``.
        guard: a condition (template with ``{l}``) under which slot ``l``'s body runs, or None.
        doc: the kernel's docstring.
    """
    params = [t.format(l=l) for sec in sections for l in range(n) for t in sec]
    params += list(shared) + ["NL: tl.constexpr"] + [f"{c}: tl.constexpr" for c in constexprs]
    lines = [f"def {name}({', '.join(params)}):", f'    """{doc}"""']
    lines += [f"    {p} = tl.program_id({i})" for i, p in enumerate(pids)]
    lines.append(f"    layer = tl.program_id({len(pids)})")
    for l in range(n):
        ind = "    "
        if l > 0:                       # slots past NL are compiled out
            lines.append(f"{ind}if NL > {l}:")
            ind += "    "
        lines.append(f"{ind}if layer == {l}:")
        ind += "    "
        if guard is not None:
            lines.append(f"{ind}if {guard.format(l=l)}:")
            ind += "    "
        lines.append(f"{ind}{body}({call.format(l=l)})")
    return "\n".join(lines) + "\n"


def group_kernel(module_globals: dict, name: str, body, n: int, **spec):
    """A ``triton.jit`` group kernel (see `group_source` for ``spec``) calling ``body`` (a
    ``triton.jit`` function), defined as if written in the module whose globals are given."""
    body_name = body.__name__
    src = group_source(name, body_name, n, **spec)
    filename = f"<macaw_fast generated {module_globals['__name__']}.{name}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    ns = {"tl": tl, body_name: body, "__name__": module_globals["__name__"]}
    exec(compile(src, filename, "exec"), ns)       # noqa: S102 - our own generated source
    fn = ns[name]
    fn.__module__ = module_globals["__name__"]
    return triton.jit(fn)
