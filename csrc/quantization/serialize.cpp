// State dicts in the format of Python's torch.save(module.state_dict()).
#include "qtorchext/serialize.h"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <set>

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/import_read.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/smooth_quant.h"

namespace qat {
namespace {

/// Every parameter and buffer of the module tree, by dotted name.
std::vector<std::pair<std::string, at::Tensor>> named_state(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    out.emplace_back(item.key(), item.value());
  }
  return out;
}

/// The 1-D state whose size follows the data: per-channel observer
/// statistics and the qparams of fake quantizers over a per-channel observer
/// (sized by the first batch; a loaded file sets it). Everything else must
/// match the module's shape, as Python's load_state_dict requires.
std::set<std::string> resizable_state(torch::nn::Module& module) {
  std::set<std::string> out;
  for (const auto& item : module.named_modules("", /*include_self=*/true)) {
    torch::nn::Module& m = *item.value();
    bool per_channel = false;
    if (auto* obs = as_observer(m)) {
      per_channel = obs->per_channel();
    } else if (as_fake_quantize(m) != nullptr) {
      for (const auto& child : m.named_children()) {
        if (child.key() == "activation_post_process") {
          auto* obs = as_observer(*child.value());
          per_channel = obs != nullptr && obs->per_channel();
        }
      }
    }
    if (!per_channel) {
      continue;
    }
    const std::string prefix = item.key().empty() ? "" : item.key() + ".";
    for (const auto& b : m.named_buffers(/*recurse=*/false)) {
      if (b.value().dim() == 1) {
        out.insert(prefix + b.key());
      }
    }
    for (const auto& p : m.named_parameters(/*recurse=*/false)) {
      if (p.value().dim() == 1) {
        out.insert(prefix + p.key());
      }
    }
  }
  return out;
}

void sync_fake_quantize_flags(torch::nn::Module& module) {
  for (const auto& child : module.modules(/*include_self=*/true)) {
    if (auto* fq = as_fake_quantize(*child)) {
      fq->sync_flags();
    }
    if (auto* obs = dynamic_cast<ObserverInterface*>(child.get())) {
      obs->state_loaded();  // a histogram's synchronisation base: the loaded state
    }
  }
}

}  // namespace

void save_state_dict(const torch::nn::Module& module, const std::string& path) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, t] : named_state(module)) {
    dict.insert(name, t.detach().cpu());
  }
  // torch::jit::pickle_save tags the dict with its static type, which
  // torch.load(weights_only=True) refuses; pickle it untagged, as a plain dict.
  std::vector<char> pickled;
  torch::jit::Pickler pickler(
      [&](const char* buf, size_t size) { pickled.insert(pickled.end(), buf, buf + size); },
      nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(c10::IValue(dict));
  pickler.stop();
  std::vector<char> bytes;
  {
    caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t n) {
      const char* c = static_cast<const char*>(data);
      bytes.insert(bytes.end(), c, c + n);
      return n;
    });
    torch::jit::writeArchiveAndTensors("data", pickled.data(), pickled.size(), pickler.tensorData(), writer);
  }
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TORCH_CHECK(out.good(), "save_state_dict: cannot open ", tmp, " for writing");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    TORCH_CHECK(out.good(), "save_state_dict: writing ", tmp, " failed");
  }
  TORCH_CHECK(
      std::rename(tmp.c_str(), path.c_str()) == 0,
      "save_state_dict: cannot move ", tmp, " to ", path);
}

namespace {
/// The first line of an exception's message (torch's carry a C++ trace).
std::string first_line(const char* what) {
  const std::string s(what);
  return s.substr(0, s.find('\n'));
}
}  // namespace

