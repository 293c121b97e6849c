#include "ops/layer/derived_weights.h"

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <c10/core/StorageImpl.h>
#include <c10/util/intrusive_ptr.h>

namespace qtorchext::layer {
namespace {

/// What a cached layout was built from: one source tensor.
struct Source {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const c10::StorageImpl* storage_ptr = nullptr;
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype = at::kByte;
  uint32_t version = 0;

  explicit Source(const at::Tensor& t)
      : storage(t.storage().getWeakStorageImpl()),
        storage_ptr(t.storage().unsafeGetStorageImpl()),
        offset(t.storage_offset()),
        sizes(t.sizes().vec()),
        strides(t.strides().vec()),
        dtype(t.scalar_type()),
        version(t.unsafeGetTensorImpl()->version_counter().current_version()) {}

  bool alive() const {
    return !storage.expired();
  }
  bool matches(const at::Tensor& t) const {
    // the storage pointer is compared only while the weak reference is alive,
    // so a new storage at a freed one's address never matches
    return alive() && t.storage().unsafeGetStorageImpl() == storage_ptr &&
        t.storage_offset() == offset && t.sizes().equals(sizes) && t.strides().equals(strides) &&
        t.scalar_type() == dtype &&
        t.unsafeGetTensorImpl()->version_counter().current_version() == version;
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

bool cacheable(const at::Tensor& t) {
  return t.defined() && t.has_storage() && !t.is_meta() && !t.is_inference() &&
      t.storage().unsafeGetStorageImpl() != nullptr;
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
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto it = cache().find(key);
    if (it != cache().end() && matches(it->second, sources)) {
      return it->second.layout;
    }
  }
  at::Tensor layout = build();
  Entry entry;
  entry.layout = layout;
  for (const at::Tensor& t : sources) {
    entry.sources.emplace_back(t);
  }
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto& c = cache();
  for (auto it = c.begin(); it != c.end();) {  // drop layouts of freed weights
    bool dead = false;
    for (const Source& s : it->second.sources) {
      dead = dead || !s.alive();
    }
    it = dead ? c.erase(it) : std::next(it);
  }
  auto it = c.find(key);
  if (it != c.end() && matches(it->second, sources)) {
    return it->second.layout;  // another thread stored the same layout first
  }
  c.insert_or_assign(key, std::move(entry));
  return layout;
}

std::vector<std::tuple<std::string, std::string, int64_t>> derived_weight_entries() {
  std::lock_guard<std::mutex> lock(cache_mutex());
  std::vector<std::tuple<std::string, std::string, int64_t>> out;
  for (const auto& [key, entry] : cache()) {
    bool alive = true;
    for (const Source& s : entry.sources) {
      alive = alive && s.alive();
    }
    if (alive) {
      out.emplace_back(
          std::get<0>(key), c10::toString(entry.layout.scalar_type()), entry.layout.dim());
    }
  }
  return out;
}

}  // namespace qtorchext::layer
