// make demo: the handwritten digits of scikit-learn (8x8 images, 10 classes),
// a small CNN trained in floating point from C++, then quantized to int8,
// w4a8, w2a8 and w1a8 two ways:
//   PTQ - the trained float weights, activation ranges calibrated on the
//         training images, converted (no training);
//   QAT - the same start, fine-tuned with fake quantization, converted.
// Prints accuracy on held-out images, converted model bytes and CPU latency
// per batch of 64 for every model. examples/python/qat_digits.py does the
// same with the Python API and prints the same numbers for the same seed.
//
// usage: qat_demo <digits.pt>   (written by examples/python/export_digits.py)
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>

#include <torch/csrc/jit/serialization/pickle.h>

#include "qtorchext/qtorchext.h"

namespace {

/// A model written as LibTorch's examples write them; qat::nn layers are the
/// drop-in replacements of torch::nn's (float until qat::prepare).
struct NetImpl : torch::nn::Module {
  qat::nn::Conv2d conv1{nullptr};
  qat::nn::BatchNorm2d bn1{nullptr};
  torch::nn::ReLU relu1{nullptr};
  qat::nn::Conv2d conv2{nullptr};
  torch::nn::ReLU relu2{nullptr};
  qat::nn::Linear fc1{nullptr};
  torch::nn::ReLU relu3{nullptr};
  qat::nn::Linear fc2{nullptr};

  NetImpl() {
    conv1 = register_module("conv1", qat::nn::Conv2d(torch::nn::Conv2dOptions(1, 32, 3).padding(1)));
    bn1 = register_module("bn1", qat::nn::BatchNorm2d(32));
    relu1 = register_module("relu1", torch::nn::ReLU());
    conv2 = register_module("conv2", qat::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).stride(2)));
    relu2 = register_module("relu2", torch::nn::ReLU());
    fc1 = register_module("fc1", qat::nn::Linear(64 * 3 * 3, 128));
    relu3 = register_module("relu3", torch::nn::ReLU());
    fc2 = register_module("fc2", qat::nn::Linear(128, 10));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor h = relu1->forward(bn1->forward(conv1->forward(x)));
    h = relu2->forward(conv2->forward(h));
    h = relu3->forward(fc1->forward(h.flatten(1)));
    return fc2->forward(h);
  }
};
TORCH_MODULE(Net);

struct Split {
  torch::Tensor train_x, train_y, test_x, test_y;
};

Split load_digits(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "qat_demo: cannot open ", path, " (write it with examples/python/export_digits.py)");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto dict = torch::jit::pickle_load(bytes).toGenericDict();
  const torch::Tensor images = dict.at("images").toTensor();
  const torch::Tensor labels = dict.at("labels").toTensor();
  const torch::Tensor perm = torch::randperm(images.size(0));
  const int64_t n_test = 360;
  const torch::Tensor test = perm.slice(0, 0, n_test), train = perm.slice(0, n_test);
  return {images.index_select(0, train), labels.index_select(0, train), images.index_select(0, test),
          labels.index_select(0, test)};
}

void train(Net& net, const Split& d, int epochs, double lr, int freeze_bn_after = -1) {
  torch::optim::SGD opt(net->parameters(), torch::optim::SGDOptions(lr).momentum(0.9));
  const int64_t n = d.train_x.size(0), batch = 32;
  net->train();
  for (int epoch = 0; epoch < epochs; ++epoch) {
    if (epoch == freeze_bn_after) {
      qat::freeze_bn_stats(*net);
    }
    const torch::Tensor order = torch::randperm(n);
    for (int64_t i = 0; i < n; i += batch) {
      const torch::Tensor idx = order.slice(0, i, std::min(i + batch, n));
      opt.zero_grad();
      torch::Tensor loss =
          torch::cross_entropy_loss(net->forward(d.train_x.index_select(0, idx)), d.train_y.index_select(0, idx));
      loss.backward();
      opt.step();
    }
  }
  net->eval();
}

double accuracy(Net& net, const torch::Tensor& x, const torch::Tensor& y) {
  torch::NoGradGuard guard;
  net->eval();
  return net->forward(x).argmax(1).eq(y).to(torch::kDouble).mean().item<double>() * 100.0;
}

int64_t model_bytes(torch::nn::Module& m) {
  int64_t bytes = 0;
  for (const auto& p : m.named_parameters()) bytes += p.value().numel() * p.value().element_size();
  for (const auto& b : m.named_buffers()) bytes += b.value().numel() * b.value().element_size();
  return bytes;
}

