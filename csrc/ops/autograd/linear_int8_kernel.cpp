// Autograd of the integer linear layer linear_int8 (int8 static / dynamic inputs, exact int32 sums): inference only, no gradients (an input that
// requires grad gets a node that raises when differentiated).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  for (const char* name : {"linear_int8"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}
