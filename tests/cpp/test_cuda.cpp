// The CUDA kernels from C++: registration (runs everywhere) and, on a machine
// with a GPU, values and gradients against the CPU kernels.
#include <gtest/gtest.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include "test_utils.h"

#ifndef QTORCHEXT_WITH_CUDA
#define QTORCHEXT_WITH_CUDA 0
#endif

using qtorchext_test::same;

namespace {

bool has_cuda_kernel(const char* name) {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  return op.hasKernelForDispatchKey(c10::DispatchKey::CUDA);
}

#define SKIP_WITHOUT_CUDA()             \
  do {                                  \
    if (!torch::cuda::is_available()) { \
      GTEST_SKIP() << "no CUDA device"; \
    }                                   \
  } while (0)

}  // namespace

TEST(Cuda, KernelsRegisteredIffBuiltWithCuda) {
  for (const char* name :
       {"qtorchext::fake_quantize_per_tensor_affine",
        "qtorchext::_fake_quantize_per_channel_affine_cachemask",
        "qtorchext::_fake_quantize_per_group_cachemask",
        "qtorchext::_fake_quantize_mask_backward",
        "qtorchext::fake_quantize_learnable_per_tensor_affine",
        "qtorchext::_fake_quantize_learnable_per_channel_affine_backward",
        "qtorchext::binarize",
        "qtorchext::_binarize_backward",
        "qtorchext::fake_cast",
        "qtorchext::observer_minmax_update",
        "qtorchext::_fused_observe_fake_quantize_cachemask",
        "qtorchext::linear_int8",
        "qtorchext::linear_weight_only",
        "qtorchext::observer_histogram_update",
        "qtorchext::choose_qparams_per_token"}) {
    EXPECT_EQ(has_cuda_kernel(name), static_cast<bool>(QTORCHEXT_WITH_CUDA))
        << name;
  }
}

TEST(Cuda, AffineForwardAndStraightThroughMatchCpu) {
  SKIP_WITHOUT_CUDA();
  at::manual_seed(11);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    const at::Tensor x =
        qtorchext_test::mixed_input({7, 33, 5}, dtype, 0.125, 3, -128, 127);
    const at::Tensor g = at::randn({7, 33, 5}).to(dtype);
    const at::Tensor scale = at::rand({33}) * 0.1 + 0.01;
    const at::Tensor zp = at::randint(-128, 128, {33}, at::kInt);
    for (const bool per_channel : {false, true}) {
      auto run = [&](const at::Device& d) {
        at::Tensor xr = x.detach().to(d).requires_grad_(true);
        at::Tensor y =
            per_channel
                ? qat::fake_quantize_per_channel_affine(
                      xr, scale.to(d), zp.to(d), 1, -128, 127)
                : qat::fake_quantize_per_tensor_affine(xr, 0.125, 3, -128, 127);
        y.backward(g.to(d));
        return std::pair{y.cpu(), xr.grad().cpu()};
      };
      const auto [y_cpu, gx_cpu] = run(at::kCPU);
      const auto [y_gpu, gx_gpu] = run(at::kCUDA);
      EXPECT_TRUE(same(y_cpu, y_gpu))
          << dtype << " per_channel=" << per_channel;
      EXPECT_TRUE(same(gx_cpu, gx_gpu))
          << dtype << " per_channel=" << per_channel;
    }
  }
}

