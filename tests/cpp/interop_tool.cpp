// Python <-> C++ state-dict interop helper (driven by
// tests/python/test_state_dict_interop.py):
//   interop_tool <kind> load <state.pt> <out.pt>
//       loads a state dict Python saved into the C++ module of <kind>, then
//       writes its state dict plus "__scale" / "__zero_point" (its qparams);
//   interop_tool <kind> observe <input.pt> <out.pt>
//       observes the tensor saved in <input.pt> (a dict {"x": tensor}) with a
//       fresh C++ module, then writes the same.
// Prepared (QAT) models, the same CNN (kind "prepared:<preset>"): a QAT
// checkpoint resumed in the other language:
//   interop_tool prepared:<preset> load <state.pt> <out.pt> <input.pt>
//       loads a prepared model Python saved and writes {"y": model(x)} (eval);
//   interop_tool prepared:<preset> export <input.pt> <out.pt>
//       prepares, runs one training-mode forward on x (observers, BatchNorm),
//       freezes the observers and writes the state dict plus "__y" (its eval
//       output for x).
// Converted models (the CNN below, kind "model:<preset>"):
//   interop_tool model:<preset> load <state.pt> <out.pt> <input.pt>
//       loads a converted model Python saved and writes {"y": model(x)};
//   interop_tool model:<preset> export <input.pt> <out.pt>
//       prepares, calibrates on x, converts, and writes the converted state
//       dict plus "__y" (its output for x).
#include <ATen/ATen.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/nn/modules/activation.h>

#include <fstream>
#include <iostream>
#include <iterator>

#include "qtorchext/qtorchext.h"

namespace {

std::shared_ptr<torch::nn::Module> make(const std::string& kind) {
  using qat::ObserverOptions;
  if (kind == "minmax") return qat::MinMaxObserver(ObserverOptions().quant_min(-128).quant_max(127)).ptr();
  if (kind == "moving_average") return qat::MovingAverageMinMaxObserver().ptr();
  if (kind == "per_channel") return qat::PerChannelMinMaxObserver(ObserverOptions().symmetric(true)).ptr();
  if (kind == "histogram") return qat::HistogramObserver(ObserverOptions().quant_min(-8).quant_max(7)).ptr();
  if (kind == "percentile") return qat::PercentileObserver(ObserverOptions().symmetric(true)).ptr();
  if (kind == "mse") return qat::MSEObserver(ObserverOptions().quant_min(-8).quant_max(7).ch_axis(0)).ptr();
  if (kind == "fake_quantize") return qat::FakeQuantize(qat::MovingAverageMinMaxObserver()).ptr();
  if (kind == "fake_quantize_per_channel")
    return qat::FakeQuantize(qat::MovingAveragePerChannelMinMaxObserver(
                                 ObserverOptions().quant_min(-8).quant_max(7).symmetric(true)))
        .ptr();
  if (kind == "learnable")
    return qat::LearnableFakeQuantize(qat::MovingAveragePerChannelMinMaxObserver(
                                          ObserverOptions().quant_min(-8).quant_max(7).symmetric(true)))
        .ptr();
  throw std::runtime_error("unknown kind " + kind);
}

std::tuple<at::Tensor, at::Tensor> qparams(torch::nn::Module& m) {
  if (auto* obs = qat::as_observer(m)) return obs->calculate_qparams();
  if (auto* fq = dynamic_cast<qat::FakeQuantizeImpl*>(&m)) return fq->calculate_qparams();
  if (auto* lfq = dynamic_cast<qat::LearnableFakeQuantizeImpl*>(&m)) return lfq->calculate_qparams();
  throw std::runtime_error("no qparams");
}

/// The model of tests/python/test_state_dict_interop.py, written as LibTorch
/// users write models: typed members called in forward.
struct NetImpl : torch::nn::Module {
  qat::nn::Conv2d conv{nullptr};
  qat::nn::BatchNorm2d bn{nullptr};
  torch::nn::ReLU relu{nullptr};
  qat::nn::Conv2d conv2{nullptr};
  qat::nn::Linear fc{nullptr};
  NetImpl() {
    conv = register_module("conv", qat::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 3).padding(1)));
    bn = register_module("bn", qat::nn::BatchNorm2d(16));
    relu = register_module("relu", torch::nn::ReLU());
    // depthwise, a channel multiplier of 2
    conv2 = register_module(
        "conv2", qat::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 3).stride(2).groups(16)));
    fc = register_module("fc", qat::nn::Linear(32 * 3 * 3, 10));
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor h = at::relu(conv2->forward(relu->forward(bn->forward(conv->forward(x)))));
    return fc->forward(h.flatten(1));
  }
};
TORCH_MODULE(Net);

