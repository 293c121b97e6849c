// Observers, fake-quantize modules and QConfig presets from C++.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "test_utils.h"

using qtorchext_test::for_each_capability;
using qtorchext_test::same;

namespace {

/// torch.ao's _calculate_qparams written with ATen ops (float32).
std::pair<at::Tensor, at::Tensor> reference_qparams(
    const at::Tensor& mn,
    const at::Tensor& mx,
    int64_t qmin,
    int64_t qmax,
    bool symmetric) {
  const at::Tensor min_neg = at::minimum(mn, at::zeros_like(mn));
  const at::Tensor max_pos = at::maximum(mx, at::zeros_like(mx));
  const at::Tensor eps = at::full({}, qat::kDefaultEps, at::kFloat);
  if (symmetric) {
    const at::Tensor scale =
        at::maximum(at::maximum(-min_neg, max_pos) / (double(qmax - qmin) / 2), eps);
    return {scale.reshape({-1}),
            at::full_like(scale, qmin >= 0 ? (qmin + qmax) / 2 : 0, at::kInt).reshape({-1})};
  }
  const at::Tensor scale = at::maximum((max_pos - min_neg) / double(qmax - qmin), eps);
  const at::Tensor zp =
      at::clamp(qmin - at::round(min_neg / scale).to(at::kInt), qmin, qmax).to(at::kInt);
  return {scale.reshape({-1}), zp.reshape({-1})};
}

double sqnr(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zp, int64_t qmin, int64_t qmax) {
  const at::Tensor y = qat::fake_quantize_per_tensor_affine(x, scale.reshape({1}), zp.reshape({1}), qmin, qmax);
  return 10 * std::log10((x * x).sum().item<double>() / (x - y).pow(2).sum().item<double>());
}

at::Tensor student_t(int64_t n, int64_t seed) {
  // Student-t with 4 dof: normal / sqrt(chi2_4 / 4), chi2_4 = -2 log(u1 u2).
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const at::Tensor z = at::normal(0.0, 1.0, {n}, gen);
  const at::Tensor u = at::rand({2, n}, gen).clamp_min(1e-12);
  const at::Tensor chi2 = -2 * (u[0] * u[1]).log();
  return z / (chi2 / 4).sqrt();
}

}  // namespace

TEST(Observer, MinMaxAndMovingAverageMatchReference) {
  at::manual_seed(11);
  for_each_capability([](const std::string& cap) {
    for (bool symmetric : {false, true}) {
      qat::MinMaxObserver mm(qat::ObserverOptions().quant_min(-8).quant_max(7).symmetric(symmetric));
      qat::MovingAverageMinMaxObserver ma(
          qat::ObserverOptions().quant_min(0).quant_max(255).symmetric(symmetric).averaging_constant(0.2));
      qat::PerChannelMinMaxObserver pc(qat::ObserverOptions().ch_axis(1));
      at::Tensor rmin, rmax, amin, amax, pmin, pmax;
      for (int i = 0; i < 4; ++i) {
        const at::Tensor x = at::randn({16, 12}) * (i + 1) + i;
        mm->forward(x), ma->forward(x), pc->forward(x);
        auto [mn, mx] = at::aminmax(x);
        auto [cmn, cmx] = at::aminmax(x, 0);
        if (i == 0) {
          rmin = mn, rmax = mx, amin = mn, amax = mx, pmin = cmn, pmax = cmx;
        } else {
          rmin = at::minimum(rmin, mn), rmax = at::maximum(rmax, mx);
          amin = amin + 0.2 * (mn - amin), amax = amax + 0.2 * (mx - amax);
          pmin = at::minimum(pmin, cmn), pmax = at::maximum(pmax, cmx);
        }
      }
      EXPECT_TRUE(same(mm->min_val, rmin) && same(mm->max_val, rmax)) << cap;
      EXPECT_TRUE(same(ma->min_val, amin) && same(ma->max_val, amax)) << cap;
      EXPECT_TRUE(same(pc->min_val, pmin) && same(pc->max_val, pmax)) << cap;
      auto [s, z] = mm->calculate_qparams();
      auto [rs, rz] = reference_qparams(rmin, rmax, -8, 7, symmetric);
      EXPECT_TRUE(same(s, rs) && same(z, rz)) << cap;
      auto [s2, z2] = ma->calculate_qparams();
      auto [rs2, rz2] = reference_qparams(amin, amax, 0, 255, symmetric);
      EXPECT_TRUE(same(s2, rs2) && same(z2, rz2)) << cap;
    }
  });
}

