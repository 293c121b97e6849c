// GPTQ from C++: the passes of qat::gptq (order, earlier layers quantized,
// shared inputs) against the ops called by hand, and the PTQ overloads.
#include <gtest/gtest.h>

#include "test_utils.h"

namespace {

at::Tensor correlated(int64_t rows, int64_t k, int64_t seed) {
  torch::manual_seed(seed);
  const at::Tensor mix = torch::eye(k) + 2.0 * torch::randn({k, k}) / std::sqrt(static_cast<double>(k));
  return torch::matmul(torch::randn({rows, k}), mix) + 0.3 * torch::randn({k});
}

std::vector<at::Tensor> batches(int64_t k, int64_t seed) {
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < 4; ++i) {
    out.push_back(correlated(64, k, seed + i));
  }
  return out;
}

torch::nn::Sequential mlp() {
  torch::manual_seed(6);
  return torch::nn::Sequential(
      torch::nn::Linear(64, 96), torch::nn::ReLU(), torch::nn::Linear(96, 64), torch::nn::ReLU(),
      torch::nn::Linear(64, 8));
}

double error(torch::nn::Sequential& q, torch::nn::Sequential& ref, const std::vector<at::Tensor>& xs) {
  torch::NoGradGuard guard;
  double e = 0;
  for (const auto& x : xs) {
    e += (q->forward(x) - ref->forward(x)).square().sum().item<double>();
  }
  return e;
}

/// query / key / value read the same tensor, then out.
struct AttentionImpl : torch::nn::Module {
  qat::nn::Linear q{32, 32}, k{32, 32}, v{32, 32}, out{32, 32};
  int forwards = 0;
  AttentionImpl() {
    register_module("q", q);
    register_module("k", k);
    register_module("v", v);
    register_module("out", out);
  }
  at::Tensor forward(const at::Tensor& x) {
    ++forwards;
    const at::Tensor a = torch::softmax(torch::matmul(q(x), k(x).transpose(-1, -2)) / 5.0, -1);
    return out(torch::matmul(a, v(x))) + x;
  }
};
TORCH_MODULE(Attention);

struct BranchyImpl : torch::nn::Module {
  qat::nn::Linear a{16, 16}, b{16, 16};
  BranchyImpl() {
    register_module("a", a);
    register_module("b", b);
  }
  at::Tensor forward(const at::Tensor& x) {
    return a(x);
  }
};
TORCH_MODULE(Branchy);

}  // namespace

TEST(Gptq, LayersAreQuantizedInOrderOnInputsFromTheQuantizedLayersBefore) {
  const std::vector<at::Tensor> cal = batches(64, 0);
  torch::nn::Sequential model = mlp();
  torch::nn::Sequential ref = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(model->clone());
  const qat::QConfig qc = qat::QConfig::preset("int4_weight_only", 16);
  qat::prepare_ptq(*model, qc);
  EXPECT_EQ(qat::gptq(model, cal, qat::GPTQOptions(), /*progress=*/false), 3);
  qat::prepare_ptq(*ref, qc);
  torch::NoGradGuard guard;
  at::Tensor x = torch::cat(cal);
  for (size_t i : {0, 2, 4}) {
    auto* layer = ref[i]->as<qat::nn::Linear>();
    auto* wq = dynamic_cast<qat::FakeQuantizeImpl*>(layer->weight_quantizer());
    ASSERT_NE(wq, nullptr);
    wq->forward(layer->weight);  // the grid its observer picks for the original weight
    at::Tensor h = torch::zeros({x.size(1), x.size(1)}, torch::kDouble);
    at::Tensor c = torch::zeros({1}, torch::kLong);
    qat::gptq_hessian_update(x, h, c);
    auto [w, dead, damp] = qat::gptq_quantize(layer->weight, h, wq->scale, wq->zero_point, -8, 7, 16);
    EXPECT_TRUE(torch::equal(model[i]->as<qat::nn::Linear>()->weight, w)) << i;
    x = torch::relu(torch::linear(x, w, layer->bias));
  }
  // the grids stay fixed: convert stores exactly these weights
  EXPECT_FALSE(dynamic_cast<qat::FakeQuantizeImpl*>(model[0]->as<qat::nn::Linear>()->weight_quantizer())
                   ->is_observer_enabled());
}

