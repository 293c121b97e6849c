#include "qtorchext/distributed.h"

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/observer.h"
#include "qtorchext/ops.h"

namespace qat {
namespace {

at::Tensor buffer(torch::nn::Module& m, const char* name) {
  for (auto& item : m.named_buffers(false)) {
    if (item.key() == name) {
      return item.value();
    }
  }
  return {};
}

enum class Kind { kMinMax, kHistogram, kMse, kOther };

Kind kind_of(torch::nn::Module& obs) {
  if (!buffer(obs, "min_val").defined() || !buffer(obs, "max_val").defined()) {
    return Kind::kOther;
  }
  if (buffer(obs, "histogram").defined()) {
    return Kind::kHistogram;
  }
  return buffer(obs, "num_batches").defined() ? Kind::kMse : Kind::kMinMax;
}

void copy_resized(at::Tensor& dst, const at::Tensor& src) {
  if (dst.numel() != src.numel()) {
    dst.resize_({src.numel()});
  }
  dst.copy_(src.reshape(dst.sizes()));
}

/// A quantizer whose observer is switched on: its observer and how to
/// refresh its qparams from the observer's statistics.
struct Synced {
  torch::nn::Module* observer;
  ObserverInterface* iface;
  std::function<void()> refresh;
};

/// 1 + a 31-bit digest of a histogram observer's base (0: none).
double base_digest(const ObserverInterface& o) {
  if (o.sync_base.empty()) {
    return 0;
  }
  uint64_t h = 1469598103934665603ull;
  for (const auto& t : o.sync_base) {
    const at::Tensor c = t.detach().cpu().contiguous();
    const auto* p = static_cast<const unsigned char*>(c.const_data_ptr());
    for (size_t i = 0; i < c.nbytes(); ++i) {
      h = (h ^ p[i]) * 1099511628211ull;
    }
  }
  return 1.0 + static_cast<double>(h % 0x7FFFFFFEull);
}

/// Every rank must pack the same statistics: count, entries and a hash of the
/// layout in one small all-reduce (MAX of [sig, -sig] equals [sig, -sig] only
/// if all agree).
void check_layout(
    const c10::intrusive_ptr<c10d::ProcessGroup>& group,
    const std::vector<double>& layout,
    const at::Device& device,
    const std::string& described) {
  double total = 0;
  uint64_t h = 1469598103934665603ull;
  for (double n : layout) {
    total += n;
    h = (h ^ static_cast<uint64_t>(n)) * 1099511628211ull;
  }
  const double count = static_cast<double>(layout.size());
  const double hash = static_cast<double>(h & 0x7FFFFFFFull);
  std::vector<at::Tensor> sig{
      at::tensor({count, total, hash, -count, -total, -hash}, at::TensorOptions().dtype(at::kDouble))
          .to(device)};
  const at::Tensor mine = sig[0].clone();
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::MAX;
  group->allreduce(sig, opts)->wait();
  TORCH_CHECK(
      at::equal(sig[0], mine),
      "qat::sync_observers: the ranks' models hold different observer statistics (number, "
      "sizes or, for histograms, the state of the last synchronisation; this rank has ",
      described, "); every rank must prepare the same model with the same qconfig, load the "
      "same checkpoints and run the same layers");
}

/// rows [world, entries]: every rank's histogram and MSE parts, in rank order
/// -> the merged histograms and averaged MSE ranges (the same arithmetic on
/// the same rows on every rank).
void combine_gathered(
    const at::Tensor& rows,
    const std::vector<Synced>& hist,
    const std::vector<Synced>& mse) {
  int64_t offset = 0;
  auto take = [&](int64_t n) {
    offset += n;
    return rows.narrow(1, offset - n, n);
  };
  for (const auto& s : hist) {
    at::Tensor h = buffer(*s.observer, "histogram");
    at::Tensor mn = buffer(*s.observer, "min_val");
    at::Tensor mx = buffer(*s.observer, "max_val");
    const at::Tensor counts = take(h.numel()).to(at::kLong);
    const at::Tensor lo = take(1).reshape({-1}).to(at::kFloat);
    const at::Tensor hi = take(1).reshape({-1}).to(at::kFloat);
    std::optional<at::Tensor> b, bl, bh;
    if (!s.iface->sync_base.empty()) {
      b = s.iface->sync_base[0].to(counts.device());
      bl = s.iface->sync_base[1].to(counts.device());
      bh = s.iface->sync_base[2].to(counts.device());
    }
    auto [mh, ml, mu] = qat::histogram_merge(counts, lo, hi, b, bl, bh);
    h.copy_(mh);
    mn.copy_(ml.reshape(mn.sizes()));
    mx.copy_(mu.reshape(mx.sizes()));
    s.iface->sync_base = {h.clone(), mn.clone(), mx.clone()};
  }
  for (const auto& s : mse) {
    at::Tensor mn = buffer(*s.observer, "min_val");
    at::Tensor mx = buffer(*s.observer, "max_val");
    at::Tensor nb = buffer(*s.observer, "num_batches");
    const at::Tensor n = take(1).reshape({-1});
    const int64_t k = mn.numel();
    const at::Tensor mins = take(k), maxs = take(k);
    const at::Tensor total = n.sum();
    if (total.item<double>() > 0) {
      const at::Tensor w = (n / total).unsqueeze(1);
      // ranks that saw nothing (weight 0, statistics +-inf) take no part
      const at::Tensor zero = at::zeros_like(mins);
      mn.copy_(at::where(w > 0, mins * w, zero).sum(0).reshape(mn.sizes()));
      mx.copy_(at::where(w > 0, maxs * w, zero).sum(0).reshape(mx.sizes()));
    }
    nb.fill_(n.max().item<double>());
  }
}

/// The quantizers whose observers sync_observers combines (null for others).
FakeQuantizeInterface* observing_quantizer(torch::nn::Module& m) {
  if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(&m)) {
    return fq;
  }
  return dynamic_cast<LearnableFakeQuantizeImpl*>(&m);
}

/// The automatic synchronisation states held by `model`'s quantizers, with
/// the quantizers that hold each.
std::map<detail::ObserverSync*, std::vector<FakeQuantizeInterface*>> sync_states(
    torch::nn::Module& model) {
  std::map<detail::ObserverSync*, std::vector<FakeQuantizeInterface*>> out;
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* q = observing_quantizer(*m); q != nullptr && q->observer_sync) {
      out[q->observer_sync.get()].push_back(q);
    }
  }
  return out;
}

