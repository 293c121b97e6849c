// QAT drop-in layers, prepare / convert / fuse_modules and converted models
// from C++.
#include <gtest/gtest.h>

#include <filesystem>
#include <limits>
#include <sstream>

#include "test_utils.h"

namespace {

/// A model written as LibTorch's examples are: typed members called directly.
struct NetImpl : torch::nn::Module {
  qat::nn::Conv2d conv{nullptr};
  qat::nn::BatchNorm2d bn{nullptr};
  torch::nn::ReLU relu{nullptr};
  qat::nn::Conv2d conv2{nullptr};
  qat::nn::Linear fc{nullptr};

  NetImpl() {
    conv = register_module("conv", qat::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).padding(1)));
    bn = register_module("bn", qat::nn::BatchNorm2d(32));
    relu = register_module("relu", torch::nn::ReLU());
    conv2 = register_module("conv2", qat::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).stride(2)));
    fc = register_module("fc", qat::nn::Linear(64 * 3 * 3, 10));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = relu->forward(bn->forward(conv->forward(x)));
    h = at::relu(conv2->forward(h));
    return fc->forward(h.flatten(1));
  }
};
TORCH_MODULE(Net);

double max_rel(const at::Tensor& y, const at::Tensor& ref) {
  return ((y - ref).abs().max() / ref.abs().max()).item<double>();
}

double train(torch::nn::Module& model, const std::function<at::Tensor(const at::Tensor&)>& fwd, int steps) {
  torch::manual_seed(3);
  torch::optim::SGD opt(model.parameters(), torch::optim::SGDOptions(0.05));
  const at::Tensor x = torch::randn({64, 1, 8, 8});
  const at::Tensor target = torch::randint(0, 10, {64});
  double last = 0;
  for (int i = 0; i < steps; ++i) {
    opt.zero_grad();
    at::Tensor loss = torch::cross_entropy_loss(fwd(x), target);
    loss.backward();
    opt.step();
    last = loss.item<double>();
  }
  return last;
}

}  // namespace

TEST(QatModules, DropInsAreFloatUntilPreparedAndInitLikeTorch) {
  torch::manual_seed(0);
  torch::nn::Linear a(16, 4);
  torch::manual_seed(0);
  qat::nn::Linear b(16, 4);
  EXPECT_TRUE(at::equal(a->weight, b->weight) && at::equal(a->bias, b->bias));
  const at::Tensor x = torch::randn({3, 16});
  EXPECT_TRUE(at::equal(a->forward(x), b->forward(x)));
  EXPECT_EQ(b->stage(), qat::nn::Stage::kFloat);
}

TEST(QatModules, TypedMemberModelTrainsConvertsAndMatches) {
  for (const std::string preset : {"int8", "w4a8", "w2a8", "w1a8", "lsq_w4a4", "fp16"}) {
    torch::manual_seed(1);
    Net net;
    qat::fuse_modules(*net, {{"conv", "bn", "relu"}});
    const auto keys = net->named_parameters().keys();
    EXPECT_NE(std::find(keys.begin(), keys.end(), "conv.bn.weight"), keys.end()) << preset;
    const int64_t float_bytes = qtorchext_test::state_bytes(*net);
    EXPECT_EQ(qat::prepare(*net, qat::QConfig::preset(preset)), 3);
    net->train();
    auto fwd = [&](const at::Tensor& x) { return net->forward(x); };
    const double first = train(*net, fwd, 1);
    const double last = train(*net, fwd, 60);
    EXPECT_LT(last, first) << preset;
    // the quantizers ran: the input observer of fc has statistics
    if (preset != "fp16") {
      auto* fq = dynamic_cast<qat::FakeQuantizeImpl*>(net->fc->input_fake_quant.get());
      auto* lfq = dynamic_cast<qat::LearnableFakeQuantizeImpl*>(net->fc->input_fake_quant.get());
      ASSERT_TRUE(fq || lfq) << preset;
      if (fq) {
        EXPECT_TRUE(std::isfinite(qat::nn::find_buffer(*fq->activation_post_process, "max_val").item<float>()));
      }
    }
    net->eval();
    qat::disable_observer(*net);
    qat::freeze_bn_stats(*net);
    const at::Tensor x = torch::randn({1000, 1, 8, 8});
    torch::NoGradGuard guard;
    const at::Tensor ref = net->forward(x);
    // per-layer references: each converted layer fed the same input as its QAT layer
    const at::Tensor h1 = net->relu->forward(net->bn->forward(net->conv->forward(x)));
    const at::Tensor h2 = net->conv2->forward(h1);
    const at::Tensor h3 = net->fc->forward(at::relu(h2).flatten(1));
    EXPECT_EQ(qat::convert(*net), 3);
    EXPECT_EQ(net->fc->stage(), qat::nn::Stage::kQuantized);
    EXPECT_LT(max_rel(net->conv->forward(x), h1), 1e-5) << preset;  // conv + folded BN + ReLU
    EXPECT_LT(max_rel(net->conv2->forward(h1), h2), 1e-5) << preset;
    EXPECT_LT(max_rel(net->fc->forward(at::relu(h2).flatten(1)), h3), 1e-5) << preset;
    // whole model: float rounding differences can flip a downstream rounding
    // decision (a half-precision ulp, an int8 step), so compare decisions
    const at::Tensor y = net->forward(x);
    EXPECT_GE(y.argmax(1).eq(ref.argmax(1)).to(at::kDouble).mean().item<double>(), 0.999) << preset;
    const double ratio = double(qtorchext_test::state_bytes(*net)) / float_bytes;
    if (preset == "int8") {
      EXPECT_LE(ratio, 0.27);
    }
    if (preset == "w4a8") {
      EXPECT_LE(ratio, 0.15);
    }
    if (preset == "w1a8") {
      EXPECT_LE(ratio, 0.05);
    }
  }
}