std::map<std::string, at::Tensor> detail::read_state_file(const std::string& path) {
  {
    std::ifstream in(path, std::ios::binary);
    TORCH_CHECK(in.good(), "load_state_dict: cannot open ", path);
  }
  constexpr const char* hint =
      " (write it with qtorchext.save_state_dict(module, path) or "
      "torch.save(dict(module.state_dict()), path): LibTorch cannot read the OrderedDict that "
      "module.state_dict() returns)";
  // Read through the file (bounds-checked reads), not a copy in memory: a truncated
  // archive is an error here, never a read past its end.
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "load_state_dict: ", path, " is not a complete PyTorch archive "
                "(truncated, or not written by torch.save / qat::save_state_dict): ",
                first_line(e.what()));
  }
  c10::IValue value;
  try {
    value = torch::jit::readArchiveAndTensors(
        "data", "", "", std::nullopt, std::nullopt, std::nullopt, *reader);
  } catch (const std::exception& e) {
    // a complete archive whose pickle LibTorch cannot read: most often the OrderedDict
    // of torch.save(module.state_dict())
    TORCH_CHECK(false, "load_state_dict: cannot read ", path, " as a dict of tensors", hint, ": ",
                first_line(e.what()));
  }
  TORCH_CHECK(value.isGenericDict(), "load_state_dict: ", path, " holds a ", value.tagKind(),
              ", not a dict of tensors", hint);
  std::map<std::string, at::Tensor> saved;
  for (const auto& entry : value.toGenericDict()) {
    TORCH_CHECK(entry.key().isString() && entry.value().isTensor(),
                "load_state_dict: ", path, " is not a dict of name -> tensor");
    saved.emplace(entry.key().toStringRef(), entry.value().toTensor());
  }
  return saved;
}

std::vector<std::string> detail::converted_paths(const std::map<std::string, at::Tensor>& state) {
  std::vector<std::string> out;
  const std::string suffix = "quant_meta";
  for (const auto& [key, _] : state) {
    if (key == suffix) {
      out.emplace_back("");
    } else if (key.size() > suffix.size() + 1 &&
               key.compare(key.size() - suffix.size() - 1, suffix.size() + 1, "." + suffix) == 0) {
      out.push_back(key.substr(0, key.size() - suffix.size() - 1));
    }
  }
  return out;
}

void load_state_dict(torch::nn::Module& module, const std::string& path) {
  detail::load_state(module, detail::read_state_file(path), path);
}

