// Mixed precision under a size budget (include/qtorchext/mixed_precision.h).
// The knapsack and the frontier serve both frontends (Python calls them
// through qtorchext._C); the sensitivity passes are the twin of
// python/qtorchext/mixed_precision.py.
#include "qtorchext/mixed_precision.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/utils.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/ptq.h"

namespace qat {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void check_table(const std::vector<std::vector<double>>& error, const std::vector<std::vector<int64_t>>& bytes) {
  TORCH_CHECK(!error.empty(), "qat::choose_precisions: no layers");
  TORCH_CHECK(
      error.size() == bytes.size(), "qat::choose_precisions: error has ", error.size(), " layers, bytes ",
      bytes.size());
  for (size_t l = 0; l < error.size(); ++l) {
    TORCH_CHECK(
        !error[l].empty() && error[l].size() == bytes[l].size(), "qat::choose_precisions: layer ", l, " has ",
        error[l].size(), " errors and ", bytes[l].size(), " sizes (at least one option each, as many sizes)");
    for (int64_t b : bytes[l]) {
      TORCH_CHECK(b >= 0, "qat::choose_precisions: layer ", l, " has a negative size ", b);
    }
  }
}

int64_t total(const std::vector<std::vector<int64_t>>& bytes, bool largest) {
  int64_t t = 0;
  for (const auto& row : bytes) {
    t += largest ? *std::max_element(row.begin(), row.end()) : *std::min_element(row.begin(), row.end());
  }
  return t;
}

}  // namespace

PrecisionChoice choose_precisions(
    const std::vector<std::vector<double>>& error,
    const std::vector<std::vector<int64_t>>& bytes,
    int64_t budget_bytes,
    int64_t buckets) {
  check_table(error, bytes);
  TORCH_CHECK(buckets > 0, "qat::choose_precisions: buckets must be positive, got ", buckets);
  const int64_t smallest = total(bytes, false);
  TORCH_CHECK(
      budget_bytes >= smallest, "qat::choose_precisions: the budget of ", budget_bytes,
      " bytes is below the smallest possible total, ", smallest,
      " bytes (every layer at its smallest candidate)");
  const size_t n = error.size();
  // Costs in units of budget / buckets, rounded up: a choice that fits in
  // units fits in bytes.
  const int64_t unit = std::max<int64_t>(1, (budget_bytes + buckets - 1) / buckets);
  // Rounding up adds less than one unit per layer: the table runs n units past
  // the budget, and the choices found there are kept only if their exact bytes
  // fit (those within budget / unit units always do).
  const int64_t safe = budget_bytes / unit;
  const int64_t cap = safe + static_cast<int64_t>(n);
  auto cost = [&](size_t l, size_t c) { return (bytes[l][c] + unit - 1) / unit; };
  auto err = [&](size_t l, size_t c) { return std::isnan(error[l][c]) ? kInf : error[l][c]; };
  // best[u]: the least error of the layers so far within u units; ok[u]: reachable.
  std::vector<double> best(cap + 1, 0.0), next(cap + 1);
  std::vector<char> ok(cap + 1, 1), next_ok(cap + 1);
  std::vector<std::vector<int16_t>> pick(n, std::vector<int16_t>(cap + 1, -1));
  for (size_t l = 0; l < n; ++l) {
    std::fill(next.begin(), next.end(), kInf);
    std::fill(next_ok.begin(), next_ok.end(), 0);
    for (int64_t u = 0; u <= cap; ++u) {
      for (size_t c = 0; c < error[l].size(); ++c) {
        const int64_t k = cost(l, c);
        if (k > u || !ok[u - k]) {
          continue;
        }
        const double e = best[u - k] + err(l, c);
        if (!next_ok[u] || e < next[u]) {
          next[u] = e;
          next_ok[u] = 1;
          pick[l][u] = static_cast<int16_t>(c);
        }
      }
    }
    std::swap(best, next);
    std::swap(ok, next_ok);
  }
  auto backtrack = [&](int64_t u) {
    std::vector<int64_t> option(n);
    for (size_t l = n; l-- > 0;) {
      option[l] = pick[l][u];
      u -= cost(l, static_cast<size_t>(option[l]));
    }
    return option;
  };
  auto exact_bytes = [&](const std::vector<int64_t>& option) {
    int64_t b = 0;
    for (size_t l = 0; l < n; ++l) {
      b += bytes[l][option[l]];
    }
    return b;
  };
  PrecisionChoice out;
  bool found = false;
  for (int64_t u = cap; u >= 0 && (u >= safe || !found); --u) {
    if (!ok[u] || (found && best[u] >= out.error)) {
      continue;
    }
    std::vector<int64_t> option = backtrack(u);
    if (exact_bytes(option) <= budget_bytes) {
      out.option = std::move(option);
      out.error = best[u];
      found = true;
    }
  }
  if (!found) {  // rounding left no choice: the smallest option of every layer
    out.option.assign(n, 0);
    for (size_t l = 0; l < n; ++l) {
      out.option[l] = std::min_element(bytes[l].begin(), bytes[l].end()) - bytes[l].begin();
    }
  }
  out.error = 0;
  for (size_t l = 0; l < n; ++l) {
    out.bytes += bytes[l][out.option[l]];
    out.error += err(l, out.option[l]);
  }
  TORCH_INTERNAL_ASSERT(out.bytes <= budget_bytes, "choose_precisions exceeded the budget");
  return out;
}

