// QConfig presets: the same names and contents as python/qtorchext/qconfig.py.
#include "qtorchext/qconfig.h"

#include <map>

#include <c10/util/Exception.h>

#include "qtorchext/fake_quantize.h"

namespace qat {
namespace {

// Activations: uint8, per tensor, affine, moving-average min/max.
ModuleFactory uint8_activation() {
  return [] {
    return FakeQuantize(MovingAverageMinMaxObserver(
                            ObserverOptions().quant_min(0).quant_max(255).averaging_constant(0.01)))
        .ptr();
  };
}

// Weights: signed, symmetric, per output channel (axis 0) or per group, from
// the current weights (averaging_constant 1).
ModuleFactory weight(int bits, std::optional<int64_t> group_size) {
  const int64_t qmin = -(int64_t{1} << (bits - 1));
  const int64_t qmax = (int64_t{1} << (bits - 1)) - 1;
  return [=] {
    auto o = ObserverOptions().quant_min(qmin).quant_max(qmax).symmetric(true).averaging_constant(1.0);
    if (group_size.has_value()) {
      return FakeQuantize(MovingAverageMinMaxObserver(o.group_size(group_size))).ptr();
    }
    return FakeQuantize(MovingAveragePerChannelMinMaxObserver(o.ch_axis(0))).ptr();
  };
}

}  // namespace

// Weight-only weights: per group, affine (a zero point per group: int4 weights
// are rarely centred on 0), float16 scales; the observer sees the current
// weights (min / max for QAT, MSEObserver for quantize_dynamic).
ModuleFactory weight_only_weight(int bits, int64_t group_size, bool mse_search) {
  const int64_t qmin = -(int64_t{1} << (bits - 1));
  const int64_t qmax = (int64_t{1} << (bits - 1)) - 1;
  return [=] {
    auto o = ObserverOptions().quant_min(qmin).quant_max(qmax).symmetric(false).group_size(group_size);
    const auto fo = FakeQuantizeOptions().scale_dtype(at::kHalf);
    if (mse_search) {
      return FakeQuantize(MSEObserver(o), fo).ptr();
    }
    return FakeQuantize(MovingAverageMinMaxObserver(o.averaging_constant(1.0)), fo).ptr();
  };
}

namespace {

void no_groups(const std::string& name, std::optional<int64_t> group_size) {
  TORCH_CHECK(!group_size.has_value(), "qconfig preset '", name, "': group_size does not apply");
}

using Preset = std::function<QConfig(std::optional<int64_t>)>;

const std::map<std::string, Preset>& presets() {
  static const std::map<std::string, Preset> table{
      {"int8", [](auto g) { return QConfig{uint8_activation(), weight(8, g)}; }},
      {"w4a8", [](auto g) { return QConfig{uint8_activation(), weight(4, g)}; }},
      {"w2a8", [](auto g) { return QConfig{uint8_activation(), weight(2, g)}; }},
      {"w1a8",
       [](auto g) {
         no_groups("w1a8", g);
         return QConfig{
             uint8_activation(),
             [] { return BinaryFakeQuantize(BinaryFakeQuantizeOptions().ch_axis(0)).ptr(); }};
       }},
      {"int4_weight_only",
       [](auto g) { return QConfig{ModuleFactory(), weight_only_weight(4, g.value_or(32), false)}; }},
      {"int2_weight_only",
       [](auto g) { return QConfig{ModuleFactory(), weight_only_weight(2, g.value_or(32), false)}; }},
      {"dynamic_int8",
       [](auto g) {
         no_groups("dynamic_int8", g);
         ModuleFactory a = [] {
           return DynamicFakeQuantize(DynamicFakeQuantizeOptions().quant_min(-128).quant_max(127)).ptr();
         };
         return QConfig{a, weight(8, std::nullopt)};
       }},
      {"fp16",
       [](auto g) {
         no_groups("fp16", g);
         ModuleFactory f = [] { return FloatFakeQuantize(at::kHalf).ptr(); };
         return QConfig{f, f};
       }},
      {"bf16",
       [](auto g) {
         no_groups("bf16", g);
         ModuleFactory f = [] { return FloatFakeQuantize(at::kBFloat16).ptr(); };
         return QConfig{f, f};
       }},
      {"lsq_w4a4",
       [](auto g) {
         no_groups("lsq_w4a4", g);
         ModuleFactory w = [] {
           return LearnableFakeQuantize(MovingAveragePerChannelMinMaxObserver(
                                            ObserverOptions()
                                                .quant_min(-8)
                                                .quant_max(7)
                                                .symmetric(true)
                                                .ch_axis(0)
                                                .averaging_constant(1.0)))
               .ptr();
         };
         ModuleFactory a = [] {
           return LearnableFakeQuantize(
                      MovingAverageMinMaxObserver(
                          ObserverOptions().quant_min(0).quant_max(15).averaging_constant(0.01)))
               .ptr();
         };
         return QConfig{a, w};
       }},
  };
  return table;
}

}  // namespace

std::vector<std::string> QConfig::preset_names() {
  std::vector<std::string> names;
  for (const auto& [name, _] : presets()) {
    names.push_back(name);
  }
  return names;
}

QConfig QConfig::preset(const std::string& name, std::optional<int64_t> group_size) {
  const auto it = presets().find(name);
  if (it == presets().end()) {
    std::string valid;
    for (const auto& n : preset_names()) {
      valid += (valid.empty() ? "" : ", ") + n;
    }
    TORCH_CHECK(false, "unknown qconfig preset '", name, "'; valid: ", valid);
  }
  return it->second(group_size);
}

}  // namespace qat
