// Autograd of the weight-only linear layer linear_weight_only (2/4/8-bit packed weights, float input): inference only, no gradients (an input that
// requires grad gets a node that raises when differentiated).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  for (const char* name : {"linear_weight_only"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}
