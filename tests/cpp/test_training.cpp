// A C++ training loop gets the same gradients as Python: autograd lives in
// the dispatcher ops, so a plain LibTorch loop trains through fake quant.
#include <gtest/gtest.h>

#include "test_utils.h"

TEST(Training, StepMovesWeightsAndLearnableScale) {
  torch::manual_seed(7);
  // y = x W^T with W fake-quantized to 4 bits (LSQ), fitted to a teacher.
  const at::Tensor teacher = torch::randn({8, 16});
  const at::Tensor x = torch::randn({256, 16});
  const at::Tensor target = x.matmul(teacher.t());
  at::Tensor w = (torch::randn({8, 16}) * 0.1).requires_grad_(true);
  at::Tensor scale = torch::full({8}, 0.05).requires_grad_(true);
  at::Tensor zero_point = torch::zeros({8}).requires_grad_(true);
  torch::optim::SGD opt({w, scale, zero_point}, torch::optim::SGDOptions(0.05));
  // LSQ's gradient scale 1 / sqrt(elements per channel * quant_max).
  const double grad_factor = 1.0 / std::sqrt(16.0 * 7.0);

  auto loss_fn = [&] {
    const at::Tensor wq = qat::fake_quantize_learnable_per_channel_affine(
        w, scale, zero_point, 0, -8, 7, grad_factor);
    return torch::mse_loss(x.matmul(wq.t()), target);
  };
  const at::Tensor w0 = w.detach().clone();
  const at::Tensor s0 = scale.detach().clone();
  const double first = loss_fn().item<double>();
  for (int step = 0; step < 200; ++step) {
    opt.zero_grad();
    at::Tensor loss = loss_fn();
    loss.backward();
    ASSERT_TRUE(w.grad().defined() && scale.grad().defined() && zero_point.grad().defined());
    opt.step();
  }
  const double last = loss_fn().item<double>();
  EXPECT_LT(last, 0.5 * first) << "first " << first << " last " << last;
  EXPECT_FALSE(at::equal(w.detach(), w0));
  EXPECT_FALSE(at::equal(scale.detach(), s0));
}

TEST(Training, StraightThroughGradientEqualsATen) {
  torch::manual_seed(8);
  at::Tensor w1 = torch::randn({4, 4}).requires_grad_(true);
  at::Tensor w2 = w1.detach().clone().requires_grad_(true);
  qat::fake_quantize_per_tensor_affine(w1, 0.1, 0, -8, 7).sum().backward();
  at::fake_quantize_per_tensor_affine(w2, 0.1, 0, -8, 7).sum().backward();
  EXPECT_TRUE(at::equal(w1.grad(), w2.grad()));
}
