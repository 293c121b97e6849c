// Autograd kernel of the fake cast: identity gradient (straight through).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "qtorchext/ops.h"

namespace qtorchext::autograd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class FakeCastFunction : public torch::autograd::Function<FakeCastFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, at::ScalarType dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return qat::fake_cast(input, dtype);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

at::Tensor fake_cast(const at::Tensor& input, at::ScalarType dtype) {
  if (at::GradMode::is_enabled() && input.requires_grad()) {
    return FakeCastFunction::apply(input, dtype);
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  return qat::fake_cast(input, dtype);
}

}  // namespace
}  // namespace qtorchext::autograd

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  m.impl("fake_cast", &qtorchext::autograd::fake_cast);
}