TEST(Gptq, SharedInputsShareOnePass) {
  torch::manual_seed(7);
  Attention model;
  std::vector<at::Tensor> cal;
  for (int64_t i = 0; i < 3; ++i) {
    cal.push_back(correlated(24, 32, i).reshape({2, 12, 32}));
  }
  qat::prepare_ptq(*model, qat::QConfig::preset("int4_weight_only", 8));
  model->forwards = 0;
  EXPECT_EQ(qat::gptq(model, cal, qat::GPTQOptions(), false), 4);
  EXPECT_EQ(model->forwards, 1 + 2 * 3);  // the order, then (q, k, v) and out
  const at::Tensor wq = model->q->weight.detach().clone();
  const at::Tensor bq = model->q->bias.detach().clone();
  qat::convert(*model);
  torch::NoGradGuard guard;
  const at::Tensor x = cal[0];
  EXPECT_TRUE(torch::allclose(model->q(x), torch::linear(x, wq, bq), 1e-5, 1e-5));
}

TEST(Gptq, QuantizeDynamicAndStaticWithGptqBeatRoundToNearest) {
  const std::vector<at::Tensor> cal = batches(64, 0), held_out = batches(64, 100);
  torch::nn::Sequential model = mlp();
  model->eval();
  auto copy = [&] { return torch::nn::Sequential(std::dynamic_pointer_cast<torch::nn::SequentialImpl>(model->clone())); };
  torch::nn::Sequential rtn = copy(), g = copy(), g_act = copy();
  qat::quantize_dynamic(*rtn, "int4_weight_only", 16);
  EXPECT_EQ(qat::quantize_dynamic(g, "int4_weight_only", 16, cal, qat::GPTQOptions(), {"Linear"}, "", false), 3);
  qat::quantize_dynamic(g_act, "int4_weight_only", 16, cal, qat::GPTQOptions().act_order(true), {"Linear"}, "", false);
  const double e_rtn = error(rtn, model, held_out);
  // held-out output error of a small random MLP: GPTQ saves 5-25% (the
  // per-layer objective is checked against the ops above and in Python)
  EXPECT_LT(error(g, model, held_out), e_rtn);
  EXPECT_LT(error(g_act, model, held_out), e_rtn);
  EXPECT_EQ(g[0]->as<qat::nn::Linear>()->stage(), qat::nn::Stage::kQuantized);

  torch::nn::Sequential s_rtn = copy(), s_g = copy();
  qat::quantize_static(s_rtn, cal, std::string("w4a8"), false);
  qat::quantize_static(s_g, cal, std::string("w4a8"), qat::GPTQOptions(), false);
  EXPECT_LT(error(s_g, model, held_out), error(s_rtn, model, held_out));
}

TEST(Gptq, PrepareThenGptqForQatKeepsTheObserversAsTheyWere) {
  const std::vector<at::Tensor> cal = batches(64, 0);
  torch::nn::Sequential model = mlp();
  model->train();
  qat::prepare(*model, qat::QConfig::preset("w4a8"));
  qat::gptq(model, cal, qat::GPTQOptions(), false, /*restore_observers=*/true);
  EXPECT_TRUE(model->is_training());
  auto* layer = model[0]->as<qat::nn::Linear>();
  auto* iq = dynamic_cast<qat::FakeQuantizeImpl*>(layer->input_quantizer());
  EXPECT_TRUE(layer->weight_quantizer() != nullptr &&
              dynamic_cast<qat::FakeQuantizeImpl*>(layer->weight_quantizer())->is_observer_enabled());
  EXPECT_TRUE(iq->is_observer_enabled() && iq->is_fake_quant_enabled());
  // the input quantizers did not observe during the passes
  const at::Tensor min_val = iq->activation_post_process->named_buffers()["min_val"];
  EXPECT_TRUE(min_val.isinf().all().item<bool>());
}

TEST(Gptq, BadRequestsAreClearErrors) {
  torch::nn::Sequential model = mlp();
  qat::prepare_ptq(*model, qat::QConfig::preset("int4_weight_only", 16));
  EXPECT_THROW_WITH(qat::gptq(model, {}, qat::GPTQOptions(), false), "batches is empty");
  EXPECT_THROW_WITH(qat::gptq(model, batches(64, 0), qat::GPTQOptions().damp(-1), false), "damp must be finite");
  EXPECT_THROW_WITH(qat::gptq(model, batches(64, 0), qat::GPTQOptions().block_size(0), false), "block_size must be positive");
  const std::vector<at::Tensor> nan{torch::full({4, 64}, std::numeric_limits<float>::quiet_NaN())};
  EXPECT_THROW_WITH(qat::gptq(model, nan, qat::GPTQOptions(), false), "layer '0': qtorchext::gptq_quantize: hessian holds NaN");
  EXPECT_TRUE(torch::isfinite(model[0]->as<qat::nn::Linear>()->weight).all().item<bool>());

  Branchy branchy;
  qat::prepare_ptq(*branchy, qat::QConfig::preset("int4_weight_only", 16));
  EXPECT_THROW_WITH(qat::gptq(branchy, {torch::randn({8, 16})}, qat::GPTQOptions(), false), "never reach layer 'b'");
}