TEST(QatModules, SequentialOfPlainLayersIsConvertedInPlace) {
  torch::manual_seed(2);
  torch::nn::Sequential seq(
      torch::nn::Linear(12, 32), torch::nn::ReLU(), torch::nn::Linear(32, 5));
  auto* first_before = seq->ptr(0).get();
  qat::prepare(*seq, qat::QConfig::preset("int8"));
  auto* first = dynamic_cast<qat::nn::LinearImpl*>(seq->ptr(0).get());
  ASSERT_NE(first, nullptr);
  EXPECT_NE(static_cast<void*>(first), static_cast<void*>(first_before));
  EXPECT_EQ(first->stage(), qat::nn::Stage::kQat);
  torch::optim::SGD opt(seq->parameters(), torch::optim::SGDOptions(0.1));
  const at::Tensor x = torch::randn({128, 12}), t = torch::randn({128, 5});
  double first_loss = 0, last_loss = 0;
  for (int i = 0; i < 200; ++i) {
    opt.zero_grad();
    at::Tensor loss = torch::mse_loss(seq->forward(x), t);
    loss.backward();
    opt.step();
    (i == 0 ? first_loss : last_loss) = loss.item<double>();
  }
  EXPECT_LT(last_loss, first_loss);
  auto* fq = dynamic_cast<qat::FakeQuantizeImpl*>(first->input_fake_quant.get());
  EXPECT_TRUE(std::isfinite(qat::nn::find_buffer(*fq->activation_post_process, "min_val").item<float>()));
  seq->eval();
  qat::disable_observer(*seq);
  torch::NoGradGuard guard;
  const at::Tensor ref = seq->forward(x);
  qat::convert(*seq);
  const at::Tensor y = seq->forward(x);
  EXPECT_LT(((y - ref).abs().max() / ref.abs().max()).item<double>(), 1e-5);
}

struct PlainMemberImpl : torch::nn::Module {
  torch::nn::Linear fc1{nullptr};
  PlainMemberImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 4));
  }
  at::Tensor forward(const at::Tensor& x) {
    return fc1->forward(x);
  }
};
TORCH_MODULE(PlainMember);

TEST(QatModules, PlainTypedMemberIsAnErrorNamingTheFix) {
  PlainMember m;
  EXPECT_THROW_WITH(qat::prepare(*m, qat::QConfig::preset("int8")), "module 'fc1' is a plain");
  EXPECT_THROW_WITH(qat::prepare(*m, qat::QConfig::preset("int8")), "Declare it as qat::nn::Linear");
  // ... unless it is explicitly left in floating point (then nothing is quantizable).
  EXPECT_THROW_WITH(
      qat::prepare(*m, qat::QConfig::preset("int8"), {{"fc1", std::nullopt}}),
      "found no layer to quantize");
  EXPECT_THROW_WITH(qat::convert(*m), "call qat::prepare");
  EXPECT_THROW_WITH(
      qat::prepare(*m, qat::QConfig::preset("int8"), {{"fc9", std::nullopt}}),
      "names 'fc9', which is not a module");
}

TEST(QatModules, ConvertedModelSavesAndLoadsAndRefusesOtherBitWidths) {
  const std::string path = (std::filesystem::temp_directory_path() / "qtorchext_model.pt").string();
  torch::manual_seed(4);
  Net a;
  qat::fuse_modules(*a, {{"conv", "bn", "relu"}});
  qat::prepare(*a, qat::QConfig::preset("w4a8"));
  a->train();
  train(*a, [&](const at::Tensor& x) { return a->forward(x); }, 5);
  a->eval();
  qat::convert(*a);
  qat::save_state_dict(*a, path);

  Net b;
  qat::fuse_modules(*b, {{"conv", "bn", "relu"}});
  qat::prepare(*b, qat::QConfig::preset("w4a8"));
  qat::convert(*b, /*allow_unobserved=*/true);  // loaded next
  qat::load_state_dict(*b, path);
  const at::Tensor x = torch::randn({10, 1, 8, 8});
  EXPECT_TRUE(at::equal(a->forward(x), b->forward(x)));

  Net c;
  qat::fuse_modules(*c, {{"conv", "bn", "relu"}});
  qat::prepare(*c, qat::QConfig::preset("w2a8"));
  qat::convert(*c, /*allow_unobserved=*/true);
  EXPECT_THROW_WITH(qat::load_state_dict(*c, path), "another architecture, bit width or fused activation");
  std::remove(path.c_str());
}

/// LibTorch's other container forms: layers in a ModuleList and a ModuleDict,
/// called through qat::nn::forward.
struct ContainersImpl : torch::nn::Module {
  torch::nn::ModuleList body{nullptr};
  torch::nn::ModuleDict heads{nullptr};
  ContainersImpl() {
    body = register_module(
        "body", torch::nn::ModuleList(torch::nn::Linear(12, 32), torch::nn::ReLU(), torch::nn::Linear(32, 32)));
    heads = register_module(
        "heads", torch::nn::ModuleDict(std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>{
                     {"a", torch::nn::Linear(32, 5).ptr()}, {"b", torch::nn::Linear(32, 3).ptr()}}));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = x;
    for (const auto& layer : *body) {
      h = qat::nn::forward(*layer, h);
    }
    h = at::relu(h);
    return at::cat({qat::nn::forward(*heads["a"], h), qat::nn::forward(*heads["b"], h)}, 1);
  }
};
TORCH_MODULE(Containers);

TEST(QatModules, ModuleListAndModuleDictAreConvertedInPlace) {
  torch::manual_seed(5);
  Containers net;
  EXPECT_EQ(qat::prepare(*net, qat::QConfig::preset("int8")), 4);
  EXPECT_NE(net->body[0]->as<qat::nn::Linear>(), nullptr);
  EXPECT_NE(net->heads["b"]->as<qat::nn::Linear>(), nullptr);
  torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(1e-2));
  const at::Tensor x = torch::randn({256, 12}), t = torch::randn({256, 8});
  double first_loss = 0, last_loss = 0;
  for (int i = 0; i < 200; ++i) {
    opt.zero_grad();
    at::Tensor loss = torch::mse_loss(net->forward(x), t);
    loss.backward();
    opt.step();
    (i == 0 ? first_loss : last_loss) = loss.item<double>();
  }
  EXPECT_LT(last_loss, 0.9 * first_loss);
  auto* head = net->heads["a"]->as<qat::nn::Linear>();
  auto* fq = dynamic_cast<qat::FakeQuantizeImpl*>(head->input_fake_quant.get());
  ASSERT_NE(fq, nullptr);
  EXPECT_TRUE(std::isfinite(qat::nn::find_buffer(*fq->activation_post_process, "max_val").item<float>()));
  net->eval();
  qat::disable_observer(*net);
  torch::NoGradGuard guard;
  const at::Tensor ref = net->forward(x);
  EXPECT_EQ(qat::convert(*net), 4);
  EXPECT_EQ(net->heads["a"]->as<qat::nn::Linear>()->stage(), qat::nn::Stage::kQuantized);
  const at::Tensor y = net->forward(x);
  EXPECT_GE(y.argmax(1).eq(ref.argmax(1)).to(at::kDouble).mean().item<double>(), 0.999);
  EXPECT_THROW_WITH(qat::nn::forward(*torch::nn::GELU(), x), "qat::nn::forward: module of type");
}

