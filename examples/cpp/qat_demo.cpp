// make demo: trains a small MLP from C++ with qtorchext's fake-quant ops at
// 8, 4, 2 and 1 bits, and prints, per precision, the task loss before and
// after quantization-aware fine-tuning and the weight quantization error.
//
// Task: classify 16-dimensional points into 4 classes labelled by a fixed
// random teacher network (synthetic, no download). Weights are quantized per
// output channel with learnable scales (LSQ) at 8/4/2 bits, binarized with
// alpha = mean|w| at 1 bit; activations are fake-quantized to uint8.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "qtorchext/qtorchext.h"

namespace {

constexpr int64_t kIn = 16, kHidden = 64, kClasses = 4;

struct Data {
  torch::Tensor x, y;
};

Data make_data(int64_t n, const torch::Tensor& t1, const torch::Tensor& t2) {
  torch::Tensor x = torch::randn({n, kIn});
  torch::Tensor y = torch::relu(x.matmul(t1)).matmul(t2).argmax(1);
  return {x, y};
}

/// Fake-quantizes a weight matrix [out, in] at `bits` (1 = binary).
struct WeightQuantizer {
  int bits;
  torch::Tensor scale, zero_point;  // learnable, per output channel (bits > 1)

  WeightQuantizer(int b, const torch::Tensor& w) : bits(b) {
    if (bits > 1) {
      const double qmax = std::pow(2.0, bits - 1) - 1;
      scale = (w.detach().abs().amax(1) / qmax).clamp_min(1e-6).requires_grad_(true);
      zero_point = torch::zeros({w.size(0)}).requires_grad_(true);
    }
  }
  int64_t qmin() const {
    return -(int64_t{1} << (bits - 1));
  }
  int64_t qmax() const {
    return (int64_t{1} << (bits - 1)) - 1;
  }
  torch::Tensor operator()(const torch::Tensor& w) const {
    if (bits == 1) {
      return qat::binarize(w, w.detach().abs().mean(1), 0, 1.0);
    }
    const double grad_factor = 1.0 / std::sqrt(w.size(1) * static_cast<double>(qmax()));
    return qat::fake_quantize_learnable_per_channel_affine(
        w, scale, zero_point, 0, qmin(), qmax(), grad_factor);
  }
};

struct Mlp {
  torch::Tensor w1, b1, w2, b2;

  Mlp() {
    w1 = (torch::randn({kHidden, kIn}) / std::sqrt(double(kIn))).requires_grad_(true);
    b1 = torch::zeros({kHidden}).requires_grad_(true);
    w2 = (torch::randn({kClasses, kHidden}) / std::sqrt(double(kHidden))).requires_grad_(true);
    b2 = torch::zeros({kClasses}).requires_grad_(true);
  }

  /// Float forward, or fake-quantized with q1/q2 for the weights and uint8
  /// activations (scale from the batch range, a simple dynamic observer).
  torch::Tensor forward(
      const torch::Tensor& x,
      const WeightQuantizer* q1 = nullptr,
      const WeightQuantizer* q2 = nullptr) const {
    torch::Tensor h = torch::relu(torch::linear(x, q1 ? (*q1)(w1) : w1, b1));
    if (q1 != nullptr) {
      const double hmax = std::max(h.detach().max().item<double>(), 1e-6);
      h = qat::fake_quantize_per_tensor_affine(h, hmax / 255.0, 0, 0, 255);
    }
    return torch::linear(h, q2 ? (*q2)(w2) : w2, b2);
  }
};

double loss_of(const Mlp& m, const Data& d, const WeightQuantizer* q1, const WeightQuantizer* q2) {
  torch::NoGradGuard ng;
  return torch::cross_entropy_loss(m.forward(d.x, q1, q2), d.y).item<double>();
}

double accuracy_of(const Mlp& m, const Data& d, const WeightQuantizer* q1, const WeightQuantizer* q2) {
  torch::NoGradGuard ng;
  return m.forward(d.x, q1, q2).argmax(1).eq(d.y).to(torch::kFloat).mean().item<double>();
}

double weight_error(const torch::Tensor& w, const WeightQuantizer& q) {
  torch::NoGradGuard ng;
  return ((q(w) - w).norm() / w.norm()).item<double>();
}

}  // namespace

int main() {
  torch::manual_seed(0);
  const torch::Tensor t1 = torch::randn({kIn, 32}), t2 = torch::randn({32, kClasses});
  const Data train = make_data(8192, t1, t2), test = make_data(4096, t1, t2);

  Mlp base;
  {
    torch::optim::Adam opt({base.w1, base.b1, base.w2, base.b2}, torch::optim::AdamOptions(3e-3));
    for (int step = 0; step < 600; ++step) {
      const auto idx = torch::randint(train.x.size(0), {256}, torch::kLong);
      opt.zero_grad();
      torch::cross_entropy_loss(base.forward(train.x.index({idx})), train.y.index({idx})).backward();
      opt.step();
    }
  }
  std::printf(
      "qtorchext %s, CPU kernels: %s\n", qat::version(), qat::cpu_capability().c_str());
  std::printf(
      "FP32: test loss %.4f, accuracy %.2f%%\n\n",
      loss_of(base, test, nullptr, nullptr),
      100 * accuracy_of(base, test, nullptr, nullptr));
  std::printf(
      "%-6s | %-22s | %-22s | %s\n", "bits", "before QAT loss / acc", "after QAT loss / acc",
      "weight error ||wq-w||/||w|| (layer 1, 2)");
  for (int bits : {8, 4, 2, 1}) {
    Mlp m;
    m.w1 = base.w1.detach().clone().requires_grad_(true);
    m.b1 = base.b1.detach().clone().requires_grad_(true);
    m.w2 = base.w2.detach().clone().requires_grad_(true);
    m.b2 = base.b2.detach().clone().requires_grad_(true);
    WeightQuantizer q1(bits, m.w1), q2(bits, m.w2);
    const double loss0 = loss_of(m, test, &q1, &q2), acc0 = accuracy_of(m, test, &q1, &q2);
    // Quantizer parameters move on a slower learning rate than the weights:
    // an Adam step is about lr in size, and an 8-bit scale is ~1e-2.
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(
        std::vector<torch::Tensor>{m.w1, m.b1, m.w2, m.b2},
        std::make_unique<torch::optim::AdamOptions>(1e-3));
    if (bits > 1) {
      groups.emplace_back(
          std::vector<torch::Tensor>{q1.scale, q1.zero_point, q2.scale, q2.zero_point},
          std::make_unique<torch::optim::AdamOptions>(1e-5));
    }
    torch::optim::Adam opt(std::move(groups), torch::optim::AdamOptions(1e-3));
    for (int step = 0; step < 400; ++step) {
      const auto idx = torch::randint(train.x.size(0), {256}, torch::kLong);
      opt.zero_grad();
      torch::cross_entropy_loss(m.forward(train.x.index({idx}), &q1, &q2), train.y.index({idx}))
          .backward();
      opt.step();
      if (bits > 1) {  // keep learned scales positive, as LSQ modules do
        torch::NoGradGuard ng;
        q1.scale.clamp_(1e-6);
        q2.scale.clamp_(1e-6);
      }
    }
    std::printf(
        "%-6d | %8.4f / %6.2f%%      | %8.4f / %6.2f%%      | %.4f, %.4f\n",
        bits, loss0, 100 * acc0, loss_of(m, test, &q1, &q2), 100 * accuracy_of(m, test, &q1, &q2),
        weight_error(m.w1, q1), weight_error(m.w2, q2));
  }
  return 0;
}
