#include "qtorchext/distributed.h"

#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/observer.h"

namespace qat {
namespace {

/// A quantizer whose min/max observer is switched on: its statistics and how
/// to refresh its qparams from them.
struct Synced {
  at::Tensor min_val, max_val;
  std::function<void()> refresh;
};

at::Tensor buffer(torch::nn::Module& m, const char* name) {
  for (auto& item : m.named_buffers(false)) {
    if (item.key() == name) {
      return item.value();
    }
  }
  return {};
}

/// Whether an observer keeps plain min/max statistics (not a histogram or an
/// MSE search, whose buffers cannot be combined by a MIN / MAX).
bool min_max_observer(torch::nn::Module& obs) {
  return buffer(obs, "min_val").defined() && buffer(obs, "max_val").defined() &&
      !buffer(obs, "histogram").defined() && !buffer(obs, "num_batches").defined();
}

void copy_resized(at::Tensor& dst, const at::Tensor& src) {
  if (dst.numel() != src.numel()) {
    dst.resize_({src.numel()});
  }
  dst.copy_(src.reshape(dst.sizes()));
}

}  // namespace

int64_t sync_observers(
    torch::nn::Module& model,
    const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
  TORCH_CHECK_VALUE(group, "qat::sync_observers: group is null");
  if (group->getSize() <= 1) {
    return 0;
  }
  std::vector<Synced> synced;
  std::vector<std::string> unsupported;
  auto visit = [&](const std::string& path, torch::nn::Module& m) {
    if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(&m)) {
      if (!fq->is_observer_enabled()) {
        return;
      }
      auto& obs = *fq->activation_post_process;
      if (!min_max_observer(obs)) {
        unsupported.push_back(path + " (" + obs.name() + ")");
        return;
      }
      synced.push_back({buffer(obs, "min_val"), buffer(obs, "max_val"), [fq] {
                          auto [s, z] = fq->calculate_qparams();
                          copy_resized(fq->scale, s);
                          copy_resized(fq->zero_point, z);
                        }});
    } else if (auto* lfq = dynamic_cast<LearnableFakeQuantizeImpl*>(&m)) {
      // the forward that ends init_steps observes, then switches its observer off
      if (!lfq->is_observer_enabled() && !lfq->observed_since_sync) {
        return;
      }
      lfq->observed_since_sync = false;
      auto& obs = *lfq->activation_post_process;
      if (!min_max_observer(obs)) {
        unsupported.push_back(path + " (" + obs.name() + ")");
        return;
      }
      synced.push_back({buffer(obs, "min_val"), buffer(obs, "max_val"), [lfq] {
                          auto* o = dynamic_cast<ObserverInterface*>(
                              lfq->activation_post_process.get());
                          auto [s, z] = o->calculate_qparams();
                          lfq->scale.copy_(s.reshape(lfq->scale.sizes()));
                          lfq->zero_point.copy_(z.reshape(lfq->zero_point.sizes()));
                        }});
    }
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
        "qat::sync_observers: these observers are not combined across ranks (only min/max "
        "observers are, so far); each rank keeps its own statistics: ",
        names);
  }
  if (synced.empty()) {
    return 0;
  }
  std::vector<at::Tensor> parts;
  int64_t entries = 0;
  for (const auto& s : synced) {
    parts.push_back(s.min_val.neg().reshape({-1}).to(at::kDouble));
    parts.push_back(s.max_val.reshape({-1}).to(at::kDouble));
    entries += s.min_val.numel() + s.max_val.numel();
  }
  const auto device = synced.front().min_val.device();
  // Every rank must pack the same statistics: count and size in one small
  // all-reduce (MAX of [sig, -sig] equals [sig, -sig] only if all agree).
  {
    const double count = static_cast<double>(parts.size());
    const double total = static_cast<double>(entries);
    // sizes in order, hashed (exact in a double: < 2^31)
    uint64_t h = 1469598103934665603ull;
    for (const auto& p : parts) {
      h = (h ^ static_cast<uint64_t>(p.numel())) * 1099511628211ull;
    }
    const double hash = static_cast<double>(h & 0x7FFFFFFFull);
    std::vector<at::Tensor> sig{at::tensor({count, total, hash, -count, -total, -hash},
                                           at::TensorOptions().dtype(at::kDouble))
                                    .to(device)};
    const at::Tensor mine = sig[0].clone();
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::MAX;
    group->allreduce(sig, opts)->wait();
    TORCH_CHECK(
        at::equal(sig[0], mine),
        "qat::sync_observers: the ranks' models hold different observer statistics (this "
        "rank: ", parts.size() / 2, " observers, ", entries, " entries); every rank must "
        "prepare the same model with the same qconfig and run the same layers");
  }
  std::vector<at::Tensor> flat{at::cat(parts)};
  c10d::AllreduceOptions opts;
  opts.reduceOp = c10d::ReduceOp::MAX;
  group->allreduce(flat, opts)->wait();
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (auto& s : synced) {
    const int64_t n = s.min_val.numel();
    s.min_val.copy_(flat[0].narrow(0, offset, n).neg().reshape(s.min_val.sizes()));
    offset += n;
    s.max_val.copy_(flat[0].narrow(0, offset, n).reshape(s.max_val.sizes()));
    offset += n;
  }
  for (auto& s : synced) {
    s.refresh();
  }
  return static_cast<int64_t>(synced.size());
}

}  // namespace qat