TEST(QatModules, DynamicAndWeightOnlyAndFloatLinearLayersMatchTheirSimulation) {
  for (const std::string preset : {"dynamic_int8", "int4_weight_only", "int2_weight_only", "bf16"}) {
    torch::manual_seed(6);
    torch::nn::Sequential seq(torch::nn::Linear(12, 32), torch::nn::ReLU(), torch::nn::Linear(32, 5));
    const std::optional<int64_t> group =
        preset.find("weight_only") != std::string::npos ? std::optional<int64_t>(4) : std::nullopt;
    EXPECT_EQ(qat::prepare_qat(*seq, qat::QConfig::preset(preset, group)), 2);  // Python's name
    const at::Tensor x = torch::randn({64, 12}), t = torch::randn({64, 5});
    torch::optim::SGD opt(seq->parameters(), torch::optim::SGDOptions(0.05));
    for (int i = 0; i < 20; ++i) {
      opt.zero_grad();
      torch::mse_loss(seq->forward(x), t).backward();
      opt.step();
    }
    seq->eval();
    qat::disable_observer(*seq);
    torch::NoGradGuard guard;
    const at::Tensor h = seq[0]->as<qat::nn::Linear>()->forward(x);
    const at::Tensor ref = seq->forward(x);
    qat::convert(*seq);
    EXPECT_LT(max_rel(seq[0]->as<qat::nn::Linear>()->forward(x), h), 1e-5) << preset;
    EXPECT_LT(max_rel(seq->forward(x), ref), 1e-5) << preset;
  }
}

namespace {

/// A MobileNet-style block: depthwise conv (channel multiplier 2) + BN + ReLU,
/// then a grouped convolution (4 groups); kernels of 12 taps so that weight
/// groups of 4 divide them.
struct GroupedNetImpl : torch::nn::Module {
  qat::nn::Conv2d dw{nullptr};
  qat::nn::BatchNorm2d bn{nullptr};
  torch::nn::ReLU relu{nullptr};
  qat::nn::Conv2d grouped{nullptr};
  qat::nn::Conv1d dw1d{nullptr};

  GroupedNetImpl() {
    dw = register_module(
        "dw", qat::nn::Conv2d(torch::nn::Conv2dOptions(4, 8, {3, 4}).stride(2).padding(1).groups(4)));
    bn = register_module("bn", qat::nn::BatchNorm2d(8));
    relu = register_module("relu", torch::nn::ReLU());
    grouped = register_module(
        "grouped", qat::nn::Conv2d(torch::nn::Conv2dOptions(8, 12, 2).padding(1).groups(4)));
    dw1d = register_module("dw1d", qat::nn::Conv1d(torch::nn::Conv1dOptions(12, 12, 4).groups(12)));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor h = grouped->forward(relu->forward(bn->forward(dw->forward(x))));
    return dw1d->forward(h.flatten(2));
  }
};
TORCH_MODULE(GroupedNet);

}  // namespace

TEST(QatModules, GroupedAndDepthwiseConvolutionsConvertAndMatchTheirSimulation) {
  for (const std::string preset : {"int8", "w4a8", "w2a8", "w1a8", "int4_weight_only", "bf16"}) {
    torch::manual_seed(8);
    GroupedNet net;
    qat::fuse_modules(*net, {{"dw", "bn", "relu"}});
    const std::optional<int64_t> group =
        preset.find("weight_only") != std::string::npos ? std::optional<int64_t>(4) : std::nullopt;
    EXPECT_EQ(qat::prepare(*net, qat::QConfig::preset(preset, group)), 3);
    const at::Tensor x = torch::randn({6, 4, 11, 10});
    torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(0.01));
    for (int i = 0; i < 5; ++i) {
      opt.zero_grad();
      net->forward(x).square().mean().backward();
      opt.step();
    }
    net->eval();
    qat::disable_observer(*net);
    qat::freeze_bn_stats(*net);
    torch::NoGradGuard guard;
    const at::Tensor ref = net->forward(x);
    qat::convert(*net);
    const at::Tensor y = net->forward(x);
    ASSERT_EQ(y.sizes(), ref.sizes()) << preset;
    EXPECT_LT(max_rel(y, ref), 1e-5) << preset;
    // one group's K per output channel is stored: in / groups * kernel taps
    if (preset == "int8") {
      EXPECT_EQ(qat::nn::find_buffer(*net->dw, "weight_packed").sizes(), at::IntArrayRef({8, 12}));
      EXPECT_EQ(qat::nn::find_buffer(*net->grouped, "weight_packed").sizes(), at::IntArrayRef({12, 8}));
    }
    // saved and loaded into a fresh converted model: the same outputs
    const std::string path =
        (std::filesystem::temp_directory_path() / ("qtorchext_grouped_" + preset + ".pt")).string();
    qat::save_state_dict(*net, path);
    GroupedNet other;
    qat::fuse_modules(*other, {{"dw", "bn", "relu"}});
    qat::prepare(*other, qat::QConfig::preset(preset, group));
    other->eval();
    qat::convert(*other, /*allow_unobserved=*/true);  // loaded next
    qat::load_state_dict(*other, path);
    std::filesystem::remove(path);
    EXPECT_TRUE(torch::equal(other->forward(x), y)) << preset;
  }
}

