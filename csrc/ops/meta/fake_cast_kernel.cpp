// Meta kernel of the float16 / bfloat16 fake cast.
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_cast.h"

namespace qtorchext::meta {
namespace {

at::Tensor fake_cast(const at::Tensor& input, at::ScalarType dtype) {
  checks::fake_cast_args(input, dtype, "qtorchext::fake_cast");
  return at::empty_like(input);
}

}  // namespace
}  // namespace qtorchext::meta

TORCH_LIBRARY_IMPL(qtorchext, Meta, m) {
  m.impl("fake_cast", &qtorchext::meta::fake_cast);
}
