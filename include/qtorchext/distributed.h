/**
 * @file distributed.h
 * Observers kept consistent across the ranks of a c10d process group (the C++
 * twin of qtorchext.sync_observers).
 *
 * Under data parallelism each rank observes only its shard. sync_observers
 * combines the statistics of every min/max observer switched on in a model
 * (per tensor, per channel, per group; plain and moving average) with one
 * all-reduce: MAX over the packed [-min_val, max_val] of all of them, in
 * float64. Min, max and a moving average's update old + c * (batch - old)
 * (monotone in the batch value) commute with that reduction, so every rank
 * then holds, bit for bit, the statistics one process would hold had it seen
 * every rank's batch, and the scales and zero points chosen from them.
 * Within the step, each rank's fake quantization already used its own
 * updated statistics: quantizers fed the model input and the weights match one
 * process exactly, later activation quantizers up to those local qparams.
 *
 * Call it after each forward in training (and after each calibration batch):
 * it is a collective, every rank of the group must call it. Before the
 * statistics it all-reduces a 6-entry signature (count, entries and sizes of
 * the statistics), so ranks whose models differ fail with a clear error. Per
 * group statistics of activations are per row of each rank's own batch: only
 * weights should be quantized per group under data parallelism. Histogram and
 * MSE observers are not combined yet (a warning names them).
 */
#pragma once

#include <cstdint>

#include <c10/util/intrusive_ptr.h>
#include <torch/nn/module.h>

namespace c10d {
class ProcessGroup;
}  // namespace c10d

namespace qat {

/// Combines the min/max observers of `model` across `group`'s ranks and
/// recomputes their quantizers' scales and zero points. Returns the number of
/// observers combined (0 for a group of one rank). Throws when the ranks'
/// models hold different statistics (number or sizes).
int64_t sync_observers(
    torch::nn::Module& model,
    const c10::intrusive_ptr<c10d::ProcessGroup>& group);

}  // namespace qat
