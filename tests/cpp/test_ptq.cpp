// Post-training quantization from C++: quantize_dynamic, prepare_ptq /
// calibrate / convert, quantize_static.
#include <gtest/gtest.h>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "test_utils.h"

namespace {

torch::nn::Sequential mlp() {
  torch::manual_seed(0);
  return torch::nn::Sequential(
      torch::nn::Linear(64, 128), torch::nn::GELU(), torch::nn::Linear(128, 128), torch::nn::ReLU(),
      torch::nn::Linear(128, 10));
}

double max_rel(const at::Tensor& y, const at::Tensor& ref) {
  return ((y.to(at::kDouble) - ref.to(at::kDouble)).abs().max() / ref.to(at::kDouble).abs().max())
      .item<double>();
}

}  // namespace

TEST(Ptq, QuantizeDynamicInt8IsPerTokenActivationsTimesInt8Weights) {
  torch::nn::Sequential model = mlp();
  const at::Tensor w = model[0]->as<torch::nn::Linear>()->weight.detach().clone();
  const at::Tensor b = model[0]->as<torch::nn::Linear>()->bias.detach().clone();
  const at::Tensor x = torch::randn({7, 5, 64}) * 3;
  torch::NoGradGuard guard;
  const at::Tensor ref_model = model->forward(x);
  model->train();
  EXPECT_EQ(qat::quantize_dynamic(*model, "int8"), 3);
  EXPECT_FALSE(model->is_training());  // an inference model, as torch.ao's quantize_dynamic
  for (size_t i : {0, 2, 4}) {
    auto* layer = model[i]->as<qat::nn::Linear>();
    ASSERT_NE(layer, nullptr) << i;
    EXPECT_EQ(layer->stage(), qat::nn::Stage::kQuantized) << i;
  }
  // float64 reference: per-token fake quant of the input times per-channel int8 weights
  const at::Tensor ws = w.abs().amax(1) / 127.5;
  const at::Tensor wq = at::clamp(at::round(w * (1.0 / ws).unsqueeze(1)), -128, 127) * ws.unsqueeze(1);
  auto [s, z] = qat::choose_qparams_per_token(x, -128, 127, false, std::numeric_limits<float>::epsilon());
  const at::Tensor xq = (at::clamp(at::round(x * (1.0 / s)) + z, -128, 127) - z) * s;
  const at::Tensor ref = at::matmul(xq.to(at::kDouble), wq.to(at::kDouble).t()) + b.to(at::kDouble);
  EXPECT_LT(max_rel(model[0]->as<qat::nn::Linear>()->forward(x), ref), 1e-5);
  EXPECT_LT(max_rel(model->forward(x), ref_model), 0.05);
}

TEST(Ptq, WeightOnlyStoresHalfScalesAndInt8ZeroPointsAndMeetsTheSizeBound) {
  for (const auto& [name, group, limit] :
       {std::tuple<std::string, int64_t, double>{"int4_weight_only", 32, 0.149},
        {"int4_weight_only", 128, 0.132},
        {"int2_weight_only", 32, 0.087}}) {
    torch::manual_seed(1);
    torch::nn::Sequential model(
        torch::nn::Linear(torch::nn::LinearOptions(256, 512).bias(false)), torch::nn::ReLU(),
        torch::nn::Linear(torch::nn::LinearOptions(512, 256).bias(false)));
    const int64_t float_bytes = qtorchext_test::state_bytes(*model);
    const at::Tensor x = torch::randn({4, 256});
    torch::NoGradGuard guard;
    const at::Tensor ref = model->forward(x);
    EXPECT_EQ(qat::quantize_dynamic(*model, name, group), 2);
    EXPECT_EQ(qat::nn::find_buffer(*model[0], "weight_zero_point").scalar_type(), at::kChar) << name;
    EXPECT_EQ(qat::nn::find_buffer(*model[0], "weight_scale").scalar_type(), at::kHalf) << name;
    EXPECT_LE(qtorchext_test::state_bytes(*model), limit * float_bytes) << name << " g" << group;
    EXPECT_LT(max_rel(model->forward(x), ref), name[3] == '4' ? 0.2 : 0.7) << name;
  }
}