Net converted_net(const std::string& preset) {
  Net net;
  qat::fuse_modules(*net, {{"conv", "bn", "relu"}});
  qat::prepare(*net, qat::QConfig::preset(preset));
  return net;
}

at::Tensor read_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return torch::jit::pickle_load(bytes).toGenericDict().at("x").toTensor();
}

}  // namespace

/// Prepared (converted = false) or converted models: "load" a state Python
/// saved and write {"y": model(x)}; "export" after one training-mode forward
/// on x (observers, BatchNorm) with the observers then frozen, the state and
/// "__y", the eval output for x that state computes.
int net_main(const std::string& preset, const std::string& mode, bool converted, char** argv) {
  if (mode == "load_quantized") {  // a fresh float model: qat::load_quantized rebuilds it
    Net net;
    qat::load_quantized(*net, argv[3]);
    torch::NoGradGuard guard;
    torch::nn::Module result;
    result.register_buffer("y", net->forward(read_input(argv[5])));
    qat::save_state_dict(result, argv[4]);
    return 0;
  }
  Net net = converted_net(preset);  // prepared
  if (mode == "load") {
    if (converted) {
      qat::convert(*net, /*allow_unobserved=*/true);  // loaded next
    }
    qat::load_state_dict(*net, argv[3]);
    net->eval();
    torch::NoGradGuard guard;
    torch::nn::Module result;
    result.register_buffer("y", net->forward(read_input(argv[5])));
    qat::save_state_dict(result, argv[4]);
    return 0;
  }
  const at::Tensor x = read_input(argv[3]);
  net->train();
  {
    torch::NoGradGuard guard;
    net->forward(x);
  }
  net->eval();
  qat::disable_observer(*net);
  if (converted) {
    qat::convert(*net);
  }
  torch::NoGradGuard guard;
  net->register_buffer("__y", net->forward(x));
  qat::save_state_dict(*net, argv[4]);
  return 0;
}

int main(int argc, char** argv) {
  const std::string kind = argc >= 2 ? argv[1] : "";
  const bool model = kind.rfind("model:", 0) == 0, prepared = kind.rfind("prepared:", 0) == 0;
  if (argc >= 3 && (model || prepared)) {
    try {
      const std::string mode = argv[2];
      if (argc != (mode == "load" || mode == "load_quantized" ? 6 : 5)) {
        std::cerr << "usage: interop_tool model:<preset>|prepared:<preset> load|load_quantized <state.pt> "
                     "<out.pt> <input.pt> | export <input.pt> <out.pt>\n";
        return 2;
      }
      return net_main(kind.substr(model ? 6 : 9), argv[2], model, argv);
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
      return 1;
    }
  }
  if (argc != 5) {
    std::cerr << "usage: interop_tool <kind> load|observe <in.pt> <out.pt>\n";
    return 2;
  }
  const std::string mode = argv[2], in = argv[3], out = argv[4];
  try {
    auto module = make(kind);
    if (mode == "load") {
      qat::load_state_dict(*module, in);
    } else {
      const at::Tensor x = read_input(in);
      if (auto* obs = qat::as_observer(*module)) {
        obs->forward(x);
      } else {
        qat::as_fake_quantize(*module)->forward(x);
      }
    }
    auto [scale, zero_point] = qparams(*module);
    module->register_buffer("__scale", scale.clone());
    module->register_buffer("__zero_point", zero_point.clone());
    qat::save_state_dict(*module, out);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