/// Median milliseconds of one forward pass over a batch of 64 images, for
/// each model: 5 rounds over all models of 40 timed passes each (after 5
/// untimed ones), so that drift in the machine's speed reaches all alike.
std::vector<double> latency_ms(std::vector<Net>& nets, const torch::Tensor& x) {
  torch::NoGradGuard guard;
  const torch::Tensor batch = x.slice(0, 0, 64).contiguous();
  std::vector<std::vector<double>> times(nets.size());
  for (int round = 0; round < 5; ++round) {
    for (size_t m = 0; m < nets.size(); ++m) {
      for (int i = 0; i < 5; ++i) nets[m]->forward(batch);
      for (int i = 0; i < 40; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        nets[m]->forward(batch);
        times[m].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
    }
  }
  std::vector<double> medians;
  for (auto& t : times) {
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

/// A fresh model holding `src`'s float weights and BatchNorm statistics.
Net copy_of(Net& src) {
  Net dst;
  torch::NoGradGuard guard;
  const auto params = src->named_parameters();
  const auto buffers = src->named_buffers();
  for (auto& p : dst->named_parameters()) p.value().copy_(params[p.key()]);
  for (auto& b : dst->named_buffers()) b.value().copy_(buffers[b.key()]);
  return dst;
}

/// Every layer at the preset's precision, the first and the last included
/// (a per-module QConfigMap could keep them at int8).
void prepare(Net& net, const std::string& preset) {
  qat::fuse_modules(*net, {{"conv1", "bn1", "relu1"}, {"conv2", "relu2"}, {"fc1", "relu3"}});
  qat::prepare(*net, qat::QConfig::preset(preset));
}

struct Row {
  std::string run, config;
  double accuracy;
  int64_t bytes;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: qat_demo <digits.pt>\n");
    return 2;
  }
  try {
    torch::manual_seed(0);
    const Split d = load_digits(argv[1]);
    std::printf(
        "digits: %lld training and %lld test images, 8x8; CPU threads: %d\n\n",
        static_cast<long long>(d.train_x.size(0)), static_cast<long long>(d.test_x.size(0)), at::get_num_threads());

    Net fp32;
    train(fp32, d, 20, 0.05);
    std::vector<Row> rows{{"FP32", "float", accuracy(fp32, d.test_x, d.test_y), model_bytes(*fp32)}};
    std::vector<Net> nets{fp32};

    const std::vector<std::string> configs{"int8", "w4a8", "w2a8", "w1a8"};
    for (size_t c = 0; c < configs.size(); ++c) {
      // PTQ: calibrate the observers on the training images, no training.
      Net ptq = copy_of(fp32);
      prepare(ptq, configs[c]);
      ptq->eval();
      {
        torch::NoGradGuard guard;
        for (int64_t i = 0; i < d.train_x.size(0); i += 256) ptq->forward(d.train_x.slice(0, i, i + 256));
      }
      qat::disable_observer(*ptq);
      qat::convert(*ptq);
      rows.push_back({"PTQ", configs[c], accuracy(ptq, d.test_x, d.test_y), model_bytes(*ptq)});
      nets.push_back(ptq);

      // QAT: fine-tune with fake quantization from the same float weights.
      Net qat_net = copy_of(fp32);
      prepare(qat_net, configs[c]);
      torch::manual_seed(100 + static_cast<int64_t>(c));
      train(qat_net, d, 8, 0.01, /*freeze_bn_after=*/5);
      qat::disable_observer(*qat_net);
      qat::convert(*qat_net);
      rows.push_back({"QAT", configs[c], accuracy(qat_net, d.test_x, d.test_y), model_bytes(*qat_net)});
      nets.push_back(qat_net);
    }
    const std::vector<double> ms = latency_ms(nets, d.test_x);
    std::printf("| run  | config | accuracy %% |   bytes | ratio | ms / batch of 64 |\n");
    std::printf("|------|--------|-----------:|--------:|------:|-----------------:|\n");
    for (size_t i = 0; i < rows.size(); ++i) {
      std::printf(
          "| %-4s | %-6s | %10.2f | %7lld | %5.3f | %16.3f |\n", rows[i].run.c_str(), rows[i].config.c_str(),
          rows[i].accuracy, static_cast<long long>(rows[i].bytes), double(rows[i].bytes) / rows[0].bytes, ms[i]);
    }
    std::printf(
        "\nint8: int8 weights per channel, uint8 activations per tensor; w4a8 / w2a8 / w1a8:\n"
        "4-bit / 2-bit / binary (+-alpha) weights per channel, uint8 activations; all four\n"
        "layers quantized. bytes: the model's state dict; ratio: to FP32.\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qat_demo: %s\n", e.what());
    return 1;
  }
  return 0;
}
