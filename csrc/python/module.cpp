// qtorchext._C: the Python extension module. It links libqtorchext (whose
// static initialisers register the torch.ops.qtorchext ops) and exposes
// build information, the CPU kernel selection and the quant_meta encoding and
// conversion plan (qtorchext/quant_meta.h); the ops themselves are called
// through torch.ops.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "ops/layer/derived_weights.h"
#include "qtorchext/qtorchext.h"

namespace {

std::optional<at::ScalarType> scalar_type_of(const std::string& name) {
  if (name.empty()) return std::nullopt;
  if (name == "float32") return at::kFloat;
  if (name == "float16") return at::kHalf;
  if (name == "bfloat16") return at::kBFloat16;
  TORCH_CHECK(false, "scale dtype must be float32, float16 or bfloat16, got ", name);
}

}  // namespace

#ifndef QTORCHEXT_WITH_CUDA
#define QTORCHEXT_WITH_CUDA 0
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "qtorchext native module";
  m.attr("__version__") = qat::version();
  m.attr("torch_version") = QTORCHEXT_TORCH_VERSION;
  m.attr("with_cuda") = static_cast<bool>(QTORCHEXT_WITH_CUDA);
  m.def("cpu_capability", &qat::cpu_capability, "Instruction set of the CPU kernels in use.");
  m.def(
      "choose_precisions",
      [](const std::vector<std::vector<double>>& error, const std::vector<std::vector<int64_t>>& bytes,
         int64_t budget_bytes) {
        const qat::PrecisionChoice c = qat::choose_precisions(error, bytes, budget_bytes);
        return std::make_tuple(c.option, c.bytes, c.error);
      },
      "qat::choose_precisions: (option per layer, bytes, error) of the least error within the budget.");
  m.def(
      "precision_frontier",
      [](const std::vector<std::vector<double>>& error, const std::vector<std::vector<int64_t>>& bytes,
         int64_t points) { return qat::precision_frontier(error, bytes, points); },
      "qat::precision_frontier: (bytes, error) of the best choice at `points` budgets.");
  m.def(
      "supported_cpu_capabilities",
      &qat::supported_cpu_capabilities,
      "Instruction sets this CPU can run, best last.");
  m.def(
      "set_cpu_capability",
      &qat::set_cpu_capability,
      pybind11::arg("name"),
      "Selects the CPU kernels ('default' or 'avx2').");
  // This module's functions raise c10::Error (TORCH_CHECK) as RuntimeError
  // and c10::ValueError (TORCH_CHECK_VALUE) as ValueError, with the message
  // and no C++ trace. Local: torch's own translations stay as they are.
  pybind11::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });
  m.attr("quant_format_version") = qat::kFormatVersion;
  m.def(
      "_derived_weights",
      &qtorchext::layer::derived_weight_entries,
      "Derived weight layouts of converted layers: (kind, dtype, dim, alive) each.");
  m.def(
      "plan_quant_meta",
      [](int64_t layer, int64_t weight_kind, int64_t weight_quant_min, int64_t weight_quant_max,
         int64_t group_size, std::optional<int64_t> ch_axis, const std::string& scale_dtype,
         int64_t input_kind, int64_t input_quant_min, int64_t input_quant_max,
         bool input_per_tensor, int64_t activation) {
        qat::WeightQuantizerSpec w;
        w.kind = weight_kind, w.quant_min = weight_quant_min, w.quant_max = weight_quant_max;
        w.group_size = group_size, w.ch_axis = ch_axis, w.scale_dtype = scalar_type_of(scale_dtype);
        qat::InputQuantizerSpec in;
        in.kind = input_kind, in.quant_min = input_quant_min, in.quant_max = input_quant_max;
        in.per_tensor = input_per_tensor;
        return qat::plan_quant_meta(layer, w, in, activation).to_list();
      },
      "The conversion plan: quant_meta (12 entries) of a layer with these quantizers.");
  m.def(
      "check_quant_meta",
      [](const std::vector<int64_t>& entries, const std::string& where) {
        return qat::QuantMeta::from_list(entries, where).to_list();
      },
      pybind11::arg("entries"), pybind11::arg("where") = "",
      "Validates quant_meta entries (a newer format version is refused); returns them.");
  m.def(
      "describe_quant_meta",
      [](const std::vector<int64_t>& entries) {
        return qat::QuantMeta::from_list(entries, "").describe();
      },
      "A readable description of quant_meta entries.");
  m.def(
      "layer_buffers",
      [](const std::vector<int64_t>& entries, int64_t out_features, int64_t in_features,
         bool has_bias, const std::vector<int64_t>& float_weight_shape) {
        std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, std::string, double>>
            out;
        for (const qat::LayerBuffer& b : qat::layer_buffers(
                 qat::QuantMeta::from_list(entries, ""), out_features, in_features, has_bias,
                 float_weight_shape)) {
          out.emplace_back(b.name, b.role, b.shape, c10::toString(b.dtype), b.fill);
        }
        return out;
      },
      "The buffers of a converted layer (qat::layer_buffers): (name, role, shape, dtype, "
      "initial value) each, in the layer ops' argument order.");
}