void detail::load_state(
    torch::nn::Module& module,
    const std::map<std::string, at::Tensor>& saved,
    const std::string& path) {
  // a converted file into float layers: the way to load it
  std::map<std::string, torch::nn::Module*> modules;
  for (const auto& item : module.named_modules()) {
    modules.emplace(item.key(), item.value().get());
  }
  for (const std::string& layer : converted_paths(saved)) {
    const auto it = modules.find(layer);
    if (it == modules.end()) {
      continue;  // reported below as unexpected keys
    }
    const auto* q = nn::as_quantizable(*it->second);
    TORCH_CHECK_VALUE(
        q != nullptr && q->stage() == nn::Stage::kQuantized, "load_state_dict: ", path,
        " holds the converted layer '", layer.empty() ? "(the model)" : layer,
        "' where the module has a ", q == nullptr ? it->second->name() : "float or QAT layer",
        ": load a converted model with qat::load_quantized(model, path), which rebuilds those "
        "layers from the file");
  }
  // SmoothQuant factors: checked now; a layer made before the smoothing takes them once
  // every check has passed (below)
  struct Adopt {
    nn::LinearImpl* layer;
    std::string key, where;
  };
  std::vector<Adopt> adopt;
  for (const auto& [name, m] : modules) {
    if (auto* linear = dynamic_cast<nn::LinearImpl*>(m)) {
      const std::string key = name.empty() ? "input_smooth" : name + ".input_smooth";
      const auto it = saved.find(key);
      if (it == saved.end()) {
        continue;
      }
      const std::string where = "load_state_dict: " + path + ": '" + (name.empty() ? "(the model)" : name) + "': ";
      check_smooth_factors(it->second, linear->options.in_features(), where + "input_smooth");
      if (!linear->input_smooth.defined()) {
        adopt.push_back({linear, key, where});
      }
    }
  }
  const auto own = named_state(module);
  std::set<std::string> missing, unexpected;
  for (const auto& [name, _] : own) {
    if (!saved.count(name)) {
      missing.insert(name);
    }
  }
  std::set<std::string> own_names;
  for (const auto& [name, _] : own) {
    own_names.insert(name);
  }
  for (const Adopt& a : adopt) {
    own_names.insert(a.key);
  }
  for (const auto& [name, _] : saved) {
    if (!own_names.count(name)) {
      unexpected.insert(name);
    }
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg;
    for (const auto& n : missing) {
      msg += (msg.empty() ? "" : ", ") + std::string("missing ") + n;
    }
    for (const auto& n : unexpected) {
      msg += (msg.empty() ? "" : ", ") + std::string("unexpected ") + n;
    }
    TORCH_CHECK(false, "load_state_dict: ", path, " does not match the module: ", msg);
  }
  // Check everything first, then copy: a failed load leaves the module as is.
  const std::set<std::string> resizable_names = resizable_state(module);
  for (const auto& [name, t] : own) {
    const std::string suffix = "quant_meta";
    if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      const std::string layer = name.size() > suffix.size() ? name.substr(0, name.size() - suffix.size() - 1) : "";
      const std::string where = "load_state_dict: " + path + ": layer '" + (layer.empty() ? "(the model)" : layer) + "': ";
      const auto mine = nn::QuantMeta::from_tensor(t, where);
      const auto theirs = nn::QuantMeta::from_tensor(saved.at(name), where);
      TORCH_CHECK(mine == theirs, where, "the file holds a layer quantized as ", theirs.describe(),
                  ", but this model's layer is ", mine.describe(), " (another architecture, bit width or fused activation)");
      // the layer's stored qparams (scales, zero points) as the file holds them
      const std::string prefix = name.substr(0, name.size() - suffix.size());
      std::vector<std::pair<std::string, at::Tensor>> layer_state;
      for (const auto& [key, value] : saved) {
        if (key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0 &&
            key.find('.', prefix.size()) == std::string::npos) {
          layer_state.emplace_back(key.substr(prefix.size()), value);
        }
      }
      check_layer_qparams(theirs, layer_state, where);
    }
    const at::Tensor& src = saved.at(name);
    // as Python's load_state_dict: values convert within floating and within
    // integer dtypes (a float64 file loads into float32 state)
    const auto kind = [](at::ScalarType d) {
      return at::isFloatingType(d) ? 1 : (d == at::kBool ? 2 : (at::isIntegralType(d, false) ? 3 : 4));
    };
    TORCH_CHECK(kind(src.scalar_type()) == kind(t.scalar_type()), "load_state_dict: ", name,
                " has dtype ", src.scalar_type(), " in ", path, " but ", t.scalar_type(),
                " in the module");
    // a converted layer's integer codes, zero points and quant_meta: exactly their dtype
    // (a copy would wrap out-of-range codes silently)
    const auto dot = name.rfind('.');
    const std::string layer_meta = (dot == std::string::npos ? "" : name.substr(0, dot + 1)) + "quant_meta";
    TORCH_CHECK_VALUE(
        at::isFloatingType(t.scalar_type()) || !saved.count(layer_meta) ||
            src.scalar_type() == t.scalar_type(),
        "load_state_dict: ", path, ": ", name, " is ", src.scalar_type(), " in the file, but the "
        "converted layer stores it as ", t.scalar_type());
    const bool resizable = resizable_names.count(name) != 0 && src.dim() == 1;
    TORCH_CHECK(src.sizes() == t.sizes() || resizable, "load_state_dict: ", name, " has shape ",
                src.sizes(), " in ", path, " but ", t.sizes(), " in the module");
  }
  torch::NoGradGuard guard;
  for (const Adopt& a : adopt) {
    const at::Tensor& src = saved.at(a.key);
    a.layer->load_input_smooth(&src, a.where);
    a.layer->input_smooth.copy_(src);
  }
  for (auto [name, t] : own) {
    const at::Tensor& src = saved.at(name);
    if (src.sizes() != t.sizes()) {
      if (t.requires_grad()) {
        t.set_data(at::empty(src.sizes(), t.options()));
      } else {
        t.resize_(src.sizes());
      }
    }
    t.copy_(src);
  }
  sync_fake_quantize_flags(module);
}

}  // namespace qat