TEST(Ptq, HalfPrecisionWeights) {
  for (const auto& [name, dtype] : {std::pair<std::string, at::ScalarType>{"fp16", at::kHalf}, {"bf16", at::kBFloat16}}) {
    torch::nn::Sequential model = mlp();
    const at::Tensor w = model[0]->as<torch::nn::Linear>()->weight.detach().clone();
    const at::Tensor b = model[0]->as<torch::nn::Linear>()->bias.detach().clone();
    qat::quantize_dynamic(*model, name);
    EXPECT_EQ(qat::nn::find_buffer(*model[0], "weight").scalar_type(), dtype);
    torch::NoGradGuard guard;
    const at::Tensor x = torch::randn({3, 64});
    EXPECT_LT(max_rel(model[0]->as<qat::nn::Linear>()->forward(x), at::linear(x, w.to(dtype).to(at::kFloat), b)), 1e-6);
  }
}

TEST(Ptq, CalibrateThenConvertMatchesTheCalibratedSimulation) {
  torch::nn::Sequential model = mlp();
  torch::NoGradGuard guard;
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) {
    batches.push_back(torch::randn({32, 64}));
  }
  const at::Tensor x = torch::randn({64, 64});
  const at::Tensor ref_float = model->forward(x);
  EXPECT_EQ(qat::prepare_ptq(*model, "int8"), 3);
  EXPECT_FALSE(model->is_training());
  testing::internal::CaptureStderr();
  qat::calibrate(model, batches);
  const std::string progress = testing::internal::GetCapturedStderr();
  EXPECT_NE(progress.find("calibrate ["), std::string::npos) << progress;
  EXPECT_NE(progress.find("4/4"), std::string::npos) << progress;
  // the input's histogram observer counted every value of every batch
  auto* first = model[0]->as<qat::nn::Linear>();
  auto* fq = dynamic_cast<qat::FakeQuantizeImpl*>(first->input_fake_quant.get());
  ASSERT_NE(fq, nullptr);
  const at::Tensor all = at::cat(batches);
  auto& observer = *fq->activation_post_process;
  EXPECT_EQ(qat::nn::find_buffer(observer, "histogram").sum().item<int64_t>(), all.numel());
  EXPECT_LE(qat::nn::find_buffer(observer, "min_val").item<float>(), all.min().item<float>());
  EXPECT_GE(qat::nn::find_buffer(observer, "max_val").item<float>(), all.max().item<float>());
  qat::disable_observer(*model);
  const at::Tensor simulated = model->forward(x);
  EXPECT_EQ(qat::convert(*model), 3);
  const at::Tensor y = model->forward(x);
  EXPECT_LT(max_rel(y, simulated), 1e-5);
  EXPECT_LT(max_rel(y, ref_float), 0.1);
}

