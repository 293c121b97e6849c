// Autograd of the converted-layer ops: inference only. An input that
// requires grad gets a node that raises when differentiated.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY_IMPL(qtorchext, Autograd, m) {
  for (const char* name :
       {"quantized_linear", "quantized_conv", "quantized_embedding", "pack_quantized_weight"}) {
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
  }
}
