#include "ops/cpu/isa.h"

#include <atomic>
#include <cstdlib>

#include <c10/util/Exception.h>

#include "qtorchext/ops.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace qtorchext::cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && QTORCHEXT_HAVE_AVX2
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) {
    return false;
  }
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  const bool fma = c & (1u << 12);
  const bool f16c = c & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) {
    return false;
  }
  // The OS must save the YMM registers (XCR0 bits 1 and 2).
  unsigned xlo = 0, xhi = 0;
  __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  if ((xlo & 0x6u) != 0x6u) {
    return false;
  }
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    return false;
  }
  return b & (1u << 5);
#else
  return false;
#endif
}

const KernelTable* table_named(const std::string& name) {
  if (name == "default") {
    return &kGenericKernels;
  }
#if QTORCHEXT_HAVE_AVX2
  if (name == "avx2" && cpu_has_avx2()) {
    return &kAvx2Kernels;
  }
#endif
  return nullptr;
}

const KernelTable* best_table() {
  return cpu_has_avx2() ? table_named("avx2") : &kGenericKernels;
}

std::string lower(std::string s) {
  for (auto& ch : s) {
    ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  return s;
}

const KernelTable* initial_table() {
  for (const char* var : {"QTORCHEXT_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY"}) {
    const char* env = std::getenv(var);
    if (env == nullptr || *env == '\0') {
      continue;
    }
    const std::string want = lower(env);
    if (want == "default") {
      return &kGenericKernels;
    }
    // ATen's names above avx2 (avx512, ...) mean "the best there is" here.
    if (const KernelTable* t = table_named(want)) {
      return t;
    }
    return best_table();
  }
  return best_table();
}

std::atomic<const KernelTable*>& current() {
  static std::atomic<const KernelTable*> table{initial_table()};
  return table;
}

}  // namespace

const KernelTable& kernels() {
  return *current().load(std::memory_order_relaxed);
}

}  // namespace qtorchext::cpu

namespace qat {

std::string cpu_capability() {
  return qtorchext::cpu::kernels().name;
}

std::vector<std::string> supported_cpu_capabilities() {
  std::vector<std::string> names{"default"};
  if (qtorchext::cpu::cpu_has_avx2()) {
    names.emplace_back("avx2");
  }
  return names;
}

void set_cpu_capability(const std::string& name) {
  const auto* table = qtorchext::cpu::table_named(qtorchext::cpu::lower(name));
  if (table == nullptr) {
    std::string supported;
    for (const auto& s : supported_cpu_capabilities()) {
      supported += (supported.empty() ? "" : ", ") + s;
    }
    TORCH_CHECK(
        false,
        "qat::set_cpu_capability: capability '",
        name,
        "' is not available on this CPU; supported: ",
        supported);
  }
  qtorchext::cpu::current().store(table, std::memory_order_relaxed);
}

}  // namespace qat