TEST(QatModules, PaddingModesSameValidAndUnbatchedInputsConvertAndMatch) {
  using Opts2 = torch::nn::Conv2dOptions;
  using Opts1 = torch::nn::Conv1dOptions;
  // Each with its padding written out (F.pad's order, last dimension first)
  // and at::pad's mode: the float reference pads explicitly and convolves
  // unpadded. (torch::nn::Conv2d itself pads uneven 'same' with a non-zeros
  // padding_mode along the wrong dimensions; Python's nn.Conv2d, and ours, do not.)
  struct Case2 {
    Opts2 o;
    std::vector<int64_t> pads;
    std::string mode;
  };
  struct Case1 {
    Opts1 o;
    std::vector<int64_t> pads;
    std::string mode;
  };
  const std::vector<Case2> convs2{
      // 'same', uneven (1 left, 2 right), reflecting border; 'same' dilated with zeros; 'valid'
      {Opts2(4, 8, {3, 4}).padding(torch::kSame).padding_mode(torch::kReflect), {1, 2, 1, 1}, "reflect"},
      {Opts2(4, 8, {2, 3}).padding(torch::kSame).dilation(2), {2, 2, 1, 1}, "constant"},
      {Opts2(4, 8, 2).padding(torch::kValid), {0, 0, 0, 0}, "constant"},
      {Opts2(4, 8, 3).padding(1).padding_mode(torch::kReplicate), {1, 1, 1, 1}, "replicate"}};
  const std::vector<Case1> convs1{
      {Opts1(4, 8, 3).padding(2).padding_mode(torch::kCircular), {2, 2}, "circular"},
      {Opts1(4, 8, 4).padding(torch::kSame).padding_mode(torch::kReplicate), {1, 2}, "replicate"}};
  const auto check = [](auto layer, const at::Tensor& x, const std::vector<int64_t>& pads,
                        const std::string& mode, const std::string& what) {
    torch::NoGradGuard guard;
    const at::Tensor padded = at::pad(x, pads, mode);
    const auto& o = layer->options;
    const std::vector<int64_t> none(x.dim() - 2, 0);
    const at::IntArrayRef stride(*o.stride()), dilation(*o.dilation());
    const at::Tensor ref = x.dim() == 3
        ? at::conv1d(padded, layer->weight, layer->bias, stride, none, dilation)
        : at::conv2d(padded, layer->weight, layer->bias, stride, none, dilation);
    EXPECT_TRUE(torch::allclose(layer->forward(x), ref, 1e-5, 1e-5)) << what;
    for (const std::string preset : {"int8", "w4a8", "fp16"}) {
      auto q = std::dynamic_pointer_cast<std::remove_reference_t<decltype(*layer)>>(layer->clone());
      torch::nn::Sequential seq(q);
      qat::prepare(*seq, qat::QConfig::preset(preset));
      seq->train();
      seq->forward(x);  // observe
      seq->eval();
      qat::disable_observer(*seq);
      const at::Tensor fq = seq->forward(x);
      qat::convert(*seq);
      const at::Tensor y = seq->forward(x);
      ASSERT_EQ(y.sizes(), fq.sizes()) << what << " " << preset;
      EXPECT_LT(max_rel(y, fq), 1e-5) << what << " " << preset;
      // unbatched input: the batched result's first image
      EXPECT_TRUE(torch::allclose(seq->forward(x[0]), y[0], 1e-6, 1e-6)) << what << " " << preset;
    }
  };
  for (size_t i = 0; i < convs2.size(); ++i) {
    check(qat::nn::Conv2d(convs2[i].o), torch::randn({3, 4, 9, 10}), convs2[i].pads, convs2[i].mode,
          "conv2d #" + std::to_string(i));
  }
  for (size_t i = 0; i < convs1.size(); ++i) {
    check(qat::nn::Conv1d(convs1[i].o), torch::randn({3, 4, 13}), convs1[i].pads, convs1[i].mode,
          "conv1d #" + std::to_string(i));
  }
  // a wrong channel count or rank names the expected shape
  qat::nn::Conv2d c(Opts2(4, 8, 3));
  torch::nn::Sequential seq(c);
  qat::prepare(*seq, qat::QConfig::preset("int8"));
  seq->eval();
  qat::convert(*seq, /*allow_unobserved=*/true);
  EXPECT_THROW_WITH(seq->forward(torch::randn({2, 5, 9, 9})), "input must be [N, 4, ...]");
  EXPECT_THROW_WITH(seq->forward(torch::randn({9, 9})), "got shape [9, 9]");
}

TEST(QatModules, FuseModulesTakesPythonsPatternsOnly) {
  const auto seq = [] {
    return torch::nn::Sequential(
        torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)), torch::nn::ReLU(),
        torch::nn::BatchNorm2d(4), torch::nn::ReLU());
  };
  auto a = seq();
  EXPECT_THROW_WITH(qat::fuse_modules(*a, {{"0", "1", "2"}}), "cannot fuse {0, 1, 2}");  // conv, relu, bn
  auto b = seq();
  EXPECT_THROW_WITH(qat::fuse_modules(*b, {{"0", "1", "3"}}), "in this order");  // conv, relu, relu
  // nothing changed by a refused group
  EXPECT_EQ(std::string(a[0]->name()), "torch::nn::Conv2dImpl");
  auto c = torch::nn::Sequential(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 3)), torch::nn::BatchNorm2d(4));
  c[1]->eval();
  EXPECT_THROW_WITH(qat::fuse_modules(*c, {{"0", "1"}}), "must both be in train or eval mode");
  auto d = seq();
  d[0]->eval(), d[1]->eval(), d[2]->eval();
  qat::fuse_modules(*d, {{"0", "2", "3"}});  // conv, bn, relu: fused
  EXPECT_NE(d[0]->as<qat::nn::Conv2d>(), nullptr);
}

