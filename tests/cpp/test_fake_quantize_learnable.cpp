// Learnable (LSQ) fake quantization from C++: values and gradients for input,
// scale and zero point equal ATen's ops bit for bit.
#include <gtest/gtest.h>

#include "test_utils.h"

using qtorchext_test::for_each_capability;
using qtorchext_test::same;

namespace {

struct Result {
  at::Tensor out, dx, ds, dz;
};

template <class F>
Result run(F fn, const at::Tensor& x, const at::Tensor& s, const at::Tensor& z, const at::Tensor& g) {
  at::Tensor xr = x.clone().requires_grad_(true);
  at::Tensor sr = s.clone().requires_grad_(true);
  at::Tensor zr = z.clone().requires_grad_(true);
  at::Tensor y = fn(xr, sr, zr);
  y.backward(g);
  return {y, xr.grad(), sr.grad(), zr.grad()};
}

void expect_same(const Result& a, const Result& b, const std::string& what) {
  EXPECT_TRUE(same(a.out, b.out)) << what << " output";
  EXPECT_TRUE(same(a.dx, b.dx)) << what << " dX";
  EXPECT_TRUE(same(a.ds, b.ds)) << what << " dScale";
  EXPECT_TRUE(same(a.dz, b.dz)) << what << " dZeroPoint";
}

}  // namespace

TEST(FakeQuantizeLearnable, PerTensorMatchesATen) {
  at::manual_seed(3);
  for_each_capability([](const std::string& cap) {
    for (double zp : {0.0, 2.3, 17.0}) {
      const at::Tensor x = at::randn({33, 21}) * 3;
      const at::Tensor g = at::randn({33, 21});
      const at::Tensor s = at::full({1}, 0.0713);
      const at::Tensor z = at::full({1}, zp);
      auto ours = run(
          [](auto& a, auto& b, auto& c) {
            return qat::fake_quantize_learnable_per_tensor_affine(a, b, c, 0, 255, 0.5);
          },
          x, s, z, g);
      auto ref = run(
          [](auto& a, auto& b, auto& c) {
            return at::_fake_quantize_learnable_per_tensor_affine(a, b, c, 0, 255, 0.5);
          },
          x, s, z, g);
      expect_same(ours, ref, cap + " zp " + std::to_string(zp));
    }
  });
}

TEST(FakeQuantizeLearnable, PerChannelMatchesATen) {
  at::manual_seed(4);
  for_each_capability([](const std::string& cap) {
    for (int64_t axis : {0, 1}) {
      const at::Tensor x = at::randn({12, 8, 5}) * 2;
      const at::Tensor g = at::randn({12, 8, 5});
      const int64_t c = x.size(axis);
      const at::Tensor s = at::rand({c}) * 0.1 + 0.01;
      const at::Tensor z = at::rand({c}) * 15 - 8;
      auto ours = run(
          [axis](auto& a, auto& b, auto& cc) {
            return qat::fake_quantize_learnable_per_channel_affine(a, b, cc, axis, -8, 7, 1.0);
          },
          x, s, z, g);
      auto ref = run(
          [axis](auto& a, auto& b, auto& cc) {
            return at::_fake_quantize_learnable_per_channel_affine(a, b, cc, axis, -8, 7, 1.0);
          },
          x, s, z, g);
      expect_same(ours, ref, cap + " axis " + std::to_string(axis));
    }
  });
}