TEST(Observer, HeavyTailedFourBitsBeatsMinMax) {
  const at::Tensor test = student_t(200000, 123);
  auto o = qat::ObserverOptions().quant_min(-8).quant_max(7).symmetric(true);
  qat::MinMaxObserver mm(o);
  qat::HistogramObserver hist(o);
  qat::PercentileObserver pct(o);
  qat::MSEObserver mse(o);
  for (int i = 0; i < 8; ++i) {
    const at::Tensor x = student_t(20000, i);
    mm->forward(x), hist->forward(x), pct->forward(x), mse->forward(x);
  }
  auto score = [&](qat::ObserverInterface& obs) {
    auto [s, z] = obs.calculate_qparams();
    return sqnr(test, s, z, -8, 7);
  };
  const double base = score(*mm);
  EXPECT_GT(score(*hist), base + 3.0);
  EXPECT_GT(score(*pct), base + 3.0);
  EXPECT_GT(score(*mse), base + 3.0);
}

TEST(Observer, HardData) {
  qat::MinMaxObserver obs;
  obs->forward(at::empty({0, 4}));
  auto [s0, z0] = obs->calculate_qparams();
  EXPECT_EQ(s0.item<float>(), 1.0f);  // never observed: PyTorch's defaults
  obs->forward(at::zeros({5}));
  auto [s1, z1] = obs->calculate_qparams();
  EXPECT_FLOAT_EQ(s1.item<float>(), static_cast<float>(qat::kDefaultEps));
  at::Tensor x = at::randn({10});
  x[3] = std::numeric_limits<float>::infinity();
  obs->forward(x);
  EXPECT_TRUE(std::isfinite(obs->max_val.item<float>()));
  const at::Tensor before = obs->max_val.clone();
  x[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW_WITH(obs->forward(x * 100), "1 NaN value(s)");
  EXPECT_TRUE(same(obs->max_val, before));
}

TEST(FakeQuantizeModule, FusedEqualsUnfused) {
  at::manual_seed(12);
  for_each_capability([](const std::string& cap) {
    auto make = [](bool fused) {
      return qat::FakeQuantize(
          qat::MovingAveragePerChannelMinMaxObserver(
              qat::ObserverOptions().quant_min(-8).quant_max(7).symmetric(true).ch_axis(1).averaging_constant(0.3)),
          qat::FakeQuantizeOptions().fused(fused));
    };
    qat::FakeQuantize a = make(true), b = make(false);
    EXPECT_TRUE(a->fused());
    EXPECT_FALSE(b->fused());
    for (int step = 0; step < 5; ++step) {
      if (step == 3) {
        a->disable_observer(), b->disable_observer();
      }
      const at::Tensor x = at::randn({6, 5, 3}) * (step + 1);
      at::Tensor x1 = x.clone().requires_grad_(true), x2 = x.clone().requires_grad_(true);
      at::Tensor y1 = a->forward(x1), y2 = b->forward(x2);
      ASSERT_TRUE(same(y1, y2)) << cap << " step " << step;
      y1.sum().backward(), y2.sum().backward();
      ASSERT_TRUE(same(x1.grad(), x2.grad())) << cap;
      ASSERT_TRUE(same(a->scale, b->scale) && same(a->zero_point, b->zero_point)) << cap;
    }
  });
}

TEST(FakeQuantizeModule, LearnableInitialisesThenLearns) {
  qat::LearnableFakeQuantize lfq(
      qat::MovingAveragePerChannelMinMaxObserver(
          qat::ObserverOptions().quant_min(-8).quant_max(7).symmetric(true).averaging_constant(1.0)),
      qat::LearnableFakeQuantizeOptions().init_steps(1));
  at::Tensor w = at::randn({4, 16}).requires_grad_(true);
  lfq->forward(w);
  EXPECT_FALSE(lfq->is_observer_enabled());
  EXPECT_EQ(lfq->observer_enabled.item<uint8_t>(), 0);
  EXPECT_EQ(lfq->scale.numel(), 4);
  const at::Tensor before = lfq->scale.detach().clone();
  torch::optim::SGD opt(lfq->parameters(), torch::optim::SGDOptions(0.1));
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    (lfq->forward(w) - 2 * w.detach()).pow(2).sum().backward();
    opt.step();
  }
  EXPECT_FALSE(at::equal(lfq->scale.detach(), before));
}

