// Helpers of the CPU op files: layouts, qparam arrays, threading.
#pragma once

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "ops/cpu/isa.h"

namespace qtorchext::cpu {

/// Elements per parallel task: large enough that a task outweighs its start.
constexpr int64_t kGrain = 32768;

ScalarKind scalar_kind(at::ScalarType t);

/// x with exactly the sizes and strides of `like` (dense): x itself when it
/// already has them, else a copy.
at::Tensor with_layout_of(const at::Tensor& x, const at::Tensor& like);

/// x itself when non-overlapping and dense, else a copy in the layout that
/// at::empty_like(x) chooses (so Meta kernels can predict output strides).
at::Tensor dense(const at::Tensor& x);

/// Channel layout of a dense tensor along `axis` (storage order is
/// [outer, size(axis), stride(axis)] for every dense permutation).
ChannelLayout channel_layout(const at::Tensor& dense, int64_t axis);

/// Sums per-element contributions over every dim but `axis` (all dims when
/// axis < 0; none for a 1-D tensor along its only axis).
at::Tensor sum_except(const at::Tensor& contrib, int64_t axis);

/// Runs fn(begin, end) over [0, n) on the intra-op thread pool.
void parallel_elements(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

/// Runs the affine fake-quant kernel over `input` into `out` (and `mask`
/// when defined), both laid out alike; returns them.
std::tuple<at::Tensor, at::Tensor> affine_forward(
    const at::Tensor& input,
    at::Tensor out,
    at::Tensor mask,
    const AffineParams& params);

/// Float32 scale, 1/scale and zero point arrays the kernels read (small:
/// one entry per channel, kept off the tensor allocator).
struct QParamArrays {
  std::vector<float> scale;
  std::vector<float> inv_scale;
  std::vector<float> zero_point;

  AffineParams affine(const ChannelLayout& layout, int64_t quant_min, int64_t quant_max) const;
};

/// From a floating scale and an integer zero point; checks the values.
QParamArrays int_qparams(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

/// From the float32 scale and zero point of the learnable ops: the zero point
/// is rounded half to even and clamped to [quant_min, quant_max].
QParamArrays learnable_qparams(
    const at::Tensor& scale,
    const at::Tensor& zero_point,
    int64_t quant_min,
    int64_t quant_max,
    const char* op);

}  // namespace qtorchext::cpu
