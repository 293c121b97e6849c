#include "ops/layer/derived_weights.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <c10/core/StorageImpl.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/intrusive_ptr.h>

namespace qtorchext::layer {
namespace {

/// What a cached layout was built from: one source tensor, as it was when
/// the build started.
struct Source {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const c10::StorageImpl* storage_ptr = nullptr;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype = at::kByte;
  uint32_t version = 0;
  /// Inference tensors have no version counter: their bytes, compared on
  /// every lookup instead (CPU only; the memcmp costs a fraction of a
  /// rebuild).
  at::Tensor snapshot;

  explicit Source(const at::Tensor& t)
      : storage(t.storage().getWeakStorageImpl()),
        storage_ptr(t.storage().unsafeGetStorageImpl()),
        offset(t.storage_offset()),
        sizes(t.sizes().vec()),
        strides(t.strides().vec()),
        dtype(t.scalar_type()) {
    if (t.is_inference()) {
      snapshot = t.clone();
    } else {
      version = t.unsafeGetTensorImpl()->version_counter().current_version();
    }
  }

  bool alive() const {
    return !storage.expired();
  }
  bool matches(const at::Tensor& t) const {
    // the storage pointer is compared only while the weak reference is alive,
    // so a new storage at a freed one's address never matches
    if (!alive() || t.storage().unsafeGetStorageImpl() != storage_ptr ||
        t.storage_offset() != offset || !t.sizes().equals(sizes) || !t.strides().equals(strides) ||
        t.scalar_type() != dtype || t.is_inference() != snapshot.defined()) {
      return false;
    }
    if (snapshot.defined()) {
      return std::memcmp(t.const_data_ptr(), snapshot.const_data_ptr(), t.nbytes()) == 0;
    }
    return t.unsafeGetTensorImpl()->version_counter().current_version() == version;
  }
};

struct Entry {
  std::vector<Source> sources;
  at::Tensor layout;
};

using Key = std::tuple<std::string, const c10::StorageImpl*, int64_t>;

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}

std::map<Key, Entry>& cache() {
  static auto* c = new std::map<Key, Entry>();  // leaked: no destruction-order issues at exit
  return *c;
}

/// Cached: tensors with storage and a version counter, and inference tensors
/// that are contiguous on the CPU (compared by content). Others (meta,
/// inference tensors on a GPU) are built per call.
bool cacheable(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage() || t.is_meta() ||
      t.storage().unsafeGetStorageImpl() == nullptr) {
    return false;
  }
  return !t.is_inference() || (t.is_cpu() && t.is_contiguous());
}

bool alive(const Entry& e) {
  for (const Source& s : e.sources) {
    if (!s.alive()) {
      return false;
    }
  }
  return true;
}

bool matches(const Entry& e, std::initializer_list<at::Tensor> sources) {
  if (e.sources.size() != sources.size()) {
    return false;
  }
  size_t i = 0;
  for (const at::Tensor& t : sources) {
    if (!e.sources[i++].matches(t)) {
      return false;
    }
  }
  return true;
}

/// Drops the layouts of freed weights (call under the lock).
void sweep() {
  auto& c = cache();
  for (auto it = c.begin(); it != c.end();) {
    it = alive(it->second) ? std::next(it) : c.erase(it);
  }
}

}  // namespace

at::Tensor derived_weight(
    const std::string& kind,
    std::initializer_list<at::Tensor> sources,
    const std::function<at::Tensor()>& build) {
  for (const at::Tensor& t : sources) {
    if (!cacheable(t)) {
      return build();
    }
  }
  const at::Tensor& first = *sources.begin();
  const Key key{kind, first.storage().unsafeGetStorageImpl(), first.storage_offset()};
  // every 256 lookups, free the layouts of models that were deleted since
  static std::atomic<uint32_t> lookups{0};
  const bool sweep_now = (lookups.fetch_add(1, std::memory_order_relaxed) & 255u) == 255u;
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    if (sweep_now) {
      sweep();
    }
    auto it = cache().find(key);
    if (it != cache().end() && matches(it->second, sources)) {
      return it->second.layout;
    }
  }
  // The sources as they are before the build: a write that lands during it
  // changes the version (or bytes), so its result is never taken for the new
  // weights.
  Entry entry;
  for (const at::Tensor& t : sources) {
    entry.sources.emplace_back(t);
  }
  at::Tensor layout;
  {
    // A normal tensor even when the first call runs under inference_mode:
    // layouts derived from this one (a oneDNN row layout's sums, panels made
    // from rows) then key on its version counter, not on a memcmp of its
    // bytes per call (nor, for a strided layout, a rebuild per call).
    c10::InferenceMode normal_tensors(false);
    at::NoGradGuard no_grad;
    layout = build();
  }
  if (layout.device().type() != at::kCPU) {
    // Built on this thread's current stream: finished before another stream
    // (or thread) can read it from the cache. Once per layout.
    c10::impl::VirtualGuardImpl guard(layout.device().type());
    guard.getStream(layout.device()).synchronize();
  }
  entry.layout = layout;
  std::lock_guard<std::mutex> lock(cache_mutex());
  sweep();
  auto it = cache().find(key);
  if (it != cache().end() && matches(it->second, sources)) {
    return it->second.layout;  // another thread stored the same layout first
  }
  cache().insert_or_assign(key, std::move(entry));
  return layout;
}

std::vector<std::tuple<std::string, std::string, int64_t, bool>> derived_weight_entries() {
  std::lock_guard<std::mutex> lock(cache_mutex());
  std::vector<std::tuple<std::string, std::string, int64_t, bool>> out;
  for (const auto& [key, entry] : cache()) {
    out.emplace_back(
        std::get<0>(key), c10::toString(entry.layout.scalar_type()), entry.layout.dim(),
        alive(entry));
  }
  return out;
}

}  // namespace qtorchext::layer
