// Schema and typed C++ entry point of the float16 / bfloat16 fake cast.
#include <torch/library.h>

#include "ops/dispatch.h"
#include "qtorchext/ops.h"

TORCH_LIBRARY_FRAGMENT(qtorchext, m) {
  m.def("fake_cast(Tensor input, ScalarType dtype) -> Tensor", {at::Tag::pt2_compliant_tag});
}

namespace qat {

at::Tensor fake_cast(const at::Tensor& input, at::ScalarType dtype) {
  return QTORCHEXT_CALL_OP(
      "fake_cast", at::Tensor(const at::Tensor&, at::ScalarType), input, dtype);
}

}  // namespace qat
