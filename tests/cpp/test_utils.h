// Helpers shared by the GoogleTest suites.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>

#include "qtorchext/qtorchext.h"

namespace qtorchext_test {

/// Same shape, dtype and values (NaN equals NaN).
inline bool same(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return false;
  }
  return ((a == b) | (a.isnan() & b.isnan())).all().item<bool>();
}

/// Bytes of a module's parameters and buffers.
inline int64_t state_bytes(torch::nn::Module& m) {
  int64_t bytes = 0;
  for (const auto& p : m.named_parameters()) {
    bytes += p.value().numel() * p.value().element_size();
  }
  for (const auto& b : m.named_buffers()) {
    bytes += b.value().numel() * b.value().element_size();
  }
  return bytes;
}

/// Runs fn once per CPU kernel set this machine supports, restoring the
/// selection afterwards.
inline void for_each_capability(const std::function<void(const std::string&)>& fn) {
  const std::string previous = qat::cpu_capability();
  for (const auto& cap : qat::supported_cpu_capabilities()) {
    qat::set_cpu_capability(cap);
    fn(cap);
  }
  qat::set_cpu_capability(previous);
}

/// Random values across and beyond [quant_min, quant_max] * scale, with
/// exact .5 ties (scale a power of two), NaN and +-Inf.
inline at::Tensor mixed_input(
    at::IntArrayRef shape,
    at::ScalarType dtype,
    double scale,
    int64_t zero_point,
    int64_t qmin,
    int64_t qmax) {
  at::Tensor x = (at::rand(shape, at::kDouble) - 0.5) * ((qmax - qmin + 8) * scale);
  at::Tensor flat = x.view({-1});
  const int64_t n = std::min<int64_t>(flat.numel(), 40);
  for (int64_t i = 0; i < n - 4; ++i) {
    flat[i] = (qmin - 2 + i + 0.5 - zero_point) * scale;
  }
  flat[n - 4] = std::numeric_limits<double>::quiet_NaN();
  flat[n - 3] = std::numeric_limits<double>::infinity();
  flat[n - 2] = -std::numeric_limits<double>::infinity();
  flat[n - 1] = 1e30;
  return x.to(dtype);
}

inline std::string where(const std::string& cap, at::ScalarType dtype) {
  return "capability " + cap + ", dtype " + std::string(c10::toString(dtype));
}

/// Expects fn to throw a c10::Error whose message contains `needle`.
#define EXPECT_THROW_WITH(stmt, needle)                                  \
  do {                                                                   \
    try {                                                                \
      stmt;                                                              \
      ADD_FAILURE() << "no exception from " #stmt;                       \
    } catch (const c10::Error& e) {                                      \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)   \
          << "message: " << e.what();                                    \
    }                                                                    \
  } while (0)

}  // namespace qtorchext_test