TEST(QatModules, QConfigMapTakesLayerKindsAfterPathsBeforeTheDefault) {
  torch::nn::Sequential seq(
      torch::nn::Embedding(20, 16), torch::nn::Linear(16, 8), torch::nn::ReLU(), torch::nn::Linear(8, 4));
  // kinds: Embedding weight-only, Linear int8; path "3" (a Linear) overrides its kind
  EXPECT_EQ(
      qat::prepare(
          *seq, qat::QConfig::preset("int8"),
          {{"type:Embedding", qat::QConfig::preset("int4_weight_only", 8)},
           {"type:Linear", qat::QConfig::preset("w4a8")},
           {"3", std::nullopt}}),
      2);
  seq->eval();
  ASSERT_NE(seq[1]->as<qat::nn::Linear>(), nullptr);
  EXPECT_EQ(seq[1]->as<qat::nn::Linear>()->stage(), qat::nn::Stage::kQat);
  EXPECT_NE(seq[3]->as<torch::nn::Linear>(), nullptr);  // left a plain float layer
  ASSERT_NE(seq[0]->as<qat::nn::Embedding>(), nullptr);
  seq->forward(torch::randint(0, 20, {2, 3}));
  qat::convert(*seq);
  EXPECT_EQ(seq[1]->as<qat::nn::Linear>()->quantized_state().meta.bits, 4);       // w4a8 by kind
  EXPECT_EQ(seq[0]->as<qat::nn::Embedding>()->quantized_state().meta.group_size, 8);  // by kind
  torch::nn::Sequential other(torch::nn::Linear(4, 4));
  EXPECT_THROW_WITH(
      qat::prepare(*other, qat::QConfig::preset("int8"), {{"type:LSTM", std::nullopt}}),
      "layer kinds are Linear, Conv1d, Conv2d or Embedding, got 'LSTM'");
}

// ---------------------------------------------------------------------------
// The first hour (issue 17): what a new user must not hit silently
// ---------------------------------------------------------------------------

namespace {
struct TokenNetImpl : torch::nn::Module {
  qat::nn::Embedding emb{nullptr};
  qat::nn::Linear fc{nullptr};
  TokenNetImpl() {
    emb = register_module("emb", qat::nn::Embedding(20, 16));
    fc = register_module("fc", qat::nn::Linear(16, 4));
  }
  at::Tensor forward(const at::Tensor& idx) {
    return fc->forward(emb->forward(idx));
  }
};
TORCH_MODULE(TokenNet);
}  // namespace

TEST(FirstHour, ConvertWithoutCalibrationNamesTheLayerAndChangesNothing) {
  Net net;
  qat::prepare(*net, qat::QConfig::preset("int8"));
  EXPECT_THROW_WITH(qat::convert(*net), "input quantizer of 'conv' (and 2 more layers) never observed data");
  EXPECT_EQ(net->fc->stage(), qat::nn::Stage::kQat);  // nothing converted
  {
    torch::NoGradGuard guard;
    net->forward(torch::randn({0, 1, 8, 8}));  // an empty batch observes nothing
  }
  EXPECT_THROW_WITH(qat::convert(*net), "never observed data");
  {
    torch::NoGradGuard guard;
    net->forward(torch::randn({4, 1, 8, 8}));
  }
  EXPECT_EQ(qat::convert(*net), 3);
  EXPECT_NE(qat::nn::find_buffer(*net->fc, "input_scale").item<float>(), 1.0f);
  // opting in keeps the initial qparams
  Net fresh;
  qat::prepare(*fresh, qat::QConfig::preset("int8"));
  EXPECT_EQ(qat::convert(*fresh, /*allow_unobserved=*/true), 3);
  EXPECT_EQ(qat::nn::find_buffer(*fresh->fc, "input_scale").item<float>(), 1.0f);
  // PTQ with no calibration batches
  Net ptq;
  EXPECT_THROW_WITH(qat::quantize_static(ptq, std::vector<at::Tensor>{}, "int8", false), "never observed data");
  // dynamic inputs need no calibration
  Net dynamic;
  qat::prepare(*dynamic, qat::QConfig::preset("dynamic_int8"));
  EXPECT_EQ(qat::convert(*dynamic), 3);
}

TEST(FirstHour, PrepareWantsATrainingModelOnceAndConvertOnce) {
  Net net;
  net->eval();
  EXPECT_THROW_WITH(qat::prepare(*net, qat::QConfig::preset("int8")), "the model is in eval mode");
  EXPECT_EQ(qat::prepare_ptq(*net, "int8"), 3);  // post-training: eval is right
  net->train();
  EXPECT_THROW_WITH(qat::prepare(*net, qat::QConfig::preset("int8")), "the model is already prepared ('conv'");
  {
    torch::NoGradGuard guard;
    net->forward(torch::randn({4, 1, 8, 8}));
  }
  qat::convert(*net);
  EXPECT_THROW_WITH(qat::convert(*net), "already converted");
  EXPECT_THROW_WITH(qat::prepare(*net, qat::QConfig::preset("int8")), "already converted");
}

TEST(FirstHour, EmbeddingsQuantizeOnlyWhenNamed) {
  TokenNet net;
  EXPECT_EQ(qat::prepare(*net, qat::QConfig::preset("w4a8")), 1);
  EXPECT_EQ(net->emb->stage(), qat::nn::Stage::kFloat);
  TokenNet by_kind, by_path;
  const qat::QConfig w4a8 = qat::QConfig::preset("w4a8");
  EXPECT_EQ(qat::prepare(*by_kind, w4a8, {{"type:Embedding", w4a8}}), 2);
  EXPECT_EQ(qat::prepare(*by_path, w4a8, {{"emb", qat::QConfig::preset("int4_weight_only", 16)}}), 2);
  EXPECT_EQ(by_path->emb->stage(), qat::nn::Stage::kQat);
  TokenNet dyn;
  EXPECT_EQ(qat::quantize_dynamic(*dyn, "int4_weight_only", 16, {"Linear", "Embedding"}), 2);
  EXPECT_EQ(dyn->emb->stage(), qat::nn::Stage::kQuantized);
  torch::nn::Sequential only_emb(qat::nn::Embedding(10, 4));
  EXPECT_THROW_WITH(qat::prepare(*only_emb, w4a8), "Embedding layers only when the qconfig map names them");
}

TEST(FirstHour, ConvertedLayersTakeHalfBFloat16AndDoubleInputs) {
  for (const std::string preset : {"int8", "w4a8", "dynamic_int8", "fp16", "bf16", "w1a8"}) {
    torch::manual_seed(5);
    torch::nn::Sequential seq(qat::nn::Linear(32, 8));
    qat::prepare(*seq, qat::QConfig::preset(preset));
    {
      torch::NoGradGuard guard;
      seq->forward(torch::randn({6, 32}));
    }
    seq->eval();
    qat::convert(*seq);
    torch::NoGradGuard guard;
    for (const at::ScalarType dtype : {at::kHalf, at::kBFloat16, at::kDouble}) {
      const at::Tensor x = torch::randn({5, 32}).to(dtype);
      const at::Tensor y = seq->forward(x);
      EXPECT_EQ(y.scalar_type(), dtype) << preset;
      EXPECT_TRUE(at::equal(y, seq->forward(x.to(at::kFloat)).to(dtype))) << preset;
    }
    EXPECT_THROW_WITH(seq->forward(torch::ones({2, 32}, at::kInt)), "input must be float32, float16, bfloat16 or float64, got Int");
  }
}

