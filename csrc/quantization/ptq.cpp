// Post-training quantization entry points (include/qtorchext/ptq.h).
#include "qtorchext/ptq.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/nn/modules/linear.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/observer.h"

namespace qat {
namespace {

/// The layer kinds quantize_dynamic converts, by name (Python: layer types).
detail::LayerFilter layer_filter(const std::vector<std::string>& layers) {
  std::vector<std::string> kinds;
  for (const auto& name : layers) {
    detail::is_layer_kind(torch::nn::Module(), name, "qat::quantize_dynamic: layers entries");
    kinds.push_back(name);
  }
  TORCH_CHECK(!kinds.empty(), "qat::quantize_dynamic: layers is empty: name at least one kind of layer");
  return [kinds](const torch::nn::Module& m) {
    return std::any_of(kinds.begin(), kinds.end(), [&](const auto& k) {
      return detail::is_layer_kind(m, k, "qat::quantize_dynamic");
    });
  };
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

/// A bar chart of the per-layer SQNRs (Python's report plot, as SVG: no
/// plotting library in C++). Infinite SQNR (an exact layer) draws a full bar
/// marked "inf"; NaN / -inf draw none.
std::string sqnr_svg(const std::vector<LayerReport>& rows) {
  constexpr double kBar = 22, kGap = 6, kLeft = 60, kTop = 40, kPlot = 260, kLabels = 160;
  double top = 1;
  for (const auto& r : rows) {
    if (std::isfinite(r.sqnr_db)) {
      top = std::max(top, r.sqnr_db);
    }
  }
  top = std::ceil(top / 10) * 10;
  const double width = std::max(480.0, kLeft + static_cast<double>(rows.size()) * (kBar + kGap) + 20);
  const double height = kTop + kPlot + kLabels;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
      "font-family=\"sans-serif\" font-size=\"10\">\n"
      "<text x=\"{:.0f}\" y=\"20\" font-size=\"13\">Per-layer SQNR of the quantized model "
      "against float</text>\n",
      width, height, kLeft);
  for (int t = 0; t <= 5; ++t) {  // y axis ticks
    const double v = top * t / 5, y = kTop + kPlot - kPlot * t / 5;
    svg += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>"
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{:.0f}</text>\n",
        kLeft, y, width - 20, y, kLeft - 4, y + 3, v);
  }
  svg += fmt::format(
      "<text transform=\"translate(14,{:.0f}) rotate(-90)\" text-anchor=\"middle\">SQNR (dB)"
      "</text>\n",
      kTop + kPlot / 2);
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    const double x = kLeft + static_cast<double>(i) * (kBar + kGap) + kGap / 2;
    const bool inf = std::isinf(r.sqnr_db) && r.sqnr_db > 0;
    const double v = inf ? top : (std::isfinite(r.sqnr_db) ? std::clamp(r.sqnr_db, 0.0, top) : 0.0);
    const double h = kPlot * v / top;
    svg += fmt::format(
        "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.0f}\" height=\"{:.1f}\" fill=\"#1f77b4\">"
        "<title>{}: {:.2f} dB ({})</title></rect>\n",
        x, kTop + kPlot - h, kBar, h, xml_escape(r.layer), r.sqnr_db, xml_escape(r.precision));
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" font-size=\"8\">{}</text>\n",
        x + kBar / 2, kTop + kPlot - h - 3, inf ? std::string("inf") : fmt::format("{:.1f}", r.sqnr_db));
    svg += fmt::format(
        "<text transform=\"translate({:.1f},{:.1f}) rotate(90)\" font-size=\"9\">{}</text>\n",
        x + kBar / 2 - 3, kTop + kPlot + 6, xml_escape(r.layer));
  }
  return svg + "</svg>\n";
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

int64_t quantize_dynamic(
    torch::nn::Module& model,
    const std::string& qconfig,
    std::optional<int64_t> group_size,
    const std::vector<std::string>& layers,
    const std::string& group_fallback) {
  return quantize_dynamic(model, dynamic_qconfig(qconfig, group_size), layers, group_fallback);
}

int64_t quantize_dynamic(
    torch::nn::Module& model,
    const QConfig& qc,
    const std::vector<std::string>& layers,
    const std::string& group_fallback) {
  const int64_t n = detail::prepare_dynamic(model, qc, layers, group_fallback);
  convert(model);
  return n;
}

int64_t detail::prepare_dynamic(
    torch::nn::Module& model,
    const std::string& qconfig,
    std::optional<int64_t> group_size,
    const std::vector<std::string>& layers,
    const std::string& group_fallback) {
  return prepare_dynamic(model, dynamic_qconfig(qconfig, group_size), layers, group_fallback);
}