TEST(Ptq, QuantizeStaticDoesAllThreeAndBadNamesAreErrors) {
  torch::nn::Sequential a = mlp(), b = mlp();
  std::vector<at::Tensor> batches{torch::randn({16, 64}), torch::randn({16, 64})};
  torch::NoGradGuard guard;
  qat::prepare_ptq(*a, "w4a8");
  qat::calibrate(a, batches, false);
  qat::disable_observer(*a);
  qat::convert(*a);
  EXPECT_EQ(qat::quantize_static(b, batches, "w4a8", false), 3);
  const at::Tensor x = torch::randn({8, 64});
  EXPECT_TRUE(qtorchext_test::same(a->forward(x), b->forward(x)));
  // a QConfig and per-module qconfigs, as Python's quantize_static(model, batches, {...})
  torch::nn::Sequential by_qconfig = mlp(), by_steps = mlp();
  EXPECT_EQ(qat::quantize_static(by_qconfig, batches, qat::static_qconfig("w4a8"), false, {{"4", std::nullopt}}), 2);
  EXPECT_EQ(by_qconfig[4]->as<torch::nn::Linear>() != nullptr, true);  // left in float
  qat::prepare_ptq(*by_steps, "w4a8", {{"4", std::nullopt}});
  qat::calibrate(by_steps, batches, false);
  qat::disable_observer(*by_steps);
  qat::convert(*by_steps);
  EXPECT_TRUE(qtorchext_test::same(by_qconfig->forward(x), by_steps->forward(x)));
  torch::nn::Sequential c = mlp();
  try {
    qat::quantize_dynamic(*c, "int3");
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'int3'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(qat::quantize_dynamic(*c, "int8", 32), c10::Error);
  // a QConfig: the preset's, or refused when its activations need calibration
  torch::nn::Sequential d = mlp(), e = mlp();
  qat::quantize_dynamic(*d, "int8");
  EXPECT_EQ(qat::quantize_dynamic(*e, qat::QConfig::preset("dynamic_int8")), 3);
  EXPECT_TRUE(qtorchext_test::same(d->forward(x), e->forward(x)));
  torch::nn::Sequential f = mlp();
  try {
    qat::quantize_dynamic(*f, qat::QConfig::preset("int8"));
    FAIL() << "expected an error";
  } catch (const c10::Error& err) {
    EXPECT_NE(std::string(err.what()).find("quantize_static"), std::string::npos) << err.what();
  }
}

TEST(Ptq, QuantizeDynamicLayersNamesTheKindsToConvert) {
  // Python's layers=(nn.Conv2d,): only the named kinds are converted
  auto make = [] {
    torch::manual_seed(5);
    return torch::nn::Sequential(
        torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 8, 3)), torch::nn::Flatten(),
        torch::nn::Linear(8 * 6 * 6, 10));
  };
  const at::Tensor x = torch::randn({4, 3, 8, 8});
  torch::nn::Sequential only_conv = make(), both = make(), by_default = make();
  EXPECT_EQ(qat::quantize_dynamic(*only_conv, "int8", std::nullopt, {"Conv2d"}), 1);
  EXPECT_NE(only_conv[0]->as<qat::nn::Conv2d>(), nullptr);
  EXPECT_NE(only_conv[2]->as<torch::nn::Linear>(), nullptr);  // left in float
  EXPECT_EQ(qat::quantize_dynamic(*by_default, "int8"), 1);
  EXPECT_NE(by_default[0]->as<torch::nn::Conv2d>(), nullptr);
  EXPECT_NE(by_default[2]->as<qat::nn::Linear>(), nullptr);
  EXPECT_EQ(qat::quantize_dynamic(*both, qat::QConfig::preset("dynamic_int8"), {"Linear", "Conv2d"}), 2);
  // the conv converted alone computes what it computes inside the fully converted model
  torch::NoGradGuard guard;
  const at::Tensor conv_out = only_conv[0]->as<qat::nn::Conv2d>()->forward(x);
  EXPECT_TRUE(qtorchext_test::same(conv_out, both[0]->as<qat::nn::Conv2d>()->forward(x)));
  torch::nn::Sequential bad = make();
  try {
    qat::quantize_dynamic(*bad, "int8", std::nullopt, {"Conv3d"});
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'Conv3d'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(qat::quantize_dynamic(*bad, "int8", std::nullopt, {}), c10::Error);
}

TEST(Ptq, Int8PanelsComputeWhatInt16PanelsCompute) {
  // pack_linear_weight(narrow = true): the same GEMM weights in half the bytes
  torch::manual_seed(9);
  const at::Tensor codes = torch::randint(-128, 128, {37, 70}, at::kChar);
  const at::Tensor zp = torch::zeros({37}, at::kInt);
  const at::Tensor wide = qat::pack_linear_weight(codes, zp);
  const at::Tensor narrow = qat::pack_linear_weight(codes, zp, true);
  ASSERT_EQ(narrow.scalar_type(), at::kChar);
  EXPECT_TRUE(at::equal(narrow.to(at::kShort), wide));
  const at::Tensor scale = torch::rand({37}) * 0.01 + 1e-3, bias = torch::randn({37});
  for (int64_t rows : {1, 6, 7, 50}) {
    const at::Tensor x = torch::randn({rows, 70}) * 2;
    EXPECT_TRUE(qtorchext_test::same(
        qat::linear_int8(x, narrow, scale, bias, std::nullopt, std::nullopt, -128, 127),
        qat::linear_int8(x, wide, scale, bias, std::nullopt, std::nullopt, -128, 127)))
        << rows << " rows";
  }
  // weight - zero point outside int8: refused with the place named
  EXPECT_THROW(qat::pack_linear_weight(codes, torch::full({37}, -5, at::kInt), true), c10::Error);
}

