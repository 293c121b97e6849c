// SmoothQuant from C++: the factors against a float64 reference written here,
// qat::smooth_quant on drop-in and plain Linears (float output unchanged,
// factors from the inputs each layer saw), the smoothed layers through
// prepare / convert / save / load, the alpha search, and bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "test_utils.h"

namespace {

/// Batches whose channels 3 and 17 are 40x and 25x the others.
std::vector<at::Tensor> outlier_inputs(int64_t n = 4, int64_t rows = 48, int64_t seed = 0) {
  torch::manual_seed(seed);
  at::Tensor scale = torch::ones({32});
  scale[3] = 40.0;
  scale[17] = 25.0;
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(torch::randn({rows, 32}) * scale + 0.1);
  }
  return out;
}

at::Tensor reference_factors(const at::Tensor& absmax, const at::Tensor& weight, double alpha) {
  const at::Tensor a = absmax.to(at::kDouble), w = weight.to(at::kDouble).abs().amax({0});
  at::Tensor s = torch::ones({a.size(0)}, at::kDouble);
  for (int64_t j = 0; j < a.size(0); ++j) {
    const double aj = a[j].item<double>(), wj = w[j].item<double>();
    if (aj > 0 && wj > 0) {
      s[j] = std::pow(aj, alpha) / std::pow(wj, 1 - alpha);
    }
  }
  return s.clamp_min(1e-5).to(at::kFloat);
}

/// q / k / v on one input, out after them, then an MLP (plain Linears in a Sequential).
struct BlockImpl : torch::nn::Module {
  qat::nn::Linear q{32, 32}, k{32, 32}, v{32, 32}, out{32, 32};
  torch::nn::Sequential mlp{torch::nn::Linear(32, 48), torch::nn::GELU(), torch::nn::Linear(48, 8)};
  BlockImpl() {
    register_module("q", q);
    register_module("k", k);
    register_module("v", v);
    register_module("out", out);
    register_module("mlp", mlp);
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor a = torch::softmax(torch::matmul(q(x), k(x).t()) / 6.0, -1);
    return mlp->forward(out(torch::matmul(a, v(x))) + x);
  }
};
TORCH_MODULE(Block);

Block block(int64_t seed = 0) {
  torch::manual_seed(seed);
  Block b;
  b->eval();
  return b;
}

at::Tensor absmax_of(const std::vector<at::Tensor>& xs) {
  at::Tensor m;
  for (const auto& x : xs) {
    const at::Tensor a = x.abs().amax({0});
    m = m.defined() ? at::maximum(m, a) : a;
  }
  return m;
}

}  // namespace

TEST(SmoothQuant, FactorsMatchTheFloat64Formula) {
  torch::manual_seed(1);
  at::Tensor absmax = torch::rand({24}) * 30;
  absmax[5] = 0;
  absmax[7] = 1e-30;  // a negligible input: at least 1e-5
  at::Tensor w = torch::randn({16, 24});
  w.select(1, 9).zero_();
  for (const double alpha : {0.0, 0.3, 0.5, 0.85, 1.0}) {
    const at::Tensor s = qat::smooth_factors(absmax, w, alpha);
    EXPECT_TRUE(qtorchext_test::same(s, reference_factors(absmax, w, alpha))) << alpha;
    EXPECT_EQ(s[5].item<float>(), 1.0f);
    EXPECT_EQ(s[9].item<float>(), 1.0f);
  }
}

TEST(SmoothQuant, SmoothedModelComputesTheFloatModelWithFactorsFromItsInputs) {
  const std::vector<at::Tensor> xs = outlier_inputs();
  Block model = block();
  Block ref = block();
  const at::Tensor w_q = model->q->weight.detach().clone();
  const auto alphas = qat::smooth_quant(model, xs, qat::SmoothQuantOptions().alpha(0.5));
  EXPECT_EQ(alphas.size(), 6u);  // q, k, v, out and the two plain Linears of mlp
  const at::Tensor expected = reference_factors(absmax_of(xs), w_q, 0.5);
  EXPECT_TRUE(torch::allclose(model->q->input_smooth, expected, 1e-6, 0));
  EXPECT_TRUE(torch::allclose(model->q->weight, w_q * expected, 1e-6, 0));
  auto* fc = dynamic_cast<qat::nn::LinearImpl*>(model->mlp[0].get());
  ASSERT_NE(fc, nullptr);  // the plain Linear became a drop-in
  EXPECT_TRUE(fc->input_smooth.defined());
  EXPECT_EQ(model->named_buffers().contains("q.input_smooth"), true);
  torch::NoGradGuard guard;
  for (const auto& x : xs) {
    const at::Tensor y = ref->forward(x), ys = model->forward(x);
    EXPECT_TRUE(torch::allclose(ys, y, 1e-5, 1e-5 * y.abs().max().item<double>()));
  }
}