std::vector<std::pair<int64_t, double>> precision_frontier(
    const std::vector<std::vector<double>>& error,
    const std::vector<std::vector<int64_t>>& bytes,
    int64_t points) {
  check_table(error, bytes);
  TORCH_CHECK(points >= 2, "qat::precision_frontier: points must be at least 2, got ", points);
  const int64_t lo = total(bytes, false), hi = total(bytes, true);
  std::vector<std::pair<int64_t, double>> out;
  for (int64_t i = 0; i < points; ++i) {
    const int64_t budget = lo + (hi - lo) * i / (points - 1);
    const PrecisionChoice c = choose_precisions(error, bytes, budget, 1024);
    if (out.empty() || c.bytes != out.back().first || c.error != out.back().second) {
      out.emplace_back(c.bytes, c.error);
    }
  }
  return out;
}

std::string frontier_svg(
    const std::vector<std::pair<int64_t, double>>& frontier,
    const std::vector<std::tuple<std::string, int64_t, double>>& uniform,
    const PrecisionChoice& chosen,
    int64_t float_bytes,
    double budget) {
  constexpr double kLeft = 70, kTop = 40, kW = 520, kH = 320;
  double emin = kInf, emax = 0, xmax = 0;
  auto consider = [&](int64_t b, double e) {
    if (std::isfinite(e) && e > 0) {
      emin = std::min(emin, e), emax = std::max(emax, e);
    }
    xmax = std::max(xmax, static_cast<double>(b) / static_cast<double>(float_bytes));
  };
  for (const auto& [b, e] : frontier) consider(b, e);
  for (const auto& [_, b, e] : uniform) consider(b, e);
  consider(chosen.bytes, chosen.error);
  if (!(emin < kInf)) {
    emin = 1e-6, emax = 1;
  }
  const double l0 = std::floor(std::log10(emin)), l1 = std::max(l0 + 1, std::ceil(std::log10(emax)));
  xmax = std::max(xmax, budget) * 1.08;
  auto px = [&](int64_t b) { return kLeft + kW * (static_cast<double>(b) / static_cast<double>(float_bytes)) / xmax; };
  auto py = [&](double e) {
    const double v = std::log10(std::max(e, std::pow(10.0, l0)));
    return kTop + kH - kH * (v - l0) / (l1 - l0);
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" font-family=\"sans-serif\" "
      "font-size=\"10\">\n<text x=\"{:.0f}\" y=\"20\" font-size=\"13\">Mixed precision: size against estimated "
      "error</text>\n",
      kLeft + kW + 140, kTop + kH + 50, kLeft);
  for (double l = l0; l <= l1; l += 1) {
    const double y = py(std::pow(10.0, l));
    svg += fmt::format(
        "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#ddd\"/><text x=\"{:.1f}\" "
        "y=\"{:.1f}\" text-anchor=\"end\">1e{:.0f}</text>\n",
        kLeft, y, kLeft + kW, y, kLeft - 4, y + 3, l);
  }
  for (int t = 0; t <= 5; ++t) {
    const double f = xmax * t / 5, x = kLeft + kW * t / 5;
    svg += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{:.2f}</text>\n", x, kTop + kH + 14, f);
  }
  svg += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">bytes / float bytes</text>\n<text "
      "transform=\"translate(14,{:.1f}) rotate(-90)\" text-anchor=\"middle\">estimated relative output "
      "error</text>\n",
      kLeft + kW / 2, kTop + kH + 32, kTop + kH / 2);
  const double bx = kLeft + kW * budget / xmax;
  svg += fmt::format(
      "<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>"
      "<text x=\"{:.1f}\" y=\"{:.1f}\">budget {:.2f}</text>\n",
      bx, kTop, bx, kTop + kH, bx + 3, kTop + 10, budget);
  std::string path;
  for (const auto& [b, e] : frontier) {
    path += fmt::format("{}{:.1f},{:.1f} ", path.empty() ? "M" : "L", px(b), py(e));
  }
  svg += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\"/>\n", path);
  for (const auto& [name, b, e] : uniform) {
    svg += fmt::format(
        "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"#888\"/><text x=\"{:.1f}\" y=\"{:.1f}\">{}</text>\n",
        px(b), py(e), px(b) + 5, py(e) - 4, name);
  }
  svg += fmt::format(
      "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"5\" fill=\"#d62728\"/><text x=\"{:.1f}\" y=\"{:.1f}\" "
      "fill=\"#d62728\">chosen</text>\n",
      px(chosen.bytes), py(chosen.error), px(chosen.bytes) + 7, py(chosen.error) + 12);
  return svg + "</svg>\n";
}