int64_t detail::prepare_dynamic(
    torch::nn::Module& model,
    const QConfig& qc,
    const std::vector<std::string>& layers,
    const std::string& group_fallback) {
  const detail::LayerFilter accept = layer_filter(layers);
  TORCH_CHECK(static_cast<bool>(qc.weight), "qat::quantize_dynamic: the QConfig needs a weight quantizer");
  if (qc.activation) {
    const auto a = qc.activation();
    TORCH_CHECK(
        dynamic_cast<const DynamicFakeQuantizeImpl*>(a.get()) != nullptr,
        "qat::quantize_dynamic: the QConfig's activation must be empty or DynamicFakeQuantize, got ",
        a->name(), " (use quantize_static for calibrated ranges)");
  }
  QConfigMap by_kind;  // the kinds named are asked for (Embedding too)
  for (const auto& kind : layers) {
    by_kind["type:" + kind] = qc;
  }
  const int64_t n = detail::prepare_layers(model, qc, by_kind, accept, group_fallback);
  model.eval();  // an inference model, as torch.ao.quantization.quantize_dynamic leaves it
  return n;
}

QConfig detail::ptq_qconfig(const std::string& name, std::optional<int64_t> group_size) {
  if (name == "int4_weight_only" || name == "int2_weight_only") {
    return dynamic_qconfig(name, group_size);
  }
  if (name == "fp16" || name == "bf16") {
    return dynamic_qconfig(name, std::nullopt);
  }
  if (name == "dynamic_int8") {
    return QConfig::preset(name);
  }
  return static_qconfig(name);
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

int64_t prepare_ptq(
    torch::nn::Module& model,
    const std::string& qconfig,
    const QConfigMap& per_module,
    const std::string& group_fallback) {
  return prepare_ptq(model, static_qconfig(qconfig), per_module, group_fallback);
}

int64_t prepare_ptq(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const QConfigMap& per_module,
    const std::string& group_fallback) {
  const int64_t n = detail::prepare_layers(
      model, qconfig, per_module, [](const torch::nn::Module&) { return true; }, group_fallback);
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

int64_t detail::module_bytes(const torch::nn::Module& m) {
  int64_t bytes = 0;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) {
    bytes += p.value().numel() * p.value().element_size();
  }
  for (const auto& b : m.named_buffers(/*recurse=*/true)) {
    bytes += b.value().numel() * b.value().element_size();
  }
  return bytes;
}


std::vector<LayerReport> detail::report_impl(
    torch::nn::Module& model_fp32,
    torch::nn::Module& model_q,
    const std::function<void(const at::Tensor&)>& run_fp32,
    const std::function<void(const at::Tensor&)>& run_q,
    const std::vector<at::Tensor>& batches,
    const std::string& csv_path,
    const std::string& plot_path) {
  TORCH_CHECK(
      plot_path.empty() ||
          (plot_path.size() > 4 && plot_path.compare(plot_path.size() - 4, 4, ".svg") == 0),
      "qat::report: plot_path must name an .svg file, got '", plot_path, "'");
  // The converted layers of model_q and the float layers at the same paths.
  std::vector<std::string> names;
  std::map<const nn::QuantizableLayer*, std::string> q_name, fp_name;
  std::map<std::string, std::shared_ptr<torch::nn::Module>> q_mods, fp_mods;
  for (const auto& item : model_q.named_modules()) {
    auto* layer = dynamic_cast<const nn::QuantizableLayer*>(item.value().get());
    if (layer != nullptr && layer->stage() == nn::Stage::kQuantized) {
      names.push_back(item.key());
      q_name[layer] = item.key();
      q_mods[item.key()] = item.value();
    }
  }
  TORCH_CHECK(!names.empty(), "qat::report: model_q has no converted qtorchext layers (convert it first)");
  for (const auto& item : model_fp32.named_modules()) {
    if (q_mods.count(item.key()) != 0) {
      auto* layer = dynamic_cast<const nn::QuantizableLayer*>(item.value().get());
      TORCH_CHECK(
          layer != nullptr, "qat::report: the float model's module '", item.key(),
          "' is not a qtorchext drop-in layer (", item.value()->name(),
          "), so its output cannot be recorded; build the float model with qat::nn layers");
      fp_name[layer] = item.key();
      fp_mods[item.key()] = item.value();
    }
  }
  for (const auto& n : names) {
    TORCH_CHECK(
        fp_mods.count(n) != 0, "qat::report: the float model has no module '", n,
        "'; pass the model model_q was converted from");
  }
  std::map<std::string, at::Tensor> ref_out, q_out;
  const nn::detail::OutputRecorder to_ref = [&](const nn::QuantizableLayer* l, const at::Tensor& y) {
    if (auto it = fp_name.find(l); it != fp_name.end()) {
      ref_out[it->second] = y.detach().to(at::kDouble);
    }
  };
  const nn::detail::OutputRecorder to_q = [&](const nn::QuantizableLayer* l, const at::Tensor& y) {
    if (auto it = q_name.find(l); it != q_name.end()) {
      q_out[it->second] = y.detach().to(at::kDouble);
    }
  };
  std::map<std::string, double> signal, noise;
  std::map<std::string, bool> seen;
  {
    torch::NoGradGuard guard;
    const bool fp_training = model_fp32.is_training(), q_training = model_q.is_training();
    model_fp32.eval();
    model_q.eval();
    struct Restore {
      const nn::detail::OutputRecorder* previous;
      ~Restore() {
        nn::detail::set_output_recorder(previous);
      }
    } restore{nn::detail::output_recorder()};
    for (const at::Tensor& batch : batches) {
      ref_out.clear(), q_out.clear();
      nn::detail::set_output_recorder(&to_ref);
      run_fp32(batch);
      nn::detail::set_output_recorder(&to_q);
      run_q(batch);
      nn::detail::set_output_recorder(restore.previous);
      for (const auto& n : names) {
        auto r = ref_out.find(n), q = q_out.find(n);
        if (r != ref_out.end() && q != q_out.end()) {
          signal[n] += r->second.square().sum().item<double>();
          noise[n] += (r->second - q->second).square().sum().item<double>();
          seen[n] = true;
        }
      }
    }
    model_fp32.train(fp_training);
    model_q.train(q_training);
  }
  std::vector<LayerReport> rows;
  size_t width = 5, pwidth = 9;
  for (const auto& n : names) {
    LayerReport r;
    r.layer = n;
    auto* layer = dynamic_cast<const nn::QuantizableLayer*>(q_mods[n].get());
    r.precision = layer->quantized_state().meta.describe();
    if (!seen[n]) {
      r.sqnr_db = std::numeric_limits<double>::quiet_NaN();  // never ran on these batches
    } else if (noise[n] == 0) {
      r.sqnr_db = std::numeric_limits<double>::infinity();
    } else {
      r.sqnr_db = signal[n] > 0 ? 10 * std::log10(signal[n] / noise[n]) : -std::numeric_limits<double>::infinity();
    }
    r.bytes = detail::module_bytes(*q_mods[n]);
    r.float_bytes = detail::module_bytes(*fp_mods[n]);
    width = std::max(width, n.size());
    pwidth = std::max(pwidth, r.precision.size());
    rows.push_back(r);
  }
  std::string table = fmt::format(
      "{:<{}}  {:<{}}  {:>8}  {:>9}  {:>11}\n", "layer", width, "precision", pwidth, "SQNR dB", "bytes",
      "float bytes");
  for (const auto& r : rows) {
    table += fmt::format(
        "{:<{}}  {:<{}}  {:8.2f}  {:9d}  {:11d}\n", r.layer, width, r.precision, pwidth, r.sqnr_db,
        r.bytes, r.float_bytes);
  }
  std::fputs(table.c_str(), stdout);
  if (!csv_path.empty()) {
    std::ostringstream csv;
    csv << "layer,precision,sqnr_db,bytes,float_bytes\n";
    for (const auto& r : rows) {
      csv << r.layer << ",\"" << r.precision << "\"," << r.sqnr_db << "," << r.bytes << ","
          << r.float_bytes << "\n";
    }
    detail::write_file_atomically(csv_path, csv.str(), "qat::report: csv_path");
  }
  if (!plot_path.empty()) {
    detail::write_file_atomically(plot_path, sqnr_svg(rows), "qat::report: plot_path");
  }
  return rows;
}

void detail::write_file_atomically(const std::string& path, const std::string& text, const char* what) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out.good(), what, ": cannot write '", path, "' (opening ", tmp, " failed)");
    out << text;
    out.flush();
    if (!out.good()) {
      out.close();
      std::remove(tmp.c_str());
      TORCH_CHECK(false, what, ": writing '", tmp, "' failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    TORCH_CHECK(false, what, ": cannot move ", tmp, " to '", path, "'");
  }
}

}  // namespace qat
