// Device layouts derived from a converted layer's stored weight tensors
// (the CPU GEMM panels, the CUDA int8 rows, a convolution's reordered
// panels), built once and reused while the tensors they came from are
// unchanged.
//
// Why a cache keyed on the source tensors, not a member of the module: the
// stored tensors are the truth. A cached layout is reused only while each
// source tensor is the same storage (held weakly, so a freed and reallocated
// buffer never matches), at the same offset, shape, strides and dtype, and
// at the same version: every in-place write (load_state_dict's copy_,
// torch::load's set_, `buf[...] = v`) bumps a tensor's version counter, and
// .to(device) / .to(dtype) make new storages. So a load, a copy_ or a move
// can never leave a layer computing with the layout of its old weights.
// Builds run outside the lock, from a snapshot of the sources' identities and
// versions taken before the build, so a write that lands during a build is
// never mistaken for the state the layout came from (two threads may both
// build; the first one stored wins and both results are equal); lookups and
// inserts are under a mutex, so concurrent first calls are safe. A layout
// built on a GPU is synchronized with its stream once, before it is shared.
// Entries whose source storage died are dropped at the next insert and every
// 256 lookups.
//
// The sources must be tensors from outside the op (its arguments, or layouts
// this cache returned): a view made inside an op (narrow, reshape) has a
// version counter of its own, which no write to the stored tensor bumps.
//
// Inference tensors (made under torch.inference_mode) have no version
// counter: on the CPU their bytes are kept and compared on each lookup (a
// memcmp of the packed weights); on a GPU they are rebuilt per call. Meta
// tensors are built per call. Writes through `.data` bypass version counters,
// as they bypass autograd's checks; they are not detected.
#pragma once

#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/core/Tensor.h>

namespace qtorchext::layer {

/// The layout `kind` of `sources`, from the cache or from `build()`.
at::Tensor derived_weight(
    const std::string& kind,
    std::initializer_list<at::Tensor> sources,
    const std::function<at::Tensor()>& build);

/// The cache entries (tests, diagnostics): kind, layout dtype, layout
/// dimensions, and whether the weights they came from are still alive.
std::vector<std::tuple<std::string, std::string, int64_t, bool>> derived_weight_entries();

}  // namespace qtorchext::layer
