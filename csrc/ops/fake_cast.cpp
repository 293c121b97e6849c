// Schema and typed C++ entry point of the float16 / bfloat16 fake cast.
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include "ops/fake_cast.h"
#include "ops/common/checks.h"

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

namespace qtorchext::checks {

void fake_cast_args(const at::Tensor& input, at::ScalarType dtype, const char* op) {
  input_dtype(input, op);
  TORCH_CHECK(
      dtype == at::kHalf || dtype == at::kBFloat16,
      op, ": dtype must be torch.float16 or torch.bfloat16, got ", dtype);
}

}  // namespace qtorchext::checks
