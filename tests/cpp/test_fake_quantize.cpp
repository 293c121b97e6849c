// Affine fake quantization from C++: values and straight-through gradients
// equal ATen's ops bit for bit, on every CPU kernel set; argument errors.
#include <gtest/gtest.h>

#include "test_utils.h"

using qtorchext_test::for_each_capability;
using qtorchext_test::mixed_input;
using qtorchext_test::same;
using qtorchext_test::where;

namespace {

const at::ScalarType kDtypes[] = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
const std::pair<int64_t, int64_t> kRanges[] = {{0, 255}, {-128, 127}, {-8, 7}, {-2, 1}};

/// Checks output and input gradient of ours against ref for one input.
void expect_same_fwd_bwd(
    const std::function<at::Tensor(const at::Tensor&)>& ours,
    const std::function<at::Tensor(const at::Tensor&)>& ref,
    const at::Tensor& x,
    const std::string& what) {
  at::Tensor x1 = x.clone().requires_grad_(true);
  at::Tensor x2 = x.clone().requires_grad_(true);
  at::Tensor y1 = ours(x1);
  at::Tensor y2 = ref(x2);
  ASSERT_TRUE(same(y1, y2)) << what;
  const at::Tensor g = at::randn(x.sizes(), at::kDouble).to(x.scalar_type());
  y1.backward(g);
  y2.backward(g);
  ASSERT_TRUE(same(x1.grad(), x2.grad())) << what;
}

}  // namespace

TEST(FakeQuantize, PerTensorMatchesATen) {
  at::manual_seed(0);
  for_each_capability([](const std::string& cap) {
    for (auto dtype : kDtypes) {
      for (auto [qmin, qmax] : kRanges) {
        const int64_t zp = qmin + (qmax - qmin) / 3;
        const at::Tensor x = mixed_input({7, 5, 9}, dtype, 0.125, zp, qmin, qmax);
        const at::Tensor s = at::full({1}, 0.125);
        const at::Tensor z = at::full({1}, zp, at::kInt);
        expect_same_fwd_bwd(
            [&](const at::Tensor& t) {
              return qat::fake_quantize_per_tensor_affine(t, s, z, qmin, qmax);
            },
            [&](const at::Tensor& t) {
              return at::fake_quantize_per_tensor_affine(t, s, z, qmin, qmax);
            },
            x,
            where(cap, dtype));
        // Numbers for the qparams give the same result.
        EXPECT_TRUE(same(
            qat::fake_quantize_per_tensor_affine(x, 0.125, zp, qmin, qmax),
            at::fake_quantize_per_tensor_affine(x, 0.125, zp, qmin, qmax)));
      }
    }
  });
}

TEST(FakeQuantize, PerChannelMatchesATenInEveryLayout) {
  at::manual_seed(1);
  for_each_capability([](const std::string& cap) {
    for (auto dtype : kDtypes) {
      const at::Tensor base = mixed_input({4, 6, 5, 3}, dtype, 0.05, 0, -128, 127);
      const at::Tensor layouts[] = {
          base, base.contiguous(at::MemoryFormat::ChannelsLast), base.transpose(0, 2)};
      for (const auto& x : layouts) {
        for (int64_t axis : {0, 1, -1}) {
          const int64_t c = x.size(axis);
          const at::Tensor s = at::rand({c}) * 0.2 + 0.01;
          const at::Tensor z = at::randint(-128, 128, {c}, at::kInt);
          expect_same_fwd_bwd(
              [&](const at::Tensor& t) {
                return qat::fake_quantize_per_channel_affine(t, s, z, axis, -128, 127);
              },
              [&](const at::Tensor& t) {
                return at::fake_quantize_per_channel_affine(t, s, z, (axis + 4) % 4, -128, 127);
              },
              x,
              where(cap, dtype));
        }
      }
    }
  });
}

TEST(FakeQuantize, PerGroupIsPerChannelOnTheGroupedView) {
  at::manual_seed(2);
  for_each_capability([](const std::string& cap) {
    for (auto dtype : kDtypes) {
      const at::Tensor x = (at::randn({16, 64}, at::kDouble) * 2).to(dtype);
      const at::Tensor s = at::rand({16, 2}) * 0.3 + 0.01;
      const at::Tensor z = at::randint(-8, 8, {16, 2}, at::kInt);
      expect_same_fwd_bwd(
          [&](const at::Tensor& t) { return qat::fake_quantize_per_group(t, s, z, 32, -8, 7); },
          [&](const at::Tensor& t) {
            return at::fake_quantize_per_channel_affine(
                       t.reshape({-1, 32}), s.reshape({-1}), z.reshape({-1}), 0, -8, 7)
                .reshape(t.sizes());
          },
          x,
          where(cap, dtype));
    }
  });
}

TEST(FakeQuantize, ClearErrors) {
  const at::Tensor x = at::randn({4, 6});
  const at::Tensor s = at::full({1}, 0.1);
  const at::Tensor z = at::zeros({1}, at::kInt);
  EXPECT_THROW_WITH(
      qat::fake_quantize_per_tensor_affine(x, s, z, 5, 3), "quant_min (5) must be <= quant_max (3)");
  EXPECT_THROW_WITH(
      qat::fake_quantize_per_tensor_affine(x, s, z, -300, 3), "must lie within [-128, 255]");
  EXPECT_THROW_WITH(
      qat::fake_quantize_per_tensor_affine(x, at::full({1}, -0.1), z, 0, 255),
      "scale must be finite and > 0, got -0.1");
  EXPECT_THROW_WITH(
      qat::fake_quantize_per_tensor_affine(x, 0.1, 300, 0, 255),
      "zero_point (300) must lie within [quant_min, quant_max] = [0, 255]");
  EXPECT_THROW_WITH(
      qat::fake_quantize_per_channel_affine(x, at::full({6}, 0.1), at::zeros({6}, at::kInt), 3, 0, 255),
      "axis (3) is out of range for an input with 2 dimension(s)");
  EXPECT_THROW_WITH(
      qat::fake_quantize_per_group(x, at::full({4, 1}, 0.1), at::zeros({4, 1}, at::kInt), 4, -8, 7),
      "group_size (4) must divide the last dimension of input (6)");
  EXPECT_THROW_WITH(
      qat::fake_quantize_per_tensor_affine(at::ones({3}, at::kInt), s, z, 0, 255),
      "input must be a floating point tensor");
}
