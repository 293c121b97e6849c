// Mixed precision from C++: the knapsack against brute force, a plan applied
// through quantize_static's per_module, the SVG frontier, bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "test_utils.h"

namespace {

torch::nn::Sequential mlp() {
  torch::manual_seed(0);
  return torch::nn::Sequential(
      torch::nn::Linear(64, 128), torch::nn::ReLU(), torch::nn::Linear(128, 128), torch::nn::GELU(),
      torch::nn::Linear(128, 16));
}

std::vector<at::Tensor> data(int64_t seed) {
  torch::manual_seed(seed);
  return {torch::randn({32, 64}), torch::randn({32, 64}), torch::randn({32, 64})};
}

struct BranchyImpl : torch::nn::Cloneable<BranchyImpl> {  // mixed_precision clones the model
  qat::nn::Linear a{nullptr}, b{nullptr};
  BranchyImpl() {
    reset();
  }
  void reset() override {
    a = register_module("a", qat::nn::Linear(16, 16));
    b = register_module("b", qat::nn::Linear(16, 16));
  }
  at::Tensor forward(const at::Tensor& x) {
    return a(x);
  }
};
TORCH_MODULE(Branchy);

}  // namespace

TEST(MixedPrecision, ChoosePrecisionsFindsTheBruteForceOptimum) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u01(0, 1);
  std::uniform_int_distribution<int64_t> size(1, 900);
  for (int trial = 0; trial < 5; ++trial) {
    std::vector<std::vector<double>> error(5, std::vector<double>(3));
    std::vector<std::vector<int64_t>> bytes(5, std::vector<int64_t>(3));
    int64_t lo = 0, hi = 0;
    for (size_t l = 0; l < 5; ++l) {
      for (size_t c = 0; c < 3; ++c) {
        error[l][c] = u01(rng), bytes[l][c] = size(rng);
      }
      lo += *std::min_element(bytes[l].begin(), bytes[l].end());
      hi += *std::max_element(bytes[l].begin(), bytes[l].end());
    }
    for (int64_t budget : {lo, (lo + hi) / 2, hi}) {
      double best = 1e300;
      for (int code = 0; code < 243; ++code) {  // 3^5 choices
        int64_t b = 0;
        double e = 0;
        for (int l = 0, k = code; l < 5; ++l, k /= 3) {
          b += bytes[l][k % 3], e += error[l][k % 3];
        }
        if (b <= budget) {
          best = std::min(best, e);
        }
      }
      const qat::PrecisionChoice c = qat::choose_precisions(error, bytes, budget);
      EXPECT_LE(c.bytes, budget);
      EXPECT_NEAR(c.error, best, 1e-12) << "budget " << budget;
    }
  }
  EXPECT_THROW_WITH(qat::choose_precisions({{1.0, 2.0}, {1.0, 3.0}}, {{10, 5}, {10, 4}}, 5), "smallest possible total, 9 bytes");
}

TEST(MixedPrecision, PlanMeetsTheBudgetAndAppliesThroughPerModule) {
  torch::nn::Sequential model = mlp();
  model->eval();
  const std::vector<at::Tensor> cal = data(1);
  const auto before = model[0]->as<torch::nn::Linear>()->weight.clone();
  const std::string svg = (std::filesystem::temp_directory_path() / "qtorchext_mp_test.svg").string();
  std::filesystem::remove(svg);
  const qat::MixedPrecisionPlan plan = qat::mixed_precision(
      model, cal, qat::MixedPrecisionOptions().budget(0.2).group_size(32).plot_path(svg).progress(false));
  EXPECT_TRUE(torch::equal(model[0]->as<torch::nn::Linear>()->weight, before));  // the model is not changed
  ASSERT_EQ(plan.presets.size(), 3u);
  EXPECT_LE(plan.bytes, 0.2 * static_cast<double>(plan.float_bytes));
  for (const auto& layer : plan.layers) {  // more bits, less error
    EXPECT_LT(layer.error.at("int8"), layer.error.at("int4_weight_only")) << layer.layer;
    EXPECT_LT(layer.error.at("int4_weight_only"), layer.error.at("int2_weight_only")) << layer.layer;
  }
  std::ifstream in(svg);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("chosen"), std::string::npos);
  EXPECT_NE(text.find("int2_weight_only"), std::string::npos);
  std::filesystem::remove(svg);
  // applied: the converted layers' bytes are what the plan said
  qat::quantize_static(model, cal, std::string("int8"), false, plan.qconfig);
  int64_t total = 0;
  for (size_t i : {0, 2, 4}) {
    auto* layer = model[i]->as<qat::nn::Linear>();
    ASSERT_EQ(layer->stage(), qat::nn::Stage::kQuantized);
    EXPECT_EQ(layer->quantized_state().meta.describe().substr(0, 5),
              plan.presets.at(std::to_string(i)) == "int8" ? "8-bit" : plan.presets.at(std::to_string(i)).substr(3, 1) + "-bit");
    total += qat::detail::module_bytes(*model[i]);
  }
  EXPECT_EQ(total, plan.bytes);
}

TEST(MixedPrecision, BadRequestsAreClearErrors) {
  torch::nn::Sequential model = mlp();
  const std::vector<at::Tensor> cal = data(1);
  auto opts = [] { return qat::MixedPrecisionOptions().progress(false); };
  EXPECT_THROW_WITH(qat::mixed_precision(model, cal, opts().budget(0)), "budget (quantized bytes / float bytes) must be a positive number");
  EXPECT_THROW_WITH(qat::mixed_precision(model, cal, opts().candidates({})), "candidates is empty");
  EXPECT_THROW_WITH(qat::mixed_precision(model, cal, opts().candidates({"int8", "int3"})), "candidate 'int3'");
  EXPECT_THROW_WITH(qat::mixed_precision(model, {}, opts()), "batches is empty");
  EXPECT_THROW_WITH(qat::mixed_precision(model, cal, opts().budget(0.01)), "cannot be met");
  EXPECT_THROW_WITH(qat::mixed_precision(model, cal, opts().plot_path("x.png")), "must name an .svg file");
  Branchy branchy;
  EXPECT_THROW_WITH(qat::mixed_precision(branchy, {torch::randn({4, 16})}, opts()), "never reach layer 'b'");
}
