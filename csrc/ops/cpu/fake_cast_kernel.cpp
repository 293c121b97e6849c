// CPU kernel of the float16 / bfloat16 fake cast.
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "ops/common/checks.h"
#include "ops/fake_cast.h"
#include "ops/cpu/cpu_utils.h"

namespace qtorchext::cpu {
namespace {

constexpr const char* kFakeCast = "qtorchext::fake_cast";

at::Tensor fake_cast_cpu(const at::Tensor& input, at::ScalarType dtype) {
  checks::fake_cast_args(input, dtype, kFakeCast);
  at::Tensor out = at::empty_like(input);
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor x = with_layout_of(input, out);
  const auto& table = kernels();
  const ScalarKind kind = scalar_kind(input.scalar_type());
  const ScalarKind target = scalar_kind(dtype);
  const void* xp = x.const_data_ptr();
  void* op = out.data_ptr();
  parallel_elements(out.numel(), [&](int64_t b, int64_t e) {
    table.fake_cast(kind, target, xp, op, b, e);
  });
  return out;
}

}  // namespace
}  // namespace qtorchext::cpu

TORCH_LIBRARY_IMPL(qtorchext, CPU, m) {
  m.impl("fake_cast", &qtorchext::cpu::fake_cast_cpu);
}