TEST(Cuda, LearnableGradientsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  at::manual_seed(12);
  const at::Tensor x = (at::rand({16, 40}) - 0.5) * 30 * 0.05;
  const at::Tensor g = at::randn({16, 40});
  const at::Tensor scale = at::rand({16}) * 0.05 + 0.02;
  const at::Tensor zp = at::rand({16}) * 255;
  auto run = [&](const at::Device& d) {
    at::Tensor xr = x.detach().to(d).requires_grad_(true);
    at::Tensor s = scale.detach().to(d).requires_grad_(true);
    at::Tensor z = zp.detach().to(d).requires_grad_(true);
    at::Tensor y = qat::fake_quantize_learnable_per_channel_affine(
        xr, s, z, 0, 0, 255, 0.5);
    y.backward(g.to(d));
    return std::vector<at::Tensor>{
        y.cpu(), xr.grad().cpu(), s.grad().cpu(), z.grad().cpu()};
  };
  const auto c = run(at::kCPU);
  const auto r = run(at::kCUDA);
  EXPECT_TRUE(same(c[0], r[0]));
  if (at::get_cpu_capability() !=
      "DEFAULT") {  // the CPU then contracts with FMA, as CUDA
    EXPECT_TRUE(same(c[1], r[1]));
  }
  EXPECT_TRUE(at::allclose(c[2], r[2], 1e-4, 1e-4));
  EXPECT_TRUE(at::allclose(c[3], r[3], 1e-4, 1e-4));
}

TEST(Cuda, BinarizeAndFakeCastMatchCpu) {
  SKIP_WITHOUT_CUDA();
  at::manual_seed(13);
  const at::Tensor x = at::randn({9, 31}).t();  // non-contiguous
  const at::Tensor alpha = at::rand({9}) + 0.1;
  const at::Tensor g = at::randn({31, 9});
  auto run = [&](const at::Device& d) {
    at::Tensor xr = x.detach().to(d).requires_grad_(true);
    at::Tensor a = alpha.detach().to(d).requires_grad_(true);
    at::Tensor y = qat::binarize(xr, a, 1, 1.0);
    y.backward(g.to(d));
    return std::vector<at::Tensor>{
        y.cpu(),
        xr.grad().cpu(),
        a.grad().cpu(),
        qat::fake_cast(x.to(d), at::kBFloat16).cpu(),
        qat::fake_cast(x.to(d), at::kHalf).cpu()};
  };
  const auto c = run(at::kCPU);
  const auto r = run(at::kCUDA);
  EXPECT_TRUE(same(c[0], r[0]));
  EXPECT_TRUE(same(c[1], r[1]));
  EXPECT_TRUE(at::allclose(c[2], r[2], 1e-5, 1e-5));
  EXPECT_TRUE(same(c[3], r[3]));
  EXPECT_TRUE(same(c[4], r[4]));
}

TEST(Cuda, ArgumentErrorsMatchCpu) {
  SKIP_WITHOUT_CUDA();
  for (const auto& d : {at::Device(at::kCPU), at::Device(at::kCUDA)}) {
    const auto opts = at::TensorOptions().device(d);
    EXPECT_THROW_WITH(
        qat::fake_quantize_per_channel_affine(
            at::ones({3, 4}, opts),
            at::ones({3}, opts),
            at::zeros({3}, opts.dtype(at::kInt)),
            1,
            0,
            255),
        "scale must be 1-D with input.size(1) = 4 entries");
  }
}

TEST(Cuda, ConvertedModelMovesToTheGpu) {
  SKIP_WITHOUT_CUDA();
  // quantize_dynamic from C++, then .to(CUDA): the int8 layers rebuild their
  // GEMM weights for the GPU and compute what the CPU computes, bit for bit
  torch::manual_seed(7);
  torch::nn::Sequential model(
      torch::nn::Linear(64, 96), torch::nn::ReLU(), torch::nn::Linear(96, 40));
  qat::quantize_dynamic(*model, "int8");
  torch::NoGradGuard guard;
  for (int64_t rows : {3, 40}) {  // the fused few-row kernel and the int8 GEMM
    const at::Tensor x = torch::randn({rows, 64});
    const at::Tensor want = model->forward(x);
    model->to(at::kCUDA);
    const at::Tensor got = model->forward(x.cuda()).cpu();
    model->to(at::kCPU);
    EXPECT_TRUE(same(got, want)) << rows << " rows";
    EXPECT_TRUE(same(model->forward(x), want)) << "back on the CPU, " << rows << " rows";
  }
}
