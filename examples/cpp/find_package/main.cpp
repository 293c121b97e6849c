// A project that found qtorchext with find_package(qtorchext): fake-quantizes a
// tensor and checks it against ATen's op, then trains a small torch::nn model
// with QAT (qat::prepare), converts it to int8 (qat::convert) and checks that
// the int8 model computes what the QAT model simulated. Exits non-zero on a
// mismatch.
#include <torch/torch.h>

#include <iostream>

#include <qtorchext/qtorchext.h>

int main() {
  torch::manual_seed(0);
  const at::Tensor x = at::randn({4, 8}) * 3;
  const at::Tensor ours =
      qat::fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255);
  const at::Tensor ref =
      at::fake_quantize_per_tensor_affine(x, 0.1, 3, 0, 255);
  const bool equal = at::equal(ours, ref);
  std::cout << "qtorchext " << qat::version() << " with torch "
            << TORCH_VERSION << " (CPU kernels: " << qat::cpu_capability()
            << "): per-tensor fake quant "
            << (equal ? "equals" : "DIFFERS FROM")
            << " at::fake_quantize_per_tensor_affine\n";

  // QAT: plain torch::nn layers in a Sequential become QAT layers in place.
  torch::nn::Sequential model(
      torch::nn::Linear(12, 32), torch::nn::ReLU(), torch::nn::Linear(32, 5));
  qat::prepare(*model, qat::QConfig::preset("int8"));
  torch::optim::SGD opt(
      model->parameters(), torch::optim::SGDOptions(0.1));
  const at::Tensor in = torch::randn({128, 12});
  const at::Tensor target = torch::randn({128, 5});
  double first_loss = 0, last_loss = 0;
  for (int step = 0; step < 50; ++step) {
    opt.zero_grad();
    at::Tensor loss = torch::mse_loss(model->forward(in), target);
    loss.backward();
    opt.step();
    (step == 0 ? first_loss : last_loss) = loss.item<double>();
  }
  model->eval();
  qat::disable_observer(*model);
  torch::NoGradGuard no_grad;
  const at::Tensor simulated = model->forward(in);
  const int64_t converted = qat::convert(*model);
  const at::Tensor int8 = model->forward(in);
  const double rel =
      ((int8 - simulated).abs().max() / simulated.abs().max()).item<double>();
  const bool trained = last_loss < first_loss;
  const bool matches = converted == 2 && rel < 1e-5;
  std::cout << "QAT: loss " << first_loss << " -> " << last_loss
            << " in 50 steps; " << converted
            << " layers converted to int8; largest difference to the QAT "
            << "model " << rel << " of its largest output "
            << (matches ? "(ok)" : "(TOO LARGE)") << "\n";
  return equal && trained && matches ? 0 : 1;
}