namespace {

void print_progress(size_t done, size_t total) {
  std::fputs(fmt::format("\rmixed precision {}/{}", done, total).c_str(), stderr);
  if (done == total) {
    std::fputs("\n", stderr);
  }
  std::fflush(stderr);
}

void switch_layer(nn::QuantizableLayer* layer, bool on) {
  for (torch::nn::Module* q : {layer->input_quantizer(), layer->weight_quantizer()}) {
    if (auto* f = dynamic_cast<FakeQuantizeInterface*>(q)) {
      f->enable_fake_quant(on);
    }
  }
}

}  // namespace

MixedPrecisionPlan detail::mixed_precision_impl(
    torch::nn::Module& model,
    const std::function<std::shared_ptr<torch::nn::Module>()>& clone,
    const Runner& run,
    const std::vector<at::Tensor>& batches,
    const MixedPrecisionOptions& options) {
  constexpr const char* fn = "qat::mixed_precision";
  TORCH_CHECK(
      std::isfinite(options.budget()) && options.budget() > 0, fn,
      ": budget (quantized bytes / float bytes) must be a positive number, got ", options.budget());
  TORCH_CHECK(!options.candidates().empty(), fn, ": candidates is empty: name at least one preset");
  TORCH_CHECK(!batches.empty(), fn, ": batches is empty: the sensitivities need calibration inputs");
  TORCH_CHECK(
      options.plot_path().empty() || (options.plot_path().size() > 4 &&
                                      options.plot_path().compare(options.plot_path().size() - 4, 4, ".svg") == 0),
      fn, ": plot_path must name an .svg file, got '", options.plot_path(), "'");
  std::vector<QConfig> qconfigs;
  for (const auto& name : options.candidates()) {
    try {
      qconfigs.push_back(ptq_qconfig(name, options.group_size()));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, fn, ": candidate '", name, "': ", e.what_without_backtrace());
    }
  }
  torch::NoGradGuard no_grad;
  // The float model's outputs (the model itself runs only here, in eval mode).
  const bool training = model.is_training();
  model.eval();
  std::vector<at::Tensor> refs;
  for (const auto& x : batches) {
    refs.push_back(run(model, x).detach().to(at::kDouble));
  }
  model.train(training);
  double signal = 0;
  for (const auto& r : refs) {
    signal += r.square().sum().item<double>();
  }
  TORCH_CHECK(std::isfinite(signal) && signal > 0, fn, ": the float model's outputs are all zero or not finite on the batches");
  const LayerFilter linear_only = [](const torch::nn::Module& m) { return is_layer_kind(m, "Linear", fn); };

  std::vector<std::string> paths;
  std::map<std::string, int64_t> float_bytes;
  std::vector<std::vector<double>> error;
  std::vector<std::vector<int64_t>> bytes;
  const size_t n_cand = qconfigs.size();
  for (size_t c = 0; c < n_cand; ++c) {
    std::shared_ptr<torch::nn::Module> m = clone();
    try {
      prepare_layers(*m, qconfigs[c], {}, linear_only, "");
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, fn, ": candidate '", options.candidates()[c], "': ", e.what_without_backtrace());
    }
    m->eval();
    std::vector<std::pair<std::string, nn::QuantizableLayer*>> layers;
    for (const auto& item : m->named_modules()) {
      auto* layer = dynamic_cast<nn::QuantizableLayer*>(item.value().get());
      if (layer != nullptr && layer->stage() == nn::Stage::kQat) {
        layers.emplace_back(item.key(), layer);
        layer->ensure_weight_qparams(dynamic_cast<nn::LinearImpl&>(*item.value()).weight);
      }
    }
    if (c == 0) {
      for (const auto& [path, _] : layers) {
        paths.push_back(path);
      }
      error.assign(paths.size(), std::vector<double>(n_cand));
      bytes.assign(paths.size(), std::vector<int64_t>(n_cand));
    }
    TORCH_CHECK(layers.size() == paths.size(), fn, ": candidate '", options.candidates()[c], "' prepared ", layers.size(), " layers, the first ", paths.size());
    // Activation ranges from the float activations, then one layer at a time.
    disable_fake_quant(*m);
    std::set<const nn::QuantizableLayer*> reached;
    {
      const nn::detail::InputRecorder record = [&](const nn::QuantizableLayer* l, const at::Tensor&) {
        reached.insert(l);
      };
      const nn::detail::InputRecorder* previous = nn::detail::set_input_recorder(&record);
      try {
        for (const auto& x : batches) {
          run(*m, x);
        }
      } catch (...) {
        nn::detail::set_input_recorder(previous);
        throw;
      }
      nn::detail::set_input_recorder(previous);
    }
    for (const auto& [path, layer] : layers) {
      TORCH_CHECK(
          reached.count(layer) != 0, fn, ": the batches never reach layer '", path,
          "': its sensitivity cannot be measured; pass batches that run it");
    }
    disable_observer(*m);
    for (size_t l = 0; l < layers.size(); ++l) {
      switch_layer(layers[l].second, true);
      double noise = 0;
      for (size_t b = 0; b < batches.size(); ++b) {
        noise += (run(*m, batches[b]).detach().to(at::kDouble) - refs[b]).square().sum().item<double>();
      }
      switch_layer(layers[l].second, false);
      error[l][c] = noise / signal;
      if (options.progress()) {
        print_progress(c * layers.size() + l + 1, n_cand * layers.size());
      }
    }
    enable_fake_quant(*m);
    convert(*m, /*allow_unobserved=*/true);
    const auto mods = m->named_modules();
    for (size_t l = 0; l < paths.size(); ++l) {
      bytes[l][c] = module_bytes(*mods[paths[l]]);
    }
  }
  const auto originals = model.named_modules();
  int64_t float_total = 0;
  for (const auto& p : paths) {
    float_bytes[p] = module_bytes(*originals[p]);
    float_total += float_bytes[p];
  }
  const auto budget_bytes = static_cast<int64_t>(std::floor(options.budget() * static_cast<double>(float_total)));
  PrecisionChoice choice;
  try {
    choice = choose_precisions(error, bytes, budget_bytes);
  } catch (const c10::Error& e) {
    TORCH_CHECK(
        false, fn, ": budget ", options.budget(), " (", budget_bytes, " of ", float_total,
        " float bytes) cannot be met: ", e.what_without_backtrace());
  }
  MixedPrecisionPlan plan;
  plan.qconfig[""] = std::nullopt;
  for (size_t l = 0; l < paths.size(); ++l) {
    const size_t c = static_cast<size_t>(choice.option[l]);
    plan.qconfig[paths[l]] = qconfigs[c];
    plan.presets[paths[l]] = options.candidates()[c];
    LayerPrecision lp;
    lp.layer = paths[l];
    lp.preset = options.candidates()[c];
    lp.bytes = bytes[l][c];
    lp.float_bytes = float_bytes[paths[l]];
    for (size_t k = 0; k < n_cand; ++k) {
      lp.error[options.candidates()[k]] = error[l][k];
      lp.candidate_bytes[options.candidates()[k]] = bytes[l][k];
    }
    plan.layers.push_back(lp);
  }
  plan.bytes = choice.bytes;
  plan.float_bytes = float_total;
  plan.error = choice.error;
  if (!options.plot_path().empty()) {
    std::vector<std::tuple<std::string, int64_t, double>> uniform;
    for (size_t k = 0; k < n_cand; ++k) {
      int64_t b = 0;
      double e = 0;
      for (size_t l = 0; l < paths.size(); ++l) {
        b += bytes[l][k], e += error[l][k];
      }
      uniform.emplace_back(options.candidates()[k], b, e);
    }
    write_file_atomically(
        options.plot_path(), frontier_svg(precision_frontier(error, bytes), uniform, choice, float_total, options.budget()),
        "qat::mixed_precision: plot_path");
  }
  return plan;
}

}  // namespace qat
