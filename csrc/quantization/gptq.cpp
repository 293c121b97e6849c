// GPTQ over a prepared LibTorch model (include/qtorchext/gptq.h); the
// numerics are the ops gptq_hessian_update / gptq_quantize. Python twin:
// python/qtorchext/gptq.py (the same passes and rules).
#include "qtorchext/gptq.h"

#include <cstdio>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/utils.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/ops.h"

namespace qat {
namespace {

/// Ends a calibration pass once the layers it collects for have run.
struct StopPass {};

using nn::detail::InputRecorderScope;

struct Target {
  std::string name;
  nn::LinearImpl* layer;
  FakeQuantizeImpl* quantizer;
};

void print_gptq_progress(size_t done, size_t total) {
  constexpr size_t kWidth = 30;
  const size_t filled = total ? done * kWidth / total : kWidth;
  std::fputs(
      fmt::format("\rgptq [{}{}] {}/{}", std::string(filled, '#'), std::string(kWidth - filled, ' '), done, total).c_str(),
      stderr);
  if (done == total) {
    std::fputs("\n", stderr);
  }
  std::fflush(stderr);
}

}  // namespace

int64_t detail::gptq_impl(
    torch::nn::Module& model,
    const std::function<void(size_t)>& run_batch,
    size_t n_batches,
    const GPTQOptions& options,
    bool progress,
    bool restore_observers) {
  TORCH_CHECK(n_batches > 0, "qat::gptq: batches is empty: GPTQ needs calibration inputs");
  TORCH_CHECK(
      std::isfinite(options.damp()) && options.damp() >= 0,
      "qat::gptq: GPTQOptions::damp must be finite and >= 0, got ", options.damp());
  TORCH_CHECK(options.block_size() > 0, "qat::gptq: GPTQOptions::block_size must be positive, got ", options.block_size());
  std::vector<std::pair<std::string, nn::QuantizableLayer*>> layers;
  std::map<const nn::QuantizableLayer*, Target> targets;
  std::vector<std::string> left;
  for (const auto& item : model.named_modules()) {
    auto* layer = dynamic_cast<nn::QuantizableLayer*>(item.value().get());
    if (layer == nullptr || layer->stage() != nn::Stage::kQat) {
      continue;
    }
    layers.emplace_back(item.key(), layer);
    auto* linear = dynamic_cast<nn::LinearImpl*>(item.value().get());
    auto* wq = dynamic_cast<FakeQuantizeImpl*>(layer->weight_quantizer());
    if (linear != nullptr && wq != nullptr) {
      targets[layer] = Target{item.key(), linear, wq};
    } else {
      left.push_back(fmt::format(
          "'{}' ({})", item.key(),
          linear == nullptr ? item.value()->name() + " (GPTQ applies to Linear layers)"
                            : layer->weight_quantizer()->name() + " weights (GPTQ needs an affine integer grid)"));
    }
  }
  TORCH_CHECK(!layers.empty(), "qat::gptq: the model has no QAT layers; prepare it first (qat::prepare_ptq / qat::prepare)");
  TORCH_CHECK(!targets.empty(), "qat::gptq: no layer GPTQ applies to: ", left.front());
  if (!left.empty()) {
    std::string names;
    for (const auto& l : left) {
      names += (names.empty() ? "" : ", ") + l;
    }
    TORCH_WARN("qat::gptq: ", left.size(), " layer(s) keep round to nearest: ", names);
  }

  // Every fake quantizer's switches, restored at the end.
  struct Saved {
    FakeQuantizeInterface* q;
    bool fake_quant, observer, is_weight;
  };
  // Target weight quantizers stop observing (their grids are chosen once,
  // below); other layers' weight quantizers stay as they are; activation
  // quantizers are off while collecting (float activations).
  std::set<const torch::nn::Module*> weight_quantizers, target_quantizers;
  for (const auto& [_, layer] : layers) {
    weight_quantizers.insert(layer->weight_quantizer());
  }
  for (const auto& [_, t] : targets) {
    target_quantizers.insert(t.quantizer);
  }
  std::vector<Saved> saved;
  for (const auto& m : model.modules()) {
    if (auto* q = dynamic_cast<FakeQuantizeInterface*>(m.get())) {
      if (weight_quantizers.count(m.get()) != 0 && target_quantizers.count(m.get()) == 0) {
        continue;
      }
      saved.push_back({q, q->is_fake_quant_enabled(), q->is_observer_enabled(), target_quantizers.count(m.get()) != 0});
    }
  }
  const bool training = model.is_training();
  struct Restore {
    torch::nn::Module& model;
    std::vector<Saved>& saved;
    bool training, restore_observers;
    ~Restore() {
      model.train(training);
      for (const Saved& s : saved) {
        s.q->enable_fake_quant(s.fake_quant);
        if (restore_observers || !s.is_weight) {
          s.q->enable_observer(s.observer);
        }
      }
    }
  } restore{model, saved, training, restore_observers};

  torch::NoGradGuard no_grad;
  for (const auto& [layer, t] : targets) {  // their grids chosen now, from the original weights
    layer->ensure_weight_qparams(t.layer->weight);
  }
  for (const Saved& s : saved) {
    s.q->disable_observer();
    if (!s.is_weight) {
      s.q->disable_fake_quant();  // activations in float while collecting
    }
  }
  model.eval();

  // The order the first batch runs the targets in (the rest after), and how
  // often each ran in it.
  std::vector<const nn::QuantizableLayer*> order;
  std::map<const nn::QuantizableLayer*, int> calls;
  {
    const nn::detail::InputRecorder record = [&](const nn::QuantizableLayer* l, const at::Tensor&) {
      if (targets.count(l) != 0 && calls[l]++ == 0) {
        order.push_back(l);
      }
    };
    InputRecorderScope scope(&record);
    run_batch(0);
  }
  for (const auto& [_, layer] : layers) {
    if (targets.count(layer) != 0 && calls.count(layer) == 0) {
      order.push_back(layer);
    }
  }

  std::set<const nn::QuantizableLayer*> done;
  std::vector<std::string> dead_inputs;
  for (const nn::QuantizableLayer* lead : order) {
    if (done.count(lead) != 0) {
      continue;
    }
    const Target& t = targets.at(lead);
    const int64_t k = t.layer->weight.size(1);
    const auto dev = t.layer->weight.device();
    at::Tensor hessian = at::zeros({k, k}, at::TensorOptions().dtype(at::kDouble).device(dev));
    at::Tensor count = at::zeros({1}, at::TensorOptions().dtype(at::kLong).device(dev));
    std::vector<const nn::QuantizableLayer*> group{lead};
    at::Tensor lead_input;  // held, so its address is not reused while compared
    size_t batch = 0;
    // A layer the model runs more than once per batch gets its whole forward.
    const bool stop_early = calls[lead] <= 1;
    const nn::detail::InputRecorder record = [&](const nn::QuantizableLayer* l, const at::Tensor& x) {
      if (targets.count(l) == 0 || done.count(l) != 0) {
        return;
      }
      if (l == lead) {
        qat::gptq_hessian_update(x, hessian, count);
        lead_input = x;
      } else if (lead_input.defined() && x.unsafeGetTensorImpl() == lead_input.unsafeGetTensorImpl()) {
        if (batch == 0 && std::find(group.begin(), group.end(), l) == group.end()) {
          group.push_back(l);
        }
      } else if (lead_input.defined() && stop_early) {
        throw StopPass{};
      }
    };
    {
      InputRecorderScope scope(&record);
      for (batch = 0; batch < n_batches; ++batch) {
        lead_input = at::Tensor();
        try {
          run_batch(batch);
        } catch (const StopPass&) {
        }
      }
    }
    TORCH_CHECK(
        count.item<int64_t>() > 0, "qat::gptq: the calibration batches never reach layer '", t.name,
        "' (its forward did not run, or only on empty inputs): pass batches that do, or leave it out of the qconfig");
    for (const nn::QuantizableLayer* member : group) {
      const Target& m = targets.at(member);
      const auto& obs = m.quantizer->observer().observer_options();
      const int64_t n = m.layer->weight.size(0);
      at::Tensor scale = m.quantizer->scale, zero_point = m.quantizer->zero_point;
      if (scale.numel() == 1) {  // per tensor: the same for every row
        scale = scale.reshape({1}).expand({n});
        zero_point = zero_point.reshape({1}).expand({n});
      }
      // the recorder sees the input before a SmoothQuant layer divides it by its
      // own factors: its Hessian is that of x / s
      const at::Tensor& smooth = m.layer->input_smooth;
      const at::Tensor h =
          smooth.defined() ? hessian / at::outer(smooth.to(at::kDouble), smooth.to(at::kDouble)) : hessian;
      at::Tensor w, dead;
      double used_damp = options.damp();
      try {
        std::tie(w, dead, used_damp) = qat::gptq_quantize(
            m.layer->weight.detach(), h, scale.contiguous(), zero_point.contiguous(), obs.quant_min(),
            obs.quant_max(), obs.group_size(), options.act_order(), options.damp(), options.block_size());
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "qat::gptq: layer '", m.name, "': ", e.what_without_backtrace());
      }
      if (used_damp != options.damp()) {
        TORCH_WARN(
            "qat::gptq: layer '", m.name, "': the Hessian is not positive definite with damp = ", options.damp(),
            "; used damp = ", used_damp);
      }
      if (const int64_t d = dead.item<int64_t>(); d > 0) {
        dead_inputs.push_back(fmt::format("'{}' ({} of {})", m.name, d, k));
      }
      m.layer->weight.copy_(w);
      done.insert(member);
      if (progress) {
        print_gptq_progress(done.size(), order.size());
      }
    }
  }
  if (!dead_inputs.empty()) {
    std::string names;
    for (const auto& l : dead_inputs) {
      names += (names.empty() ? "" : ", ") + l;
    }
    TORCH_WARN(
        "qat::gptq: inputs that were zero in every calibration row (their weight columns are rounded to nearest): ",
        names);
  }
  return static_cast<int64_t>(done.size());
}

}  // namespace qat
