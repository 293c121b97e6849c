// Post-training quantization entry points (include/qtorchext/ptq.h).
#include "qtorchext/ptq.h"

#include <cstdio>

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/nn/modules/linear.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/observer.h"

namespace qat {
namespace {

bool is_linear(const torch::nn::Module& m) {
  return dynamic_cast<const nn::LinearImpl*>(&m) != nullptr ||
      dynamic_cast<const torch::nn::LinearImpl*>(&m) != nullptr;
}

QConfig dynamic_qconfig(const std::string& name, std::optional<int64_t> group_size) {
  if (name == "int8") {
    TORCH_CHECK(!group_size.has_value(), "qat::quantize_dynamic: group_size does not apply to int8");
    return QConfig::preset("dynamic_int8");
  }
  if (name == "int4_weight_only" || name == "int2_weight_only") {
    // No training follows: search each group's range for the least squared
    // error (MSEObserver) instead of taking min / max.
    QConfig::preset(name, group_size);  // validates group_size
    return QConfig{ModuleFactory(), weight_only_weight(name[3] == '4' ? 4 : 2, group_size.value_or(32), true)};
  }
  if (name == "fp16" || name == "bf16") {
    TORCH_CHECK(!group_size.has_value(), "qat::quantize_dynamic: group_size does not apply to ", name);
    const at::ScalarType dtype = name == "fp16" ? at::kHalf : at::kBFloat16;
    return QConfig{ModuleFactory(), [dtype] { return FloatFakeQuantize(dtype).ptr(); }};
  }
  TORCH_CHECK(
      false, "qat::quantize_dynamic: qconfig must be one of int8, int4_weight_only, int2_weight_only, "
      "fp16, bf16, got '", name, "'");
}

}  // namespace

int64_t quantize_dynamic(torch::nn::Module& model, const std::string& qconfig, std::optional<int64_t> group_size) {
  const QConfig qc = dynamic_qconfig(qconfig, group_size);
  const bool training = model.is_training();
  const int64_t n = detail::prepare_layers(model, qc, {}, is_linear);
  model.eval();
  convert(model);
  model.train(training);
  return n;
}

QConfig static_qconfig(const std::string& name) {
  QConfig qc = QConfig::preset(name);
  if (name == "int8" || name == "w4a8" || name == "w2a8" || name == "w1a8") {
    qc.activation = [] {
      return FakeQuantize(HistogramObserver(ObserverOptions().quant_min(0).quant_max(255))).ptr();
    };
  }
  return qc;
}

int64_t prepare_ptq(torch::nn::Module& model, const std::string& qconfig, const QConfigMap& per_module) {
  return prepare_ptq(model, static_qconfig(qconfig), per_module);
}

int64_t prepare_ptq(torch::nn::Module& model, const QConfig& qconfig, const QConfigMap& per_module) {
  const int64_t n = prepare(model, qconfig, per_module);
  model.eval();
  return n;
}

void detail::print_progress(size_t done, size_t total) {
  constexpr size_t kWidth = 30;
  const size_t filled = total ? done * kWidth / total : kWidth;
  std::fputs(
      fmt::format("\rcalibrate [{}{}] {}/{}", std::string(filled, '#'), std::string(kWidth - filled, ' '), done, total)
          .c_str(),
      stderr);
  if (done == total) {
    std::fputs("\n", stderr);
  }
  std::fflush(stderr);
}

}  // namespace qat
