// Converted layers run one op each (qat::quantized_linear / quantized_conv /
// quantized_embedding) over their stored buffers: never stale after
// torch::load, qat::load_state_dict or copy_; the same outputs in a wider
// float dtype, an error in a narrower one; safe when many threads make the
// first call at once.
#include <gtest/gtest.h>

#include <filesystem>
#include <latch>
#include <thread>

#include "test_utils.h"

namespace {

struct SmallNetImpl : torch::nn::Module {
  qat::nn::Embedding emb{nullptr};
  qat::nn::Conv2d conv{nullptr};
  qat::nn::Conv2d dw{nullptr};
  qat::nn::Linear fc{nullptr};
  SmallNetImpl() {
    emb = register_module("emb", qat::nn::Embedding(20, 32));
    conv = register_module("conv", qat::nn::Conv2d(torch::nn::Conv2dOptions(3, 32, 3).padding(1)));
    dw = register_module("dw", qat::nn::Conv2d(torch::nn::Conv2dOptions(32, 32, 3).groups(32)));
    fc = register_module("fc", qat::nn::Linear(32 * 4 * 4, 32));
  }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& idx) {
    const at::Tensor h = at::relu(dw->forward(conv->forward(x))).flatten(1);
    return fc->forward(h) + emb->forward(idx).sum(1);
  }
};
TORCH_MODULE(SmallNet);

const at::Tensor& images() {
  static const at::Tensor x = [] {
    torch::manual_seed(100);
    return torch::randn({4, 3, 6, 6});
  }();
  return x;
}

const at::Tensor& tokens() {
  static const at::Tensor idx = [] {
    torch::manual_seed(101);
    return torch::randint(0, 20, {4, 5});
  }();
  return idx;
}

/// Prepared with `preset`, observed on a few batches (seeded), converted.
SmallNet converted(const std::string& preset, uint64_t seed, bool observe = true) {
  torch::manual_seed(seed);
  SmallNet net;
  qat::prepare(*net, qat::QConfig::preset(preset));
  net->train();
  if (observe) {
    torch::NoGradGuard guard;
    for (int i = 0; i < 2; ++i) {
      net->forward(torch::randn({8, 3, 6, 6}) * (1 + i), torch::randint(0, 20, {8, 5}));
    }
  }
  net->eval();
  qat::disable_observer(*net);
  qat::convert(*net);
  return net;
}

at::Tensor run(SmallNet& net) {
  torch::NoGradGuard guard;
  return net->forward(images(), tokens());
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("qtorchext_layer_ops_" + name)).string();
}

const std::vector<std::string> kPresets{"int8", "dynamic_int8", "w4a8", "w2a8", "w1a8", "fp16", "bf16"};

}  // namespace

TEST(LayerOps, TorchLoadIntoAModelThatRanUsesTheNewWeights) {
  for (const std::string& preset : kPresets) {
    SmallNet a = converted(preset, 1), b = converted(preset, 2);
    const at::Tensor before = run(a);  // derived layouts built for a's weights
    const at::Tensor expected = run(b);
    ASSERT_FALSE(at::equal(before, expected)) << preset;
    const std::string path = temp_path(preset + ".pt");
    torch::save(b, path);
    torch::load(a, path);  // LibTorch's own serialization
    std::filesystem::remove(path);
    EXPECT_TRUE(at::equal(run(a), expected)) << preset;
  }
}

TEST(LayerOps, LoadStateDictAndCopyIntoBuffersAreSeen) {
  for (const std::string& preset : kPresets) {
    SmallNet a = converted(preset, 1), b = converted(preset, 2), c = converted(preset, 3);
    run(a);
    const std::string path = temp_path(preset + "_sd.pt");
    qat::save_state_dict(*b, path);
    qat::load_state_dict(*a, path);
    std::filesystem::remove(path);
    EXPECT_TRUE(at::equal(run(a), run(b))) << preset;
    {
      torch::NoGradGuard guard;
      const auto theirs = c->named_buffers();
      for (auto& item : a->named_buffers()) {
        item.value().copy_(theirs[item.key()]);
      }
    }
    EXPECT_TRUE(at::equal(run(a), run(c))) << preset;
  }
}

TEST(LayerOps, ModelsMadeUnderInferenceModeSeeTheirLoads) {
  // inference tensors have no version counter: layouts are compared by content
  c10::InferenceMode guard;
  for (const std::string preset : {"int8", "w4a8", "dynamic_int8"}) {
    SmallNet a = converted(preset, 1), b = converted(preset, 2);
    const at::Tensor before = run(a);
    const at::Tensor expected = run(b);
    ASSERT_FALSE(at::equal(before, expected)) << preset;
    const auto theirs = b->named_buffers();
    for (auto& item : a->named_buffers()) {
      item.value().copy_(theirs[item.key()]);
    }
    EXPECT_TRUE(at::equal(run(a), expected)) << preset;
  }
}