/// After a synchronisation: a new step starts for the automatic one.
void restart_steps(torch::nn::Module& model) {
  for (auto& [state, quantizers] : sync_states(model)) {
    state->observed.clear();
    state->members = {quantizers.begin(), quantizers.end()};
    state->expected = static_cast<size_t>(std::count_if(
        quantizers.begin(), quantizers.end(),
        [](const FakeQuantizeInterface* q) { return q->is_observer_enabled(); }));
  }
}

}  // namespace

int64_t sync_observers(
    torch::nn::Module& model,
    const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
  TORCH_CHECK_VALUE(group, "qat::sync_observers: group is null");
  if (group->getSize() <= 1) {
    return 0;
  }
  std::vector<Synced> minmax, hist, mse;
  std::vector<std::string> unsupported;
  std::unordered_set<const torch::nn::Module*> seen;  // a module shared by two paths: once
  auto visit = [&](const std::string& path, torch::nn::Module& m) {
    if (!seen.insert(&m).second) {
      return;
    }
    torch::nn::Module* obs = nullptr;
    std::function<void()> refresh;
    if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(&m)) {
      if (!fq->is_observer_enabled()) {
        return;
      }
      obs = fq->activation_post_process.get();
      refresh = [fq] {
        auto [s, z] = fq->calculate_qparams();
        copy_resized(fq->scale, s);
        copy_resized(fq->zero_point, z);
      };
    } else if (auto* lfq = dynamic_cast<LearnableFakeQuantizeImpl*>(&m)) {
      // the forward that ends init_steps observes, then switches its observer off
      if (!lfq->is_observer_enabled() && !lfq->observed_since_sync) {
        return;
      }
      lfq->observed_since_sync = false;
      obs = lfq->activation_post_process.get();
      refresh = [lfq] {
        auto* o = dynamic_cast<ObserverInterface*>(lfq->activation_post_process.get());
        auto [s, z] = o->calculate_qparams();
        // through variable_data(): the step's learnable op saved the parameters
        // for its backward, which an in-place copy on them would refuse
        lfq->scale.variable_data().copy_(s.reshape(lfq->scale.sizes()));
        lfq->zero_point.variable_data().copy_(z.reshape(lfq->zero_point.sizes()));
      };
    } else {
      return;
    }
    auto* iface = dynamic_cast<ObserverInterface*>(obs);
    const Kind kind = iface == nullptr ? Kind::kOther : kind_of(*obs);
    if (kind == Kind::kOther) {
      unsupported.push_back(path + " (" + obs->name() + ")");
      return;
    }
    auto& into = kind == Kind::kMinMax ? minmax : (kind == Kind::kHistogram ? hist : mse);
    into.push_back({obs, iface, std::move(refresh)});
  };
  visit("", model);
  for (auto& item : model.named_modules("", false)) {
    visit(item.key(), *item.value());
  }
  if (!unsupported.empty()) {
    std::string names;
    for (const auto& n : unsupported) {
      names += (names.empty() ? "" : ", ") + n;
    }
    TORCH_WARN_ONCE(
        "qat::sync_observers: these observers are not combined across ranks; each rank keeps "
        "its own statistics: ",
        names);
  }
  const size_t combined = minmax.size() + hist.size() + mse.size();
  std::vector<at::Tensor> stats, gathered;
  for (const auto& s : minmax) {
    stats.push_back(buffer(*s.observer, "min_val").neg().reshape({-1}).to(at::kDouble));
    stats.push_back(buffer(*s.observer, "max_val").reshape({-1}).to(at::kDouble));
  }
  // float64 holds every float32 value and every count below 2^53 exactly
  for (const auto& s : hist) {
    for (const char* name : {"histogram", "min_val", "max_val"}) {
      gathered.push_back(buffer(*s.observer, name).reshape({-1}).to(at::kDouble));
    }
  }
  for (const auto& s : mse) {
    for (const char* name : {"num_batches", "min_val", "max_val"}) {
      gathered.push_back(buffer(*s.observer, name).reshape({-1}).to(at::kDouble));
    }
  }
  std::vector<double> layout;
  for (const auto& t : stats) {
    layout.push_back(static_cast<double>(t.numel()));
  }
  for (const auto& t : gathered) {
    layout.push_back(static_cast<double>(t.numel()));
  }
  layout.insert(
      layout.end(), {static_cast<double>(minmax.size()), static_cast<double>(hist.size()),
                     static_cast<double>(mse.size())});
  for (const auto& s : hist) {
    layout.push_back(base_digest(*s.iface));
  }
  // the check runs even with nothing to combine: a rank whose observers are
  // off while another's are on fails with the others instead of leaving them waiting
  at::Device device = at::kCPU;
  if (!stats.empty() || !gathered.empty()) {
    device = (stats.empty() ? gathered : stats).front().device();
  } else if (const auto buffers = model.buffers(); !buffers.empty()) {
    device = buffers.front().device();
  }
  check_layout(
      group, layout, device,
      std::to_string(minmax.size()) + " min/max, " + std::to_string(hist.size()) +
          " histogram and " + std::to_string(mse.size()) + " MSE observers");
  torch::NoGradGuard no_grad;
  if (!stats.empty()) {
    std::vector<at::Tensor> flat{at::cat(stats)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::MAX;
    group->allreduce(flat, opts)->wait();
    int64_t offset = 0;
    for (auto& s : minmax) {
      at::Tensor mn = buffer(*s.observer, "min_val");
      at::Tensor mx = buffer(*s.observer, "max_val");
      const int64_t n = mn.numel();
      mn.copy_(flat[0].narrow(0, offset, n).neg().reshape(mn.sizes()));
      offset += n;
      mx.copy_(flat[0].narrow(0, offset, n).reshape(mx.sizes()));
      offset += n;
    }
  }
  if (!gathered.empty()) {
    std::vector<at::Tensor> mine{at::cat(gathered)};
    std::vector<std::vector<at::Tensor>> rows(1);
    for (int r = 0; r < group->getSize(); ++r) {
      rows[0].push_back(at::empty_like(mine[0]));
    }
    group->allgather(rows, mine)->wait();
    combine_gathered(at::stack(rows[0]), hist, mse);
  }
  for (auto* kind : {&minmax, &hist, &mse}) {
    for (auto& s : *kind) {
      s.refresh();
    }
  }
  restart_steps(model);
  return static_cast<int64_t>(combined);
}