TEST(FirstHour, AnEmptyIndexTensorGivesAnEmptyLookup) {
  torch::nn::Sequential seq(qat::nn::Embedding(10, 6));
  const qat::QConfig w4a8 = qat::QConfig::preset("w4a8");
  qat::prepare(*seq, w4a8, {{"type:Embedding", w4a8}});
  qat::convert(*seq);
  EXPECT_EQ(seq->forward(torch::zeros({3, 0}, at::kLong)).sizes(), at::IntArrayRef({3, 0, 6}));
  EXPECT_EQ(seq->forward(torch::zeros({0}, at::kLong)).sizes(), at::IntArrayRef({0, 6}));
}

TEST(FirstHour, LoadQuantizedRebuildsAConvertedModelFromItsFile) {
  const std::string path = (std::filesystem::temp_directory_path() / "qtorchext_load_quantized.pt").string();
  for (const std::string preset : {"w4a8", "int8", "w1a8", "fp16"}) {
    torch::manual_seed(4);
    Net a;
    qat::fuse_modules(*a, {{"conv", "bn", "relu"}});
    qat::prepare(*a, qat::QConfig::preset(preset));
    train(*a, [&](const at::Tensor& x) { return a->forward(x); }, 3);
    a->eval();
    qat::disable_observer(*a);
    qat::convert(*a);
    qat::save_state_dict(*a, path);
    // a float model: the layers come back from the file, the BatchNorm passes through
    Net b;
    EXPECT_THROW_WITH(qat::load_state_dict(*b, path), "qat::load_quantized(model, path)");
    EXPECT_EQ(qat::load_quantized(*b, path), 3);
    EXPECT_TRUE(b->bn->fused());
    EXPECT_FALSE(b->is_training());
    const at::Tensor x = torch::randn({6, 1, 8, 8});
    torch::NoGradGuard guard;
    EXPECT_TRUE(at::equal(b->forward(x), a->forward(x))) << preset;
  }
  // plain torch::nn layers in a Sequential become drop-ins, a plain BatchNorm Identity
  torch::nn::Sequential seq(torch::nn::Linear(12, 16), torch::nn::ReLU(), torch::nn::Linear(16, 4));
  qat::quantize_dynamic(*seq, "int4_weight_only", 4);
  qat::save_state_dict(*seq, path);
  torch::nn::Sequential fresh(torch::nn::Linear(12, 16), torch::nn::ReLU(), torch::nn::Linear(16, 4));
  EXPECT_EQ(qat::load_quantized(*fresh, path), 2);
  const at::Tensor x = torch::randn({3, 12});
  {
    torch::NoGradGuard guard;
    EXPECT_TRUE(at::equal(fresh->forward(x), seq->forward(x)));
  }
  // another model, or a float file
  torch::nn::Sequential other(torch::nn::Linear(12, 16), torch::nn::ReLU(), torch::nn::Conv1d(16, 4, 1));
  EXPECT_THROW_WITH(qat::load_quantized(*other, path), "'2' is a torch::nn::Conv1dImpl in the model, but the file holds it as a converted Linear");
  torch::nn::Sequential shorter(torch::nn::Linear(12, 16));
  EXPECT_THROW_WITH(qat::load_quantized(*shorter, path), "the model has no module by that name");
  torch::nn::Sequential plain(torch::nn::Linear(12, 16));
  qat::save_state_dict(*plain, path);
  EXPECT_THROW_WITH(qat::load_quantized(*plain, path), "holds no converted layer");
  std::filesystem::remove(path);
}

TEST(FirstHour, LoadQuantizedLeavesTheModelAsItWasWhenTheLoadRefusesTheFile) {
  // the layers are rebuilt before the strict load, which then refuses the file: every
  // change goes back (a model left with zero-filled converted layers computes garbage)
  const std::string path = (std::filesystem::temp_directory_path() / "qtorchext_load_refused.pt").string();
  torch::manual_seed(5);
  Net a;
  qat::fuse_modules(*a, {{"conv", "bn", "relu"}});
  qat::prepare(*a, qat::QConfig::preset("w4a8"));
  train(*a, [&](const at::Tensor& x) { return a->forward(x); }, 2);
  a->eval();
  qat::disable_observer(*a);
  qat::convert(*a);
  qat::save_state_dict(*a, path);
  Net small;  // another fc width: its converted buffers do not match the file
  small->fc = small->replace_module("fc", qat::nn::Linear(64 * 3 * 3, 12));
  small->eval();
  const at::Tensor x = torch::randn({4, 1, 8, 8});
  torch::NoGradGuard guard;
  const at::Tensor before = small->forward(x);
  EXPECT_THROW_WITH(qat::load_quantized(*small, path), "fc.");
  EXPECT_EQ(small->conv->stage(), qat::nn::Stage::kFloat);
  EXPECT_EQ(small->conv2->stage(), qat::nn::Stage::kFloat);
  EXPECT_EQ(small->fc->stage(), qat::nn::Stage::kFloat);
  EXPECT_FALSE(small->bn->fused());
  EXPECT_EQ(small->named_children()["bn"].get(), small->bn.ptr().get());
  EXPECT_EQ(small->named_parameters().size(), Net()->named_parameters().size());
  EXPECT_TRUE(at::equal(small->forward(x), before));
  // plain layers in a Sequential: their drop-ins go again, a plain BatchNorm comes back
  const auto conv_bn_conv = [] {
    return torch::nn::Sequential(torch::nn::Conv1d(4, 8, 1), torch::nn::BatchNorm1d(8), torch::nn::Conv1d(8, 2, 1));
  };
  torch::nn::Sequential seq = conv_bn_conv();
  qat::fuse_modules(*seq, {{"0", "1"}});
  qat::prepare(*seq, qat::QConfig::preset("w4a8"));
  for (int i = 0; i < 3; ++i) {
    seq->forward(torch::randn({6, 4, 5}));
  }
  seq->eval();
  qat::disable_observer(*seq);
  qat::convert(*seq);
  seq->register_buffer("extra", torch::zeros({1}));  // an entry no fresh model has
  qat::save_state_dict(*seq, path);
  torch::nn::Sequential fresh = conv_bn_conv();
  fresh->eval();
  const at::Tensor x2 = torch::randn({3, 4, 5});
  const at::Tensor fresh_before = fresh->forward(x2);
  EXPECT_THROW_WITH(qat::load_quantized(*fresh, path), "unexpected extra");
  EXPECT_EQ(std::string(fresh[0]->name()), "torch::nn::Conv1dImpl");
  EXPECT_EQ(std::string(fresh[1]->name()), "torch::nn::BatchNorm1dImpl");
  EXPECT_EQ(std::string(fresh[2]->name()), "torch::nn::Conv1dImpl");
  EXPECT_TRUE(at::equal(fresh->forward(x2), fresh_before));
  std::filesystem::remove(path);
}