TEST(SmoothQuant, ConvertedSmoothedModelMatchesQatAndReloadsIntoAFreshModel) {
  const std::vector<at::Tensor> xs = outlier_inputs();
  Block model = block();
  qat::smooth_quant(model, xs, qat::SmoothQuantOptions().alpha(0.6));
  qat::prepare_ptq(*model, "int8");
  qat::calibrate(model, xs, /*progress=*/false);
  qat::disable_observer(*model);
  std::vector<at::Tensor> y_qat;
  {
    torch::NoGradGuard guard;
    for (const auto& x : xs) {
      y_qat.push_back(model->forward(x));
    }
  }
  qat::convert(*model);
  EXPECT_TRUE(model->q->input_smooth.defined());
  const std::string path = ::testing::TempDir() + "smooth_quant_block.pt";
  qat::save_state_dict(*model, path);
  Block fresh = block(3);  // made before any smoothing
  qat::load_quantized(*fresh, path);
  std::remove(path.c_str());
  torch::NoGradGuard guard;
  for (size_t i = 0; i < xs.size(); ++i) {
    const at::Tensor y = model->forward(xs[i]);
    EXPECT_TRUE(torch::allclose(y, y_qat[i], 1e-5, 1e-5 * y_qat[i].abs().max().item<double>()));
    EXPECT_TRUE(qtorchext_test::same(fresh->forward(xs[i]), y));
  }
}

TEST(SmoothQuant, SmoothingLowersTheInt8StaticError) {
  const std::vector<at::Tensor> xs = outlier_inputs(), test = outlier_inputs(4, 48, 7);
  Block ref = block(), plain = block(), smoothed = block();
  qat::quantize_static(plain, xs, "int8", /*progress=*/false);
  qat::smooth_quant(smoothed, xs);
  qat::quantize_static(smoothed, xs, "int8", /*progress=*/false);
  torch::NoGradGuard guard;
  double e_plain = 0, e_smooth = 0;
  for (const auto& x : test) {
    const at::Tensor y = ref->forward(x);
    e_plain += (plain->forward(x) - y).square().sum().item<double>();
    e_smooth += (smoothed->forward(x) - y).square().sum().item<double>();
  }
  EXPECT_LT(e_smooth, 0.5 * e_plain);
}

TEST(SmoothQuant, AutoAlphaPicksTheGridAlphaWithTheLeastLayerError) {
  const std::vector<at::Tensor> xs = outlier_inputs(2, 40);
  const auto make = [] {
    torch::manual_seed(4);
    torch::nn::Sequential l(qat::nn::Linear(32, 16));
    l->eval();
    return l;
  };
  torch::nn::Sequential reference = make();
  torch::nn::Sequential layer = make();
  const auto alphas = qat::smooth_quant(layer, xs, qat::SmoothQuantOptions().auto_alpha(true));
  ASSERT_EQ(alphas.size(), 1u);
  const double chosen = alphas.at("0");
  const auto err = [&](double alpha) {
    torch::nn::Sequential l = make();
    qat::smooth_quant(l, xs, qat::SmoothQuantOptions().alpha(alpha));
    qat::quantize_static(l, xs, "int8", /*progress=*/false);
    torch::NoGradGuard guard;
    double e = 0;
    for (const auto& x : xs) {
      e += (l->forward(x) - reference->forward(x)).to(at::kDouble).square().sum().item<double>();
    }
    return e;
  };
  double best = INFINITY, at_chosen = 0, at_zero = 0;
  for (const double a : qat::smooth_auto_alphas()) {
    const double e = err(a);
    best = std::min(best, e);
    if (a == chosen) {
      at_chosen = e;
    }
    if (a == 0) {
      at_zero = e;
    }
  }
  EXPECT_LE(at_chosen, best * (1 + 1e-6));
  EXPECT_LT(at_chosen, at_zero);
}

