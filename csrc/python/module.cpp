// qtorchext._C: the Python extension module. It links libqtorchext (whose
// static initialisers register the torch.ops.qtorchext ops) and exposes
// build information and the CPU kernel selection; the ops themselves are
// called through torch.ops.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "qtorchext/qtorchext.h"

#ifndef QTORCHEXT_WITH_CUDA
#define QTORCHEXT_WITH_CUDA 0
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "qtorchext native module";
  m.attr("__version__") = qat::version();
  m.attr("torch_version") = QTORCHEXT_TORCH_VERSION;
  m.attr("with_cuda") = static_cast<bool>(QTORCHEXT_WITH_CUDA);
  m.def("cpu_capability", &qat::cpu_capability, "Instruction set of the CPU kernels in use.");
  m.def(
      "supported_cpu_capabilities",
      &qat::supported_cpu_capabilities,
      "Instruction sets this CPU can run, best last.");
  m.def(
      "set_cpu_capability",
      &qat::set_cpu_capability,
      pybind11::arg("name"),
      "Selects the CPU kernels ('default' or 'avx2').");
}