TEST(LayerOps, WiderFloatBuffersGiveTheSameOutputsNarrowerOnesAreRefused) {
  for (const std::string& preset : kPresets) {
    SmallNet a = converted(preset, 1);
    const at::Tensor expected = run(a);
    a->to(at::kDouble);  // float32 scales / biases, float16 weights: the same values
    EXPECT_TRUE(at::equal(run(a), expected)) << preset;
    a->to(at::kFloat);
    EXPECT_TRUE(at::equal(run(a), expected)) << preset;
    if (preset != "fp16") {  // every other preset holds float32 or bfloat16 values
      a->to(at::kHalf);
      EXPECT_THROW_WITH(run(a), "is Half, but this layer");
    }
  }
}

TEST(LayerOps, ThreadsMakingTheFirstCallAtOnceGetTheRightOutputs) {
  for (const std::string preset : {"int8", "w4a8", "dynamic_int8"}) {
    const std::string path = temp_path(preset + "_threads.pt");
    SmallNet trained = converted(preset, 5);
    qat::save_state_dict(*trained, path);
    const at::Tensor expected = run(trained);
    for (int round = 0; round < 5; ++round) {
      // freshly converted and loaded: no layout derived yet
      SmallNet net = converted(preset, 6, /*observe=*/false);
      qat::load_state_dict(*net, path);
      constexpr int kThreads = 4;
      std::latch start(kThreads);
      std::vector<at::Tensor> outputs(kThreads);
      std::vector<std::string> errors(kThreads);
      std::vector<std::thread> threads;
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
          start.arrive_and_wait();
          try {
            outputs[t] = run(net);
          } catch (const std::exception& e) {
            errors[t] = e.what();
          }
        });
      }
      for (auto& th : threads) {
        th.join();
      }
      for (int t = 0; t < kThreads; ++t) {
        ASSERT_EQ(errors[t], "") << preset;
        EXPECT_TRUE(at::equal(outputs[t], expected)) << preset << " thread " << t;
      }
    }
    std::filesystem::remove(path);
  }
}

TEST(LayerOps, ConvertedLayersAreOneOpCall) {
  // the op behind a converted Linear, called directly, is the layer
  SmallNet a = converted("w4a8", 1);
  const qat::nn::QuantizedState& q = a->fc->quantized_state();
  const auto args = q.args(*a->fc);
  const at::Tensor x = torch::randn({3, 32 * 4 * 4});
  torch::NoGradGuard guard;
  EXPECT_TRUE(at::equal(
      qat::quantized_linear(
          x, args.weight, args.weight_scale, args.weight_zero_point, args.bias, args.input_scale,
          args.input_zero_point, q.meta.to_list(), 32 * 4 * 4),
      a->fc->forward(x)));
  EXPECT_THROW_WITH(
      qat::quantized_linear(
          x.narrow(1, 0, 5), args.weight, args.weight_scale, args.weight_zero_point, args.bias,
          args.input_scale, args.input_zero_point, q.meta.to_list(), 32 * 4 * 4),
      "input must have in_features = 512 in its last dimension, got shape [3, 5]");
  std::vector<int64_t> newer = q.meta.to_list();
  newer[0] = qat::kFormatVersion + 1;
  EXPECT_THROW_WITH(
      qat::quantized_linear(
          x, args.weight, args.weight_scale, args.weight_zero_point, args.bias, args.input_scale,
          args.input_zero_point, newer, 32 * 4 * 4),
      "newer than the 1 this qtorchext reads");
}

TEST(LayerOps, EveryCpuKernelSetGivesTheSameOutputs) {
  // the own int16 tiles of each instruction set and oneDNN's int8 GEMM (the
  // *_vnni sets, where the CPU has them) compute the same exact sums
  const std::string previous = qat::cpu_capability();
  for (const auto& preset : {std::string("int8"), std::string("dynamic_int8")}) {
    SmallNet net = converted(preset, 3);
    qat::set_cpu_capability("default");
    const at::Tensor want = run(net);
    for (const auto& name : qat::supported_cpu_capabilities()) {
      qat::set_cpu_capability(name);
      EXPECT_TRUE(torch::equal(run(net), want)) << preset << " on " << name;
    }
  }
  qat::set_cpu_capability(previous);
  EXPECT_EQ(qat::cpu_capability(), previous);
}

