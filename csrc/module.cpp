// macaw_fast._C: the compiled part of macaw-fast (the meta-batch sampler, csrc/sampler.cpp; the low-rank Adam step, csrc/lowrank_adam.cpp; theta = W z + b of all WLinear layers, csrc/generate.cpp; the W products of the adapt step, csrc/skinny.cpp; the value net's forward without a graph, csrc/value_forward.cpp).
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_sampler(py::module_& m);
void register_lowrank_adam(py::module_& m);
void register_generate(py::module_& m);
void register_skinny(py::module_& m);
void register_value_forward(py::module_& m);

PYBIND11_MODULE(_C, m) {
    m.doc() = "macaw-fast compiled extension: the meta-batch sampler, the low-rank Adam step, theta generation, the skinny W products and the value forward";
    m.attr("__version__") = MACAW_FAST_VERSION;
    register_sampler(m);
    register_lowrank_adam(m);
    register_generate(m);
    register_skinny(m);
    register_value_forward(m);
}
