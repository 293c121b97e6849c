// Autograd of the binary-weight linear layer linear_binary (bit-packed weights, popcount kernels): inference only, no gradients (an input that
// requires grad gets a node that raises when differentiated).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  for (const char* name : {"linear_binary"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}