TEST(FirstHour, ConvertedLayersPrintTheirShapeAndPrecisionPlainly) {
  torch::nn::Sequential seq(
      qat::nn::Conv2d(torch::nn::Conv2dOptions(8, 8, 3).groups(8).padding(torch::kSame).bias(false)),
      torch::nn::Flatten(), qat::nn::Linear(8 * 36, 16), qat::nn::Embedding(30522, 384));
  const qat::QConfig w4a8 = qat::QConfig::preset("w4a8");
  qat::prepare(*seq, w4a8, {{"type:Embedding", qat::QConfig::preset("int4_weight_only")}});
  qat::convert(*seq, /*allow_unobserved=*/true);
  const auto printed = [&](size_t i) {
    std::ostringstream os;
    seq[i]->pretty_print(os);
    return os.str();
  };
  EXPECT_EQ(printed(0), "qat::nn::Conv2d(8, 8, kernel_size=[3, 3], stride=[1, 1], padding=same, groups=8, "
                        "bias=false, quantized: 4-bit weights per channel, uint8 activations (static))");
  EXPECT_EQ(printed(2), "qat::nn::Linear(in_features=288, out_features=16, bias=true, quantized: 4-bit "
                        "weights per channel, uint8 activations (static))");
  EXPECT_EQ(printed(3), "qat::nn::Embedding(30522, 384, quantized: 4-bit weights in groups of 32 (float16 scales))");
}

TEST(FirstHour, AGroupSizeThatDoesNotDivideNamesTheLayerOrFallsBack) {
  const auto model = [] {
    return torch::nn::Sequential(torch::nn::Linear(64, 48), torch::nn::Linear(48, 4));
  };
  auto a = model();
  EXPECT_THROW_WITH(
      qat::quantize_dynamic(*a, "int4_weight_only"), "layer '1': qat::nn::LinearImpl: weight group_size 32 does not divide the 48 inputs");
  auto per_channel = model(), as_float = model();
  EXPECT_EQ(qat::quantize_dynamic(*per_channel, "int4_weight_only", std::nullopt, {"Linear"}, "per_channel"), 2);
  EXPECT_EQ(qat::nn::as_quantizable(*per_channel[1])->quantized_state().meta.group_size, 0);
  EXPECT_EQ(qat::nn::as_quantizable(*per_channel[0])->quantized_state().meta.group_size, 32);
  EXPECT_EQ(qat::quantize_dynamic(*as_float, "int4_weight_only", std::nullopt, {"Linear"}, "float"), 1);
  EXPECT_EQ(qat::nn::as_quantizable(*as_float[1])->stage(), qat::nn::Stage::kFloat);  // left in float
  EXPECT_THROW_WITH(qat::quantize_dynamic(*model(), "int4_weight_only", std::nullopt, {"Linear"}, "perchannel"),
                    "group_fallback must be");
}

