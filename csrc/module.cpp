// macaw_fast._C: the compiled part of macaw-fast (meta-batch sampling lives here).
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
    m.doc() = "macaw-fast compiled extension";
    m.attr("__version__") = MACAW_FAST_VERSION;
    m.def("num_threads_hint", []() { return 1; },
          "Placeholder probe: returns 1 when the extension loads.");
}