TEST(QConfigPresets, BuildRunAndRejectUnknownNames) {
  for (const auto& name : qat::QConfig::preset_names()) {
    qat::QConfig qc = qat::QConfig::preset(name);
    const at::Tensor w = at::randn({8, 64});
    if (qc.weight) {
      auto m = qc.weight();
      auto* fq = qat::as_fake_quantize(*m);
      ASSERT_NE(fq, nullptr) << name;
      EXPECT_EQ(fq->forward(w).sizes(), w.sizes()) << name;
    }
    if (qc.activation) {
      auto* fq = qat::as_fake_quantize(*qc.activation());
      ASSERT_NE(fq, nullptr) << name;
    }
  }
  EXPECT_THROW_WITH(
      qat::QConfig::preset("int3"),
      "unknown qconfig preset 'int3'; valid: bf16, dynamic_int8, fp16, int2_weight_only, "
      "int4_weight_only, int8, lsq_w4a4, w1a8, w2a8, w4a8");
  EXPECT_FALSE(qat::QConfig::preset("int4_weight_only").activation);
}

TEST(StateDict, SaveAndLoadRoundTripInCpp) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "qtorchext_roundtrip.pt").string();
  qat::FakeQuantize a(qat::MovingAveragePerChannelMinMaxObserver(qat::ObserverOptions().ch_axis(0)));
  a->forward(at::randn({5, 7}));
  a->disable_observer();
  qat::save_state_dict(*a, path);
  qat::FakeQuantize b(qat::MovingAveragePerChannelMinMaxObserver(qat::ObserverOptions().ch_axis(0)));
  qat::load_state_dict(*b, path);
  EXPECT_TRUE(same(a->scale, b->scale) && same(a->zero_point, b->zero_point));
  EXPECT_FALSE(b->is_observer_enabled());
  qat::HistogramObserver h;
  EXPECT_THROW_WITH(qat::load_state_dict(*h, path), "missing histogram");
  std::remove(path.c_str());
}

TEST(StateDict, OnlyPerChannelStateTakesTheSavedSize) {
  const auto tmp = [](const std::string& name) {
    return (std::filesystem::temp_directory_path() / name).string();
  };
  // per-channel statistics [4] do not load into a per-tensor observer or fake quantizer
  qat::PerChannelMinMaxObserver pc(qat::ObserverOptions().ch_axis(0));
  pc->forward(at::randn({4, 6}));
  const std::string per_channel = tmp("qtorchext_per_channel.pt");
  qat::save_state_dict(*pc, per_channel);
  qat::MinMaxObserver pt;
  EXPECT_THROW_WITH(qat::load_state_dict(*pt, per_channel), "min_val has shape [4]");
  qat::PerChannelMinMaxObserver fresh(qat::ObserverOptions().ch_axis(0));
  qat::load_state_dict(*fresh, per_channel);  // sized by the file
  EXPECT_TRUE(same(std::get<0>(fresh->calculate_qparams()), std::get<0>(pc->calculate_qparams())));
  std::remove(per_channel.c_str());

  qat::FakeQuantize fq_pc(qat::MovingAveragePerChannelMinMaxObserver(qat::ObserverOptions().ch_axis(0)));
  fq_pc->forward(at::randn({4, 6}));
  const std::string fq_path = tmp("qtorchext_fq_per_channel.pt");
  qat::save_state_dict(*fq_pc, fq_path);
  qat::FakeQuantize fq_pt(qat::MovingAverageMinMaxObserver{});
  EXPECT_THROW_WITH(qat::load_state_dict(*fq_pt, fq_path), "has shape [4]");
  std::remove(fq_path.c_str());

  // a histogram of 256 bins does not load into one of 2048
  qat::HistogramObserver small(qat::ObserverOptions().bins(256));
  small->forward(at::randn({100}));
  const std::string hist = tmp("qtorchext_hist256.pt");
  qat::save_state_dict(*small, hist);
  qat::HistogramObserver big;
  EXPECT_THROW_WITH(qat::load_state_dict(*big, hist), "histogram has shape [256]");
  std::remove(hist.c_str());

  // float64 state converts to the module's float32, as in Python
  torch::nn::Module holder;
  holder.register_buffer("min_val", at::scalar_tensor(-1.5, at::kDouble));
  holder.register_buffer("max_val", at::scalar_tensor(2.25, at::kDouble));
  const std::string f64 = tmp("qtorchext_f64.pt");
  qat::save_state_dict(holder, f64);
  qat::MinMaxObserver mm;
  qat::load_state_dict(*mm, f64);
  EXPECT_EQ(mm->min_val.scalar_type(), at::kFloat);
  EXPECT_EQ(mm->max_val.item<float>(), 2.25f);
  std::remove(f64.c_str());
}

