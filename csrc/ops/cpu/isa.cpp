#include "ops/cpu/isa.h"

#include <atomic>
#include <cstdlib>

#include <c10/util/Exception.h>

#include "qtorchext/ops.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace qtorchext::cpu {
namespace {

struct CpuFeatures {
  bool avx2 = false;       // with FMA, F16C and the OS saving YMM state
  bool avx512 = false;     // F, BW, VL, DQ, and the OS saving ZMM / opmask state
  bool avx512_vnni = false;
  bool avx_vnni = false;
  bool amx_int8 = false;
  // AMX-TILE, AMX-BF16 and AVX512-BF16 (the input parts are packed with
  // vcvtne2ps2bf16), the OS saving tile state (XCR0 bits 17, 18)
  bool amx_bf16 = false;
};

CpuFeatures read_cpu_features() {
  CpuFeatures f;
#if defined(__x86_64__) && QTORCHEXT_HAVE_AVX2
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) {
    return f;
  }
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  const bool fma = c & (1u << 12);
  const bool f16c = c & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) {
    return f;
  }
  // The OS must save the YMM registers (XCR0 bits 1 and 2), and for AVX-512
  // the opmask and ZMM registers too (bits 5, 6, 7).
  unsigned xlo = 0, xhi = 0;
  __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  if ((xlo & 0x6u) != 0x6u || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    return f;
  }
  f.avx2 = b & (1u << 5);
  const bool zmm_state = (xlo & 0xE0u) == 0xE0u;
  f.avx512 = f.avx2 && zmm_state && (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
      (b & (1u << 31));
  f.avx512_vnni = f.avx512 && (c & (1u << 11));
  f.amx_int8 = f.avx2 && (d & (1u << 25)) && (d & (1u << 24));
  f.amx_bf16 = f.avx512 && (d & (1u << 22)) && (d & (1u << 24)) && (xlo & 0x60000u) == 0x60000u;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) {
    f.avx_vnni = f.avx2 && (a & (1u << 4));
    f.amx_bf16 = f.amx_bf16 && (a & (1u << 5));
  } else {
    f.amx_bf16 = false;
  }
#endif
  return f;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = read_cpu_features();
  return f;
}

/// oneDNN's int8 GEMM sums exactly in int32 only with VNNI or AMX (without,
/// its vpmaddubsw pair sums saturate at int16).
bool cpu_has_exact_onednn_int8() {
  const CpuFeatures& f = cpu_features();
  return f.avx512_vnni || f.avx_vnni || f.amx_int8;
}

}  // namespace

bool onednn_may_use_amx() {
  static const bool amx = [] {
    if (!cpu_features().amx_int8) {
      return false;
    }
    for (const char* var : {"ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"}) {
      const char* env = std::getenv(var);
      if (env != nullptr && *env != '\0') {
        const std::string cap(env);
        return cap.find("AMX") != std::string::npos || cap.find("amx") != std::string::npos ||
            cap == "ALL" || cap == "all";
      }
    }
    return true;
  }();
  return amx;
}

namespace {

#if QTORCHEXT_HAVE_AVX2
/// Whether this process may use AMX tiles: Linux hands out the tile state
/// only on request (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA), once per
/// process; a refusal (an old kernel, a sandbox) leaves the set unoffered.
bool amx_tiles_granted() {
  static const bool granted = [] {
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return granted;
}

/// The avx512_vnni table with weight-only layers on AMX-BF16 tiles.
const KernelTable& amx_kernels() {
  static const KernelTable table = [] {
    KernelTable t = kAvx512VnniKernels;
    t.name = "avx512_amx";
    t.weight_only_amx = true;
    return t;
  }();
  return table;
}
#endif

const KernelTable* table_named(const std::string& name) {
  if (name == "default") {
    return &kGenericKernels;
  }
#if QTORCHEXT_HAVE_AVX2
  const CpuFeatures& f = cpu_features();
  if (name == "avx2" && f.avx2) {
    return &kAvx2Kernels;
  }
  if (name == "avx2_vnni" && f.avx2 && cpu_has_exact_onednn_int8()) {
    return &kAvx2VnniKernels;
  }
  if (name == "avx512" && f.avx512) {
    return &kAvx512Kernels;
  }
  if (name == "avx512_vnni" && f.avx512_vnni) {
    return &kAvx512VnniKernels;
  }
  if (name == "avx512_amx" && f.avx512_vnni && f.amx_bf16 && amx_tiles_granted()) {
    return &amx_kernels();
  }
#endif
  return nullptr;
}

/// The names this CPU can run, in increasing preference.
std::vector<std::string> runnable() {
  std::vector<std::string> names;
  for (const char* n : {"default", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "avx512_amx"}) {
    if (table_named(n) != nullptr) {
      names.emplace_back(n);
    }
  }
  return names;
}

const KernelTable* best_table() {
  return table_named(runnable().back());
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
    // Other names (ATen's zvector, sve256, ...; a table this CPU lacks)
    // mean "the best there is" here.
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
  return qtorchext::cpu::runnable();
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