TEST(FirstHour, ConvertRefusesUnusableQparamsByLayer) {
  torch::nn::Sequential seq(qat::nn::Linear(8, 4), qat::nn::Linear(4, 2));
  qat::prepare(*seq, qat::QConfig::preset("lsq_w4a4"));
  seq->forward(torch::randn({3, 8}));
  {
    torch::NoGradGuard guard;
    auto* lsq = dynamic_cast<qat::LearnableFakeQuantizeImpl*>(
        qat::nn::as_quantizable(*seq[1])->input_quantizer());
    ASSERT_NE(lsq, nullptr);
    lsq->scale.fill_(std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_THROW_WITH(qat::convert(*seq), "qat::convert: layer '1' would hold unusable qparams: input_scale[0] is nan");
}

TEST(FirstHour, ConvertRefusesNonFiniteWeightsByLayer) {
  torch::nn::Sequential seq(qat::nn::Linear(8, 4), qat::nn::Linear(4, 2));
  qat::prepare(*seq, qat::QConfig::preset("int8"));
  seq->forward(torch::randn({3, 8}));
  {
    torch::NoGradGuard guard;
    seq[1]->as<qat::nn::Linear>()->weight[0][0] = std::numeric_limits<float>::infinity();
  }
  EXPECT_THROW_WITH(qat::convert(*seq), "qat::convert: layer '1': qtorchext::pack_quantized_weight: the weight holds 1 NaN or Inf value(s)");
}

namespace {
struct ScaledLinearImpl : torch::nn::LinearImpl {
  using torch::nn::LinearImpl::LinearImpl;
  at::Tensor forward(const at::Tensor& x) {
    return torch::nn::LinearImpl::forward(x) * 2;
  }
};
}  // namespace

TEST(FirstHour, SubclassesOfTorchLayersStayFloatUnlessNamed) {
  const auto make = [] {
    torch::nn::Sequential seq(torch::nn::Linear(4, 4));
    seq->push_back("scaled", std::make_shared<ScaledLinearImpl>(torch::nn::LinearOptions(4, 4)));
    return seq;
  };
  auto seq = make();
  EXPECT_EQ(qat::prepare(*seq, qat::QConfig::preset("int8")), 1);
  EXPECT_NE(std::dynamic_pointer_cast<ScaledLinearImpl>(seq->named_children()["scaled"]), nullptr);
  auto named = make();
  const qat::QConfig int8 = qat::QConfig::preset("int8");
  EXPECT_EQ(qat::prepare(*named, int8, {{"scaled", int8}}), 2);  // named: its base layer's forward
  EXPECT_EQ(std::dynamic_pointer_cast<ScaledLinearImpl>(named->named_children()["scaled"]), nullptr);
}

namespace {

torch::nn::Sequential linear_gelu_net(const std::string& approximate) {
  return torch::nn::Sequential(
      torch::nn::Linear(48, 96), torch::nn::GELU(torch::nn::GELUOptions().approximate(approximate)),
      torch::nn::Linear(96, 8));
}

struct GeluMemberImpl : torch::nn::Module {
  torch::nn::Linear fc{nullptr};
  torch::nn::GELU act{nullptr};
  GeluMemberImpl() {
    fc = register_module("fc", torch::nn::Linear(4, 4));
    act = register_module("act", torch::nn::GELU());
  }
  at::Tensor forward(const at::Tensor& x) {
    return act(fc(x));
  }
};
TORCH_MODULE(GeluMember);

}  // namespace

TEST(QatModules, LinearGeluFusesIntoTheConvertedLayer) {
  const std::string path = (std::filesystem::temp_directory_path() / "qtorchext_linear_gelu.pt").string();
  for (const std::string approximate : {"none", "tanh"}) {
    for (const std::string preset : {"int8", "w4a8"}) {  // static int8, weight-only int4
      torch::manual_seed(7);
      torch::nn::Sequential plain = linear_gelu_net(approximate);
      torch::nn::Sequential fused(std::dynamic_pointer_cast<torch::nn::SequentialImpl>(plain->clone()));
      qat::fuse_modules(*fused, {{"0", "1"}});
      auto* first = fused[0]->as<qat::nn::Linear>();
      ASSERT_NE(first, nullptr);
      EXPECT_EQ(first->activation(), approximate == "tanh" ? qat::kGeluTanh : qat::kGelu);
      EXPECT_NE(fused[1]->as<torch::nn::Identity>(), nullptr);
      const at::Tensor x = torch::randn({1100, 48}) * 2;
      {
        torch::NoGradGuard guard;
        EXPECT_TRUE(at::equal(fused->forward(x), plain->forward(x)));  // float: the same ops
      }
      for (auto* net : {&plain, &fused}) {
        qat::prepare(**net, qat::QConfig::preset(preset));
        (*net)->train();
        torch::NoGradGuard guard;
        (*net)->forward(x.narrow(0, 0, 256));
        (*net)->eval();
        qat::disable_observer(**net);
      }
      torch::NoGradGuard guard;
      const at::Tensor simulated = fused[0]->as<qat::nn::Linear>()->forward(x);
      qat::convert(*plain);
      qat::convert(*fused);
      EXPECT_NE(first->quantized_state().meta.describe().find("fused GELU"), std::string::npos);
      const at::Tensor y = fused[0]->as<qat::nn::Linear>()->forward(x);
      // the converted layer: GELU of the unfused converted layer's output (ATen's GELU on
      // the same values; vector and scalar paths 1 ulp of 1 + erf apart), and what QAT simulated
      const at::Tensor want = at::gelu(plain[0]->as<qat::nn::Linear>()->forward(x), approximate);
      EXPECT_LT((y - want).abs().max().item<double>(), 1e-5) << preset << " " << approximate;
      EXPECT_LT((y - simulated).abs().max().item<double>(), 1e-4) << preset << " " << approximate;
      // a file with the GELU loads only into a model fused the same way
      qat::save_state_dict(*fused, path);
      torch::nn::Sequential unfused = linear_gelu_net(approximate);
      EXPECT_THROW_WITH(qat::load_quantized(*unfused, path), "'0': the file's layer ends with a fused GELU");
      // refused before anything changed: still the float Linear and its GELU
      EXPECT_EQ(std::string(unfused[0]->name()), "torch::nn::LinearImpl");
      EXPECT_NE(unfused[1]->as<torch::nn::GELU>(), nullptr);
      // every layer is checked before any changes: a refusal on '2' leaves '0' as it was
      torch::nn::Sequential other(
          torch::nn::Linear(48, 96), torch::nn::GELU(torch::nn::GELUOptions().approximate(approximate)),
          torch::nn::Conv1d(96, 8, 1));
      qat::fuse_modules(*other, {{"0", "1"}});
      EXPECT_THROW_WITH(qat::load_quantized(*other, path), "'2' is a torch::nn::Conv1dImpl");
      EXPECT_EQ(other[0]->as<qat::nn::Linear>()->stage(), qat::nn::Stage::kFloat);
      torch::nn::Sequential refused = linear_gelu_net(approximate);
      qat::fuse_modules(*refused, {{"0", "1"}});
      EXPECT_EQ(qat::load_quantized(*refused, path), 2);
      EXPECT_TRUE(at::equal(refused->forward(x), fused->forward(x)));
    }
  }
  // a GELU its owner's forward calls directly would run twice; a GELU after a conv
  GeluMember member;
  EXPECT_THROW_WITH(qat::fuse_modules(*member, {{"fc", "act"}}), "'act' is a GELU held directly by a module");
  torch::nn::Sequential conv(torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 4, 1)), torch::nn::GELU());
  EXPECT_THROW_WITH(qat::fuse_modules(*conv, {{"0", "1"}}), "a GELU fuses into a Linear");
  // one activation per layer: a second group on the same Linear is refused, naming it
  torch::nn::Sequential twice(torch::nn::Linear(4, 4), torch::nn::ReLU(), torch::nn::GELU());
  qat::fuse_modules(*twice, {{"0", "1"}});
  EXPECT_THROW_WITH(qat::fuse_modules(*twice, {{"0", "2"}}), "'0' already ends with a fused relu");
  auto* dense = twice[0]->as<qat::nn::Linear>();
  EXPECT_THROW_WITH(dense->fuse_gelu("fast"), "approximate must be \"none\" or \"tanh\"");
  qat::nn::Conv2d c2(torch::nn::Conv2dOptions(3, 4, 1));
  EXPECT_THROW_WITH(c2->fuse_gelu(), "a GELU fuses into a Linear");
  torch::nn::Sequential late(torch::nn::Linear(4, 4), torch::nn::GELU());
  qat::prepare(*late, qat::QConfig::preset("int8"));
  EXPECT_THROW_WITH(qat::fuse_modules(*late, {{"0", "1"}}), "fuse before qat::prepare");
}
