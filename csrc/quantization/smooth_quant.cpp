// SmoothQuant over a LibTorch model of qtorchext drop-in layers
// (include/qtorchext/smooth_quant.h). Python twin:
// python/qtorchext/smooth_quant.py (the same statistics, factors and search;
// smooth_factors and check_smooth_factors are shared as ops, csrc/ops/smooth.cpp).
#include "qtorchext/smooth_quant.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/linear.h>
#include <torch/utils.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/ptq.h"
#include "qtorchext/quantize.h"

namespace qat {
namespace {

// alpha = "auto": at most this many input rows per layer are kept for the search
constexpr int64_t kSearchRows = 4096;

void set_quantizers(nn::LinearImpl& layer, bool fake_quant, bool observer) {
  for (const auto& m : {layer.input_fake_quant, layer.weight_fake_quant}) {
    if (m) {
      FakeQuantizeInterface* q = as_fake_quantize(*m);
      q->enable_fake_quant(fake_quant);
      q->enable_observer(observer);
    }
  }
}

/// The alpha of smooth_auto_alphas() whose smoothed copy of `layer`, quantized
/// with `qconfig` (activation observer calibrated on `rows`), gives the least
/// squared output error on `rows` (inputs as the layer's weight sees them).
double search_alpha(const nn::LinearImpl& layer, const at::Tensor& rows, const at::Tensor& absmax, const QConfig& qconfig) {
  // the copies below draw their (overwritten) initial weights: the caller's
  // random stream is left as it was
  at::Generator rng = at::detail::getDefaultCPUGenerator();
  const at::Tensor rng_state = rng.get_state();
  struct RestoreRng {
    at::Generator& g;
    const at::Tensor& state;
    ~RestoreRng() {
      g.set_state(state);
    }
  } restore{rng, rng_state};
  const at::Tensor ref = at::linear(rows, layer.weight, layer.bias).to(at::kDouble);
  double best_alpha = 0, best_error = INFINITY;
  for (const double a : smooth_auto_alphas()) {
    nn::LinearImpl copy(torch::nn::LinearOptions(layer.options).bias(layer.bias.defined()));
    copy.to(layer.weight.device(), layer.weight.scalar_type());
    copy.weight.copy_(layer.weight);
    if (layer.bias.defined()) {
      copy.bias.copy_(layer.bias);
    }
    copy.smooth(smooth_factors(absmax, layer.weight, a));
    copy.prepare(qconfig);
    set_quantizers(copy, /*fake_quant=*/false, /*observer=*/true);
    copy.forward_unrecorded(rows);
    set_quantizers(copy, /*fake_quant=*/true, /*observer=*/false);
    const double error = (copy.forward_unrecorded(rows).to(at::kDouble) - ref).pow(2).sum().item<double>();
    if (error < best_error) {  // the first of equal errors, as Python's min
      best_error = error;
      best_alpha = a;
    }
  }
  return best_alpha;
}

}  // namespace

std::vector<double> smooth_auto_alphas() {
  std::vector<double> out;
  for (int i = 0; i <= 10; ++i) {
    out.push_back(i / 10.0);
  }
  return out;
}

std::map<std::string, double> detail::smooth_quant_impl(
    torch::nn::Module& model,
    const std::function<void(size_t)>& run_batch,
    size_t n_batches,
    const SmoothQuantOptions& options) {
  const double alpha = options.alpha();
  TORCH_CHECK_VALUE(
      options.auto_alpha() || (std::isfinite(alpha) && alpha >= 0 && alpha <= 1),
      "qat::smooth_quant: SmoothQuantOptions::alpha must be in [0, 1] (the share of the activation range moved into "
      "the weights), got ",
      alpha);
  QConfig search_qconfig;
  if (options.auto_alpha()) {
    search_qconfig = ptq_qconfig(options.qconfig(), options.group_size());
    TORCH_CHECK_VALUE(
        static_cast<bool>(search_qconfig.weight), "qat::smooth_quant: qconfig '", options.qconfig(),
        "' (the quantization the auto alpha simulates) has no weight quantizer");
  }
  TORCH_CHECK_VALUE(n_batches > 0, "qat::smooth_quant: batches is empty: SmoothQuant needs calibration inputs");
  for (const std::string& name : options.layers()) {
    TORCH_CHECK_VALUE(
        std::count(options.layers().begin(), options.layers().end(), name) == 1, "qat::smooth_quant: layers names '",
        name, "' ", std::count(options.layers().begin(), options.layers().end(), name), " times");
  }
  // plain torch::nn::Linears in containers become drop-ins (as prepare does)
  const std::vector<std::string> direct = drop_in_linears(model);
  std::map<std::string, nn::LinearImpl*> linears;
  std::vector<std::string> order;
  for (const auto& item : model.named_modules()) {
    if (auto* l = dynamic_cast<nn::LinearImpl*>(item.value().get())) {
      linears.emplace(item.key(), l);
      order.push_back(item.key());
    }
  }
  std::map<const nn::QuantizableLayer*, std::string> targets;
  if (options.layers().empty()) {
    for (const auto& [name, l] : linears) {
      targets.emplace(l, name);
    }
    if (!direct.empty()) {
      std::string names;
      for (const auto& d : direct) {
        names += (names.empty() ? "'" : ", '") + d + "'";
      }
      TORCH_WARN(
          "qat::smooth_quant: ", direct.size(), " plain torch::nn::Linear(s) held directly by a module stay as they are ",
          "(declare them as qat::nn::Linear to smooth them): ", names);
    }
  } else {
    std::set<std::string> modules;
    for (const auto& item : model.named_modules()) {
      modules.insert(item.key());
    }
    order.clear();
    for (const std::string& name : options.layers()) {
      TORCH_CHECK_VALUE(
          modules.count(name) != 0, "qat::smooth_quant: layers names '", name, "', which is not a module of the model");
      TORCH_CHECK_VALUE(
          linears.count(name) != 0, "qat::smooth_quant: layers names '", name,
          "', which is not a qat::nn::Linear (SmoothQuant applies to Linear layers)");
      targets.emplace(linears.at(name), name);
      order.push_back(name);
    }
  }
  TORCH_CHECK_VALUE(!targets.empty(), "qat::smooth_quant: the model has no qat::nn::Linear to smooth");
  for (const auto& [layer, name] : targets) {
    TORCH_CHECK_VALUE(
        layer->stage() == nn::Stage::kFloat, "qat::smooth_quant: layer '", name,
        "' is already prepared or converted; smooth the float model, then quantize it");
  }

  std::map<std::string, at::Tensor> absmax;
  std::map<std::string, std::vector<at::Tensor>> kept;
  std::set<std::string> bad;
  const int64_t per_batch = std::max<int64_t>(1, (kSearchRows + static_cast<int64_t>(n_batches) - 1) / static_cast<int64_t>(n_batches));
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const nn::detail::InputRecorder record = [&](const nn::QuantizableLayer* l, const at::Tensor& input) {
    const auto it = targets.find(l);
    if (it == targets.end() || !input.defined() || input.numel() == 0) {
      return;
    }
    const auto* layer = static_cast<const nn::LinearImpl*>(l);
    if (input.size(-1) != layer->options.in_features()) {
      return;  // the layer's own forward raises the shape error
    }
    // a smoothed layer: what its weight sees
    const at::Tensor x = layer->input_smooth.defined() ? input / layer->input_smooth.to(input.scalar_type()) : input;
    const at::Tensor rows = x.detach().reshape({-1, x.size(-1)});
    const at::Tensor m = rows.abs().amax({0}).to(at::kFloat);
    if (!at::isfinite(m).all().item<bool>()) {
      bad.insert(it->second);
    }
    auto [slot, fresh] = absmax.emplace(it->second, m);
    if (!fresh) {
      slot->second = at::maximum(slot->second, m);
    }
    if (options.auto_alpha()) {
      const at::Tensor pick = at::randperm(rows.size(0), gen).slice(0, 0, per_batch).to(rows.device());
      kept[it->second].push_back(rows.index_select(0, pick).to(at::kFloat));
    }
  };
  const bool training = model.is_training();
  {
    torch::NoGradGuard no_grad;
    nn::detail::InputRecorderScope scope(&record);
    model.eval();
    try {
      for (size_t i = 0; i < n_batches; ++i) {
        run_batch(i);
      }
    } catch (...) {
      model.train(training);
      throw;
    }
    model.train(training);
  }
  for (const std::string& name : order) {
    if (targets.count(linears.at(name)) != 0) {
      TORCH_CHECK_VALUE(
          bad.count(name) == 0, "qat::smooth_quant: layer '", name, "' saw NaN or inf inputs in the calibration batches");
    }
  }
  std::vector<std::string> missing;
  for (const std::string& name : order) {
    if (targets.count(linears.at(name)) != 0 && absmax.count(name) == 0) {
      missing.push_back(name);
    }
  }
  TORCH_CHECK_VALUE(
      missing.empty(), "qat::smooth_quant: the calibration batches never reach layer '",
      missing.empty() ? "" : missing.front(), "'",
      missing.size() > 1 ? " (and " + std::to_string(missing.size() - 1) + " more)" : "",
      ": pass batches that do, or leave it out with SmoothQuantOptions::layers");

  std::map<std::string, double> alphas;
  torch::NoGradGuard no_grad;
  for (const std::string& name : order) {
    nn::LinearImpl* layer = linears.at(name);
    if (targets.count(layer) == 0) {
      continue;
    }
    const at::Tensor amax = absmax.at(name).to(layer->weight.device());
    double a = alpha;
    if (options.auto_alpha()) {
      const at::Tensor rows =
          at::cat(kept.at(name)).slice(0, 0, kSearchRows).to(layer->weight.device(), layer->weight.scalar_type());
      kept.erase(name);
      a = search_alpha(*layer, rows, amax, search_qconfig);
    }
    layer->smooth(smooth_factors(amax, layer->weight, a));
    alphas[name] = a;
  }
  return alphas;
}

}  // namespace qat
