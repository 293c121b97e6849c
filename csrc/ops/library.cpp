// The qtorchext operator namespace. Each op family declares its schemas with
// TORCH_LIBRARY_FRAGMENT in csrc/ops/<family>.cpp; backends register kernels
// in csrc/ops/{cpu,cuda,meta,autograd}/<family>_kernel.*.
#include <torch/library.h>

TORCH_LIBRARY(qtorchext, m) {}