void set_observer_sync(
    torch::nn::Module& model,
    const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
  std::shared_ptr<detail::ObserverSync> state;
  if (group) {
    std::weak_ptr<torch::nn::Module> root = model.weak_from_this();
    TORCH_CHECK_VALUE(
        !root.expired(),
        "qat::set_observer_sync: model must be owned by a std::shared_ptr (a TORCH_MODULE "
        "holder or std::make_shared), so that its quantizers can reach it; got a ",
        model.name(), " that is not");
    state = std::make_shared<detail::ObserverSync>();
    state->group = group;
    state->root = root;
  }
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* q = observing_quantizer(*m)) {
      q->observer_sync = state;
    }
  }
  restart_steps(model);
}

namespace detail {
namespace {

void run_sync(ObserverSync& s) {
  const std::shared_ptr<torch::nn::Module> root = s.root.lock();
  TORCH_CHECK(
      root, "qat::set_observer_sync: the model whose observers this quantizer synchronises no "
      "longer exists; call qat::set_observer_sync on the model that holds it");
  s.running = true;
  try {
    sync_observers(*root, s.group);
  } catch (...) {
    s.running = false;
    throw;
  }
  s.running = false;
}

}  // namespace

void before_observe(const FakeQuantizeInterface& q) {
  ObserverSync* s = q.observer_sync.get();
  if (s != nullptr && !s->running && s->members.count(&q) != 0 && s->observed.count(&q) != 0) {
    run_sync(*s);  // a step that left quantizers out: synchronised as the next one starts
  }
}

void after_observe(const FakeQuantizeInterface& q) {
  ObserverSync* s = q.observer_sync.get();
  if (s == nullptr || s->running || s->members.count(&q) == 0) {
    return;
  }
  s->observed.insert(&q);
  if (s->observed.size() >= s->expected) {
    run_sync(*s);
  }
}

void calibration_sync(torch::nn::Module& model) {
  // the first quantizer in module order names the synchronisation (the same
  // on every rank)
  for (const auto& m : model.modules(/*include_self=*/true)) {
    if (auto* q = observing_quantizer(*m); q != nullptr && q->observer_sync) {
      if (!q->observer_sync->running) {
        run_sync(*q->observer_sync);
      }
      return;
    }
  }
}

}  // namespace detail
}  // namespace qat
