/**
 * @file distributed.h
 * Observers kept consistent across the ranks of a c10d process group (the C++
 * twin of qtorchext.sync_observers and qtorchext.set_observer_sync).
 *
 * Under data parallelism each rank observes only its shard. sync_observers
 * combines the statistics of every observer switched on in a model:
 *  - min/max observers (per tensor, channel or group; plain and moving
 *    average): one all-reduce, MAX over the packed [-min_val, max_val] in
 *    float64. Min, max and a moving average's update old + c * (batch - old)
 *    (monotone in the batch value) commute with it, so every rank then holds,
 *    bit for bit, the statistics one process would hold had it seen every
 *    rank's batch;
 *  - histogram and percentile observers: their grid depends only on the
 *    values seen, so histogram_merge turns the ranks' histograms (one
 *    all-gather) into, bit for bit, the histogram one observer fed every
 *    rank's values holds; the state of the previous synchronisation (which
 *    every rank started from: ObserverInterface::sync_base) counts once;
 *  - MSE observers: the ranks' running means of their per-batch best ranges,
 *    weighted by batch counts (same all-gather): consistent on all ranks, not
 *    one process's search over whole batches;
 * then the scales and zero points chosen from the combined statistics.
 * Within a step, each rank's fake quantization already used its own updated
 * statistics: quantizers fed the model input and the weights match one
 * process exactly, later activation quantizers up to those local qparams.
 *
 * A collective: every rank of the group must call it. Before the statistics
 * it all-reduces a 6-entry signature (count, entries and sizes of the
 * statistics, the histograms' bases), so ranks whose models differ fail with
 * a clear error. Per group statistics of activations are per row of each
 * rank's own batch: only weights should be quantized per group under data
 * parallelism.
 *
 * set_observer_sync makes it automatic, as Python's prepare_qat does.
 */
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_set>

#include <c10/util/intrusive_ptr.h>
#include <torch/nn/module.h>

namespace c10d {
class ProcessGroup;
}  // namespace c10d

namespace qat {

class FakeQuantizeInterface;

/// Combines the observers of `model` across `group`'s ranks and recomputes
/// their quantizers' scales and zero points. Returns the number of observers
/// combined (0 for a group of one rank). Throws when the ranks' models hold
/// different statistics (number, sizes, or histograms' bases).
int64_t sync_observers(
    torch::nn::Module& model,
    const c10::intrusive_ptr<c10d::ProcessGroup>& group);

/**
 * Synchronises `model`'s observers across `group` by itself (null: stops):
 *  - in training mode, right after the forward of the quantizer that
 *    completes a step: the step in which every quantizer whose observer was
 *    on at the last synchronisation has observed once. A step that leaves
 *    some out (a branch not taken) is synchronised when one of its
 *    quantizers is about to observe again (the next step's), or by an
 *    explicit sync_observers;
 *  - qat::calibrate: after every batch.
 * Python runs it after each training forward of the model; here the steps
 * are counted because a LibTorch model has no forward hooks: the statistics
 * of each forward are combined before the next forward observes, as there.
 * Counting needs every rank to call the same quantizers in each forward (an
 * empty input counts): a model whose forward skips or repeats quantizers
 * depending on the data (experts chosen per token, loops of data-dependent
 * length) would synchronise at different points on different ranks and hang;
 * for such a model leave this off and call sync_observers after each forward.
 * Each synchronisation is a collective; a forward on one rank alone blocks:
 * call set_observer_sync(model, nullptr) around it. The model must be owned
 * by a std::shared_ptr (a TORCH_MODULE holder or std::make_shared); a clone
 * does not take the setting (call this on it).
 */
void set_observer_sync(
    torch::nn::Module& model,
    const c10::intrusive_ptr<c10d::ProcessGroup>& group);

namespace detail {

/// The automatic synchronisation of one model (set_observer_sync), shared
/// by its quantizers.
struct ObserverSync {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::weak_ptr<torch::nn::Module> root;
  /// The model's quantizers, and those of them that observed since the last
  /// synchronisation; `expected`: how many had their observer on then.
  std::unordered_set<const FakeQuantizeInterface*> members, observed;
  size_t expected = 0;
  bool running = false;
};

/// A training forward of quantizer q is about to observe / has observed.
void before_observe(const FakeQuantizeInterface& q);
void after_observe(const FakeQuantizeInterface& q);

/// qat::calibrate's synchronisation after each batch (when set).
void calibration_sync(torch::nn::Module& model);

}  // namespace detail
}  // namespace qat
