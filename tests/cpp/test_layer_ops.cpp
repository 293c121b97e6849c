// Converted layers run one op each (qat::quantized_linear / quantized_conv /
// quantized_embedding) over their stored buffers: never stale after
// torch::load, qat::load_state_dict or copy_; the same outputs in a wider
// float dtype, an error in a narrower one; safe when many threads make the
// first call at once.
#include <gtest/gtest.h>

#include <filesystem>
#include <latch>
#include <limits>
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
  const qat::QConfig qc = qat::QConfig::preset(preset);
  qat::prepare(*net, qc, {{"type:Embedding", qc}});  // embeddings only when named
  net->train();
  if (observe) {
    torch::NoGradGuard guard;
    for (int i = 0; i < 2; ++i) {
      net->forward(torch::randn({8, 3, 6, 6}) * (1 + i), torch::randint(0, 20, {8, 5}));
    }
  }
  net->eval();
  qat::disable_observer(*net);
  qat::convert(*net, /*allow_unobserved=*/!observe);  // unobserved ones are loaded next
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

TEST(LayerOps, DtypeMovesKeepTheStoredTensorsHandCastBuffersAreCheckedByWidth) {
  for (const std::string& preset : kPresets) {
    SmallNet a = converted(preset, 1);
    const at::Tensor expected = run(a);
    // model.to(dtype): the converted layers keep their buffers' dtypes
    const auto dtypes_of = [](SmallNet& net) {
      std::vector<at::ScalarType> out;
      for (const auto& item : net->fc->named_buffers()) {
        out.push_back(item.value().scalar_type());
      }
      return out;
    };
    const auto before = dtypes_of(a);
    const at::Tensor conv_out = a->conv->forward(images());
    a->to(at::kHalf);
    EXPECT_EQ(dtypes_of(a), before) << preset;
    EXPECT_TRUE(at::equal(a->conv->forward(images()), conv_out)) << preset;  // float in, float out
    // half activations in, half out: the float32 result rounded (the embedding's rows
    // come out in the model's dtype too)
    {
      torch::NoGradGuard guard;
      const at::Tensor h = a->fc->forward(at::randn({3, 32 * 4 * 4}).to(at::kHalf));
      EXPECT_EQ(h.scalar_type(), at::kHalf) << preset;
      EXPECT_EQ(a->emb->forward(tokens()).scalar_type(), at::kHalf) << preset;
    }
    a->to(at::kFloat);
    EXPECT_TRUE(at::equal(run(a), expected)) << preset;
    // buffers cast by hand: a wider float dtype holds the same values, a narrower one
    // rounded them and is refused, naming the buffer
    torch::NoGradGuard guard;
    for (auto& item : a->fc->named_buffers()) {
      if (item.value().is_floating_point()) {
        item.value().set_data(item.value().to(at::kDouble));
      }
    }
    EXPECT_TRUE(at::equal(run(a), expected)) << preset;
    if (preset != "fp16") {  // every other preset holds float32 or bfloat16 values
      for (auto& item : a->fc->named_buffers()) {
        if (item.value().is_floating_point()) {
          item.value().set_data(item.value().to(at::kHalf));
        }
      }
      EXPECT_THROW_WITH(run(a), "is Half, but this layer");
    }
  }
}

TEST(LayerOps, LoadsRefuseBadQparamsAndLeaveTheModelAsItWas) {
  // NaN, Inf, 0 and negative scales, zero points out of range: refused by every load path
  // (qat::load_state_dict, torch::load), naming the buffer; the model keeps its outputs
  struct Bad {
    std::string buffer;
    double value;
    std::string message;
  };
  const std::vector<Bad> bad{
      {"fc.weight_scale", std::numeric_limits<double>::quiet_NaN(), "weight_scale[0, 0] is nan"},
      {"fc.weight_scale", std::numeric_limits<double>::infinity(), "scales must be finite and > 0"},
      {"conv.weight_scale", 0.0, "weight_scale[0, 0] is 0"},
      {"fc.weight_scale", -0.5, "is -0.5"},
      {"fc.input_scale", 0.0, "input_scale[0] is 0"},
      {"fc.weight_zero_point", 100.0, "outside the quantized range [-8, 7]"},
      {"conv.input_zero_point", 300.0, "outside the quantized range [0, 255]"},
  };
  {  // integer buffers only in their own dtype (a copy would wrap codes)
    SmallNet good = converted("w4a8", 7), target = converted("w4a8", 8);
    torch::NoGradGuard guard;
    auto& packed = good->fc->named_buffers()["weight_packed"];
    packed.set_data(packed.to(at::kInt) + 300);
    const std::string path = temp_path("bad_dtype.pt");
    qat::save_state_dict(*good, path);
    EXPECT_THROW_WITH(qat::load_state_dict(*target, path), "fc.weight_packed is Int in the file, but the converted layer stores it as Byte");
    torch::save(good, path);
    EXPECT_THROW_WITH(torch::load(target, path), "weight_packed is Int of shape");
    std::filesystem::remove(path);
  }
  for (const Bad& b : bad) {
    SmallNet good = converted("w4a8", 7), target = converted("w4a8", 8);
    const at::Tensor expected = run(target);
    {
      torch::NoGradGuard guard;
      good->named_buffers()[b.buffer].view(-1)[0].fill_(b.value);
    }
    const std::string path = temp_path("bad_qparams.pt");
    qat::save_state_dict(*good, path);
    SCOPED_TRACE(b.buffer);
    EXPECT_THROW_WITH(qat::load_state_dict(*target, path), b.message);
    // the layer named by its path
    const std::string layer = b.buffer.substr(0, b.buffer.find('.'));
    EXPECT_THROW_WITH(qat::load_state_dict(*target, path), "layer '" + layer + "'");
    EXPECT_TRUE(at::equal(run(target), expected)) << b.buffer;
    // torch::load reads layer by layer: the refused layer keeps its buffers
    torch::save(good, path);
    std::vector<at::Tensor> kept;
    for (const auto& item : target->named_modules()[layer]->named_buffers()) {
      kept.push_back(item.value().clone());
    }
    EXPECT_THROW_WITH(torch::load(target, path), b.message);
    size_t i = 0;
    for (const auto& item : target->named_modules()[layer]->named_buffers()) {
      EXPECT_TRUE(at::equal(item.value(), kept[i++])) << item.key();
    }
    std::filesystem::remove(path);
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
      "newer than the 2 this qtorchext reads");
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
      const at::Tensor got = run(net);
      if (name == "avx512_amx" && preset == "dynamic_int8") {
        // its convolutions are weight-only layers of 128+ rows, which this set
        // multiplies on AMX tiles: float32 sums in another order
        EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5)) << preset << " on " << name;
        continue;
      }
      EXPECT_TRUE(torch::equal(got, want)) << preset << " on " << name;
    }
  }
  qat::set_cpu_capability(previous);
  EXPECT_EQ(qat::cpu_capability(), previous);
}

