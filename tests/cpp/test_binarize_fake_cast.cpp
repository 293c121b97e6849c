// Binarization and fake casting from C++ against references.
#include <gtest/gtest.h>

#include "test_utils.h"

using qtorchext_test::for_each_capability;
using qtorchext_test::same;

TEST(Binarize, PerChannelValuesAndGradients) {
  at::manual_seed(5);
  for_each_capability([](const std::string& cap) {
    const at::Tensor x = at::randn({6, 10});
    const at::Tensor alpha = at::rand({6}) + 0.1;
    at::Tensor xr = x.clone().requires_grad_(true);
    at::Tensor ar = alpha.clone().requires_grad_(true);
    at::Tensor y = qat::binarize(xr, ar, 0, 1.0);
    const at::Tensor sign = at::where(x < 0, -1.0, 1.0).to(at::kFloat);
    EXPECT_TRUE(same(y, sign * alpha.view({6, 1}))) << cap;
    const at::Tensor g = at::randn({6, 10});
    y.backward(g);
    EXPECT_TRUE(same(xr.grad(), g * (x.abs() <= 1.0).to(at::kFloat))) << cap;
    EXPECT_TRUE(at::allclose(
        ar.grad().to(at::kDouble),
        (g.to(at::kDouble) * sign.to(at::kDouble)).sum(1),
        /*rtol=*/1e-5,
        /*atol=*/1e-5))
        << cap;
  });
}

TEST(FakeCast, EqualsRoundTripThroughTheDtype) {
  at::manual_seed(6);
  for_each_capability([](const std::string& cap) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      const at::Tensor x = (at::randn({1000}, at::kDouble) * 1e4).to(dtype);
      for (auto target : {at::kHalf, at::kBFloat16}) {
        EXPECT_TRUE(same(qat::fake_cast(x, target), x.to(target).to(dtype))) << cap;
      }
    }
  });
}