TEST(Ptq, ReportGivesPerLayerSqnrAndBytes) {
  torch::manual_seed(3);
  torch::nn::Sequential model(
      qat::nn::Linear(64, 128), torch::nn::GELU(), qat::nn::Linear(128, 10));
  torch::nn::Sequential fp(std::dynamic_pointer_cast<torch::nn::SequentialImpl>(model->clone()));
  std::vector<at::Tensor> batches{torch::randn({32, 64}), torch::randn({32, 64})};
  qat::quantize_dynamic(*model, "int4_weight_only", 32);
  const std::string csv = (std::filesystem::temp_directory_path() / "qtorchext_report.csv").string();
  const std::string svg = (std::filesystem::temp_directory_path() / "qtorchext_report.svg").string();
  testing::internal::CaptureStdout();
  const auto rows = qat::report(fp, model, batches, csv, svg);
  const std::string printed = testing::internal::GetCapturedStdout();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].layer, "0");
  EXPECT_EQ(rows[1].layer, "2");
  EXPECT_NE(rows[0].precision.find("4-bit"), std::string::npos) << rows[0].precision;
  EXPECT_NE(printed.find("SQNR dB"), std::string::npos) << printed;
  // the first layer sees the same input in both models: its SQNR is the
  // weight quantization's alone, computed here directly
  torch::NoGradGuard guard;
  double signal = 0, noise = 0;
  for (const auto& x : batches) {
    const at::Tensor r = fp[0]->as<qat::nn::Linear>()->forward(x).to(at::kDouble);
    const at::Tensor q = model[0]->as<qat::nn::Linear>()->forward(x).to(at::kDouble);
    signal += r.square().sum().item<double>();
    noise += (r - q).square().sum().item<double>();
  }
  EXPECT_NEAR(rows[0].sqnr_db, 10 * std::log10(signal / noise), 1e-9);
  EXPECT_GT(rows[0].sqnr_db, 10.0);
  EXPECT_LT(rows[0].sqnr_db, 40.0);
  EXPECT_LT(rows[0].bytes, rows[0].float_bytes / 4);
  std::ifstream in(csv);
  std::string header, line;
  std::getline(in, header);
  EXPECT_EQ(header, "layer,precision,sqnr_db,bytes,float_bytes");
  int lines = 0;
  while (std::getline(in, line)) {
    ++lines;
  }
  EXPECT_EQ(lines, 2);
  std::filesystem::remove(csv);
  // the SVG bar chart: one bar per layer, named; written whole (no temporary left)
  std::ifstream plot(svg);
  const std::string text((std::istreambuf_iterator<char>(plot)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.rfind("<svg", 0), 0u) << text.substr(0, 80);
  size_t bars = 0;
  for (size_t at = text.find("<rect"); at != std::string::npos; at = text.find("<rect", at + 1)) {
    ++bars;
  }
  EXPECT_EQ(bars, 2u);
  EXPECT_NE(text.find(fmt::format("{:.1f}", rows[0].sqnr_db)), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(svg + ".tmp"));
  std::filesystem::remove(svg);
  try {
    qat::report(fp, model, batches, "", "sqnr.png");
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("plot_path must name an .svg file, got 'sqnr.png'"), std::string::npos)
        << e.what();
  }
  // a float model of plain torch::nn layers cannot report its outputs
  torch::nn::Sequential plain(torch::nn::Linear(64, 128), torch::nn::GELU(), torch::nn::Linear(128, 10));
  EXPECT_THROW(qat::report(plain, model, batches), c10::Error);
}