TEST(Observer, HistogramDependsOnlyOnTheValuesSeenAndMergesExactly) {
  torch::manual_seed(3);
  const std::vector<at::Tensor> parts{
      torch::randn({3000}) * 2, torch::randn({700}) * 1e-3 + 4, torch::randn({50}) * 90 - 30,
      torch::zeros({9}), torch::tensor({1e6f, -2.5f})};
  auto fed = [](const std::vector<at::Tensor>& xs) {
    qat::HistogramObserver o;
    for (const auto& x : xs) {
      o->forward(x);
    }
    return o;
  };
  auto whole = fed({torch::cat(parts)});
  auto reversed = fed({parts.rbegin(), parts.rend()});
  EXPECT_TRUE(at::equal(whole->histogram, reversed->histogram));
  EXPECT_TRUE(at::equal(whole->min_val, reversed->min_val));
  EXPECT_TRUE(at::equal(whole->max_val, reversed->max_val));
  // the grid: width 2^e, the first bin at floor(min / 2^e) * 2^e, x in bin floor(x / 2^e) - m
  const double lo = whole->min_val.item<float>(), hi = whole->max_val.item<float>();
  const double width = (hi - lo) / 2048;
  int ex = 0;
  EXPECT_EQ(std::frexp(width, &ex), 0.5);
  const at::Tensor x = torch::cat(parts).to(at::kDouble);
  const at::Tensor idx = (at::floor(x / width) - lo / width).to(at::kLong);
  EXPECT_TRUE(at::equal(at::bincount(idx, {}, 2048), whole->histogram));
  // counted apart (one part empty), merged; and from a common base, counted once
  auto a = fed({parts[0], parts[1]}), b = fed({parts[2], parts[3], parts[4]});
  qat::HistogramObserver empty;
  auto [h, mn, mx] = qat::histogram_merge(
      at::stack({a->histogram, empty->histogram, b->histogram}),
      at::stack({a->min_val, empty->min_val, b->min_val}),
      at::stack({a->max_val, empty->max_val, b->max_val}));
  EXPECT_TRUE(at::equal(h, whole->histogram));
  EXPECT_TRUE(at::equal(mn, whole->min_val) && at::equal(mx, whole->max_val));
  auto base = fed({parts[0]});
  auto r1 = fed({parts[0], parts[1], parts[2]}), r2 = fed({parts[0], parts[3], parts[4]});
  auto [hb, mnb, mxb] = qat::histogram_merge(
      at::stack({r1->histogram, r2->histogram}), at::stack({r1->min_val, r2->min_val}),
      at::stack({r1->max_val, r2->max_val}), base->histogram, base->min_val, base->max_val);
  EXPECT_TRUE(at::equal(hb, whole->histogram));
  EXPECT_TRUE(at::equal(mnb, whole->min_val) && at::equal(mxb, whole->max_val));
  EXPECT_THROW_WITH(
      qat::histogram_merge(
          at::stack({a->histogram, b->histogram}), at::stack({a->min_val, b->min_val}),
          at::stack({a->max_val, b->max_val}), base->histogram, base->min_val, base->max_val),
      "does not hold the base");
}