TEST(SmoothQuant, BadInputIsAClearError) {
  const std::vector<at::Tensor> xs = outlier_inputs();
  Block model = block();
  EXPECT_THROW(
      {
        try {
          qat::smooth_quant(model, xs, qat::SmoothQuantOptions().alpha(1.5));
        } catch (const c10::ValueError& e) {
          EXPECT_NE(std::string(e.what()).find("alpha must be in [0, 1]"), std::string::npos);
          throw;
        }
      },
      c10::ValueError);
  EXPECT_THROW(qat::smooth_quant(model, std::vector<at::Tensor>{}), c10::ValueError);
  std::vector<at::Tensor> nan = {xs[0].clone()};
  nan[0][0][0] = NAN;
  try {
    qat::smooth_quant(model, nan);
    ADD_FAILURE() << "NaN inputs accepted";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("layer 'q' saw NaN"), std::string::npos) << e.what();
  }
  try {
    qat::smooth_quant(model, xs, qat::SmoothQuantOptions().layers({"mlp.1"}));
    ADD_FAILURE() << "a GELU accepted";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("'mlp.1', which is not a qat::nn::Linear"), std::string::npos) << e.what();
  }
  qat::nn::Linear lonely(32, 4);
  EXPECT_THROW(lonely->smooth(torch::zeros({32})), c10::ValueError);
  EXPECT_THROW(lonely->smooth(torch::ones({31})), c10::ValueError);
  Block prepared = block();
  qat::prepare_ptq(*prepared, "int8");
  EXPECT_THROW(qat::smooth_quant(prepared, xs), c10::ValueError);
}

TEST(SmoothQuant, UnreachedLayerIsNamed) {
  struct BranchImpl : torch::nn::Module {
    qat::nn::Linear a{32, 4}, b{32, 4};
    BranchImpl() {
      register_module("a", a);
      register_module("b", b);
    }
    at::Tensor forward(const at::Tensor& x) {
      return a(x);
    }
  };
  auto branch = std::make_shared<BranchImpl>();
  try {
    qat::smooth_quant(branch, outlier_inputs());
    ADD_FAILURE() << "an unreached layer accepted";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("never reach layer 'b'"), std::string::npos) << e.what();
  }
}

TEST(SmoothQuant, BadFactorsInAFileAreRefused) {
  const std::vector<at::Tensor> xs = outlier_inputs();
  Block model = block();
  qat::smooth_quant(model, xs);
  qat::quantize_static(model, xs, "int8", /*progress=*/false);
  model->out->input_smooth.zero_();  // as a corrupted file would hold
  const std::string path = ::testing::TempDir() + "smooth_quant_bad.pt";
  qat::save_state_dict(*model, path);
  Block fresh = block();
  try {
    qat::load_quantized(*fresh, path);
    ADD_FAILURE() << "zero factors accepted";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("'out': input_smooth must be finite and > 0"), std::string::npos)
        << e.what();
  }
  std::remove(path.c_str());
}

TEST(SmoothQuant, ClonesAndArchivesKeepTheFactors) {
  const std::vector<at::Tensor> xs = outlier_inputs();
  Block model = block();
  qat::smooth_quant(model, xs, qat::SmoothQuantOptions().alpha(0.7));
  qat::quantize_static(model, xs, "int8", /*progress=*/false);
  torch::NoGradGuard guard;
  const at::Tensor y = model->forward(xs[0]);
  // a clone of a converted smoothed layer
  auto out_clone = std::dynamic_pointer_cast<qat::nn::LinearImpl>(model->out->clone());
  ASSERT_TRUE(out_clone->input_smooth.defined());
  const at::Tensor h = torch::randn({16, 32}) * 3;
  EXPECT_TRUE(qtorchext_test::same(out_clone->forward(h), model->out->forward(h)));
  // torch::save / torch::load into a converted model that was not smoothed
  const std::string path = ::testing::TempDir() + "smooth_quant_archive.pt";
  torch::save(model, path);
  Block plain = block(5);
  qat::quantize_static(plain, xs, "int8", /*progress=*/false);
  torch::load(plain, path);
  std::remove(path.c_str());
  EXPECT_TRUE(plain->q->input_smooth.defined());
  EXPECT_TRUE(qtorchext_test::same(plain->forward(xs[0]), y));
}

TEST(SmoothQuant, LayersNamedTwiceIsAnError) {
  Block model = block();
  try {
    qat::smooth_quant(model, outlier_inputs(), qat::SmoothQuantOptions().layers({"q", "q"}));
    ADD_FAILURE() << "a duplicate accepted";
  } catch (const c10::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("layers names 'q' 2 times"), std::string::npos) << e.what();
  }
}

TEST(SmoothQuant, AWeightSharedWithAnotherModuleStaysAsItWasThere) {
  Block model = block();
  torch::nn::Module other;  // holds the same tensor, as a tied embedding would
  const at::Tensor tied = other.register_parameter("weight", model->q->weight);
  const at::Tensor before = tied.detach().clone();
  qat::smooth_quant(model, outlier_inputs(), qat::SmoothQuantOptions().layers({"q"}));
  EXPECT_TRUE(qtorchext_test::same(tied.detach(), before));
  EXPECT_FALSE(qtorchext_test::same(model->q->weight.detach(), before));
  EXPECT_TRUE(qtorchext_test::same(model->named_parameters()["q.weight"], model->q->weight));
}
