// Fake-quantizes a tensor with qtorchext from a project that found it with
// find_package(qtorchext), and checks the result against ATen's op.
#include <ATen/ATen.h>

#include <iostream>

#include <qtorchext/qtorchext.h>

int main() {
  at::manual_seed(0);
  const at::Tensor x = at::randn({4, 8}) * 3;
  const at::Tensor ours = qat::fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255);
  const at::Tensor ref = at::fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255);
  const bool equal = at::equal(ours, ref);
  std::cout << "qtorchext " << qat::version() << " (CPU kernels: " << qat::cpu_capability()
            << "): per-tensor fake quant " << (equal ? "equals" : "DIFFERS FROM")
            << " at::fake_quantize_per_tensor_affine\n";
  return equal ? 0 : 1;
}
