// prepare / convert / fuse_modules for LibTorch models (see quantize.h).
#include "qtorchext/quantize.h"

#include <fmt/format.h>

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/moduledict.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>

#include <set>
#include <utility>

#include "qtorchext/fake_quantize.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/serialize.h"

namespace qat {
namespace {

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

bool is_container(torch::nn::Module& m) {
  return dynamic_cast<torch::nn::SequentialImpl*>(&m) || dynamic_cast<torch::nn::ModuleListImpl*>(&m) ||
      dynamic_cast<torch::nn::ModuleDictImpl*>(&m);
}

/// The drop-in for a plain torch::nn quantizable layer (sharing its
/// tensors), or nullptr; `type` names the drop-in.
std::shared_ptr<torch::nn::Module> drop_in_for(const std::shared_ptr<torch::nn::Module>& m, std::string* type) {
  if (auto l = std::dynamic_pointer_cast<torch::nn::LinearImpl>(m)) {
    *type = "qat::nn::Linear";
    return nn::LinearImpl::from_torch(*l);
  }
  if (auto c = std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m)) {
    *type = "qat::nn::Conv2d";
    return nn::Conv2dImpl::from_torch(*c);
  }
  if (auto c = std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(m)) {
    *type = "qat::nn::Conv1d";
    return nn::Conv1dImpl::from_torch(*c);
  }
  if (auto e = std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(m)) {
    *type = "qat::nn::Embedding";
    return nn::EmbeddingImpl::from_torch(*e);
  }
  if (auto b = std::dynamic_pointer_cast<torch::nn::BatchNorm2dImpl>(m)) {
    *type = "qat::nn::BatchNorm2d";
    return nn::BatchNorm2dImpl::from_torch(b);
  }
  if (auto b = std::dynamic_pointer_cast<torch::nn::BatchNorm1dImpl>(m)) {
    *type = "qat::nn::BatchNorm1d";
    return nn::BatchNorm1dImpl::from_torch(b);
  }
  return nullptr;
}

/// A plain torch::nn Linear / Conv1d / Conv2d / Embedding, or a subclass of one.
bool plain_or_subclass(const std::shared_ptr<torch::nn::Module>& m) {
  return std::dynamic_pointer_cast<torch::nn::LinearImpl>(m) ||
      std::dynamic_pointer_cast<torch::nn::Conv1dImpl>(m) ||
      std::dynamic_pointer_cast<torch::nn::Conv2dImpl>(m) ||
      std::dynamic_pointer_cast<torch::nn::EmbeddingImpl>(m);
}

/// Exactly a plain torch::nn quantizable layer: a subclass may have its own
/// forward, which a drop-in would replace (as torch.ao, exact types only).
bool plain_quantizable(const std::shared_ptr<torch::nn::Module>& m) {
  if (!m) {
    return false;
  }
  const std::type_info& t = typeid(*m);
  return t == typeid(torch::nn::LinearImpl) || t == typeid(torch::nn::Conv1dImpl) ||
      t == typeid(torch::nn::Conv2dImpl) || t == typeid(torch::nn::EmbeddingImpl);
}

/// Typed holder for a module pointer of unknown type in a Sequential.
template <class T>
bool push_typed(torch::nn::SequentialImpl& seq, const std::string& name, const std::shared_ptr<torch::nn::Module>& m) {
  if (auto t = std::dynamic_pointer_cast<T>(m)) {
    seq.push_back(name, t);
    return true;
  }
  return false;
}

/// Rebuilds a container in place with entries replaced as `replace` says
/// (nullptr keeps the entry).
void rebuild(
    torch::nn::Module& container,
    const std::function<std::shared_ptr<torch::nn::Module>(const std::string&, const std::shared_ptr<torch::nn::Module>&)>&
        replace) {
  if (auto* seq = dynamic_cast<torch::nn::SequentialImpl*>(&container)) {
    torch::nn::SequentialImpl next;
    const auto names = seq->named_children();
    size_t i = 0;
    for (const auto& any : *seq) {
      const std::string& name = names[i++].key();
      const auto repl = replace(name, any.ptr());
      if (!repl) {
        next.push_back(name, any);
      } else if (!push_typed<nn::LinearImpl>(next, name, repl) && !push_typed<nn::Conv2dImpl>(next, name, repl) &&
                 !push_typed<nn::Conv1dImpl>(next, name, repl) && !push_typed<nn::EmbeddingImpl>(next, name, repl) &&
                 !push_typed<nn::BatchNorm2dImpl>(next, name, repl) && !push_typed<nn::BatchNorm1dImpl>(next, name, repl) &&
                 !push_typed<torch::nn::IdentityImpl>(next, name, repl)) {
        TORCH_INTERNAL_ASSERT(false, "unexpected replacement in a Sequential");
      }
    }
    next.train(seq->is_training());
    *seq = std::move(next);
  } else if (auto* list = dynamic_cast<torch::nn::ModuleListImpl*>(&container)) {
    torch::nn::ModuleListImpl next;
    size_t i = 0;
    for (const auto& m : *list) {
      const auto repl = replace(std::to_string(i++), m);
      next.push_back(repl ? repl : m);
    }
    next.train(list->is_training());
    *list = std::move(next);
  } else if (auto* dict = dynamic_cast<torch::nn::ModuleDictImpl*>(&container)) {
    std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> items;
    for (const auto& item : dict->items()) {
      const auto repl = replace(item.first, item.second);
      items.emplace_back(item.first, repl ? repl : item.second);
    }
    torch::nn::ModuleDictImpl next(items);
    next.train(dict->is_training());
    *dict = std::move(next);
  }
}

constexpr std::string_view kTypeKey = "type:";

bool is_type_key(const std::string& key) {
  return key.rfind(kTypeKey, 0) == 0;
}

std::optional<QConfig> lookup(
    const std::string& path,
    const torch::nn::Module& m,
    const QConfig& qconfig,
    const QConfigMap& per_module) {
  // the longest matching path, then the layer kind, then "" (as Python's dict)
  const std::string* best = nullptr;
  for (const auto& [key, _] : per_module) {
    if (!key.empty() && !is_type_key(key) && (path == key || path.rfind(key + ".", 0) == 0)) {
      if (best == nullptr || key.size() > best->size()) {
        best = &key;
      }
    }
  }
  if (best != nullptr) {
    return per_module.at(*best);
  }
  for (const auto& [key, value] : per_module) {
    if (is_type_key(key) && detail::is_layer_kind(m, key.substr(kTypeKey.size()), "qat::prepare")) {
      return value;
    }
  }
  // Embeddings only when asked for by path or "type:Embedding", as torch.ao and
  // torchao: the default qconfig covers Linear and convolutions.
  if (detail::is_layer_kind(m, "Embedding", "qat::prepare")) {
    return std::nullopt;
  }
  if (const auto it = per_module.find(""); it != per_module.end()) {
    return it->second;
  }
  return qconfig;
}

/// qc with its per-group weight quantizer made per output channel (the same
/// observer kind and options otherwise).
QConfig per_channel_weights(const QConfig& qc) {
  QConfig out = qc;
  out.weight = [grouped = qc.weight]() -> std::shared_ptr<torch::nn::Module> {
    std::shared_ptr<torch::nn::Module> m = grouped();
    auto* f = dynamic_cast<FakeQuantizeImpl*>(m.get());
    if (f == nullptr) {
      return m;
    }
    ObserverOptions o = f->observer().observer_options();
    o.group_size(std::nullopt).ch_axis(0);
    torch::nn::Module* obs = f->activation_post_process.get();
    std::shared_ptr<torch::nn::Module> next;
    if (dynamic_cast<MSEObserverImpl*>(obs)) {
      next = MSEObserver(o).ptr();
    } else if (dynamic_cast<MovingAverageMinMaxObserverImpl*>(obs)) {
      next = MovingAverageMinMaxObserver(o).ptr();
    } else if (dynamic_cast<MinMaxObserverImpl*>(obs)) {
      next = MinMaxObserver(o).ptr();
    } else {
      TORCH_CHECK(false, "group_fallback 'per_channel': cannot make a per-channel ", obs->name());
    }
    return FakeQuantize(next, f->options).ptr();
  };
  return out;
}

struct PrepareContext {
  const std::string& group_fallback;
  std::vector<std::string> fell_back;
  std::vector<std::string> subclasses;  // subclasses of plain layers, left float
};

void prepare_children(
    torch::nn::Module& parent,
    const std::string& prefix,
    const QConfig& qconfig,
    const QConfigMap& per_module,
    const detail::LayerFilter& accept,
    int64_t& count,
    PrepareContext& ctx) {
  if (is_container(parent)) {
    // Plain layers in containers become drop-ins (forward goes through the
    // container, so replacing the entries takes effect).
    rebuild(parent, [&](const std::string& name, const std::shared_ptr<torch::nn::Module>& m) {
      std::string type;
      const std::string path = join(prefix, name);
      if (!plain_or_subclass(m) || !accept(*m) || !lookup(path, *m, qconfig, per_module)) {
        return std::shared_ptr<torch::nn::Module>();
      }
      if (!plain_quantizable(m) && !per_module.count(path)) {  // a subclass, not named
        ctx.subclasses.push_back(path + " (" + m->name() + ")");
        return std::shared_ptr<torch::nn::Module>();
      }
      return drop_in_for(m, &type);
    });
  }
  for (const auto& item : parent.named_children()) {
    const std::string path = join(prefix, item.key());
    const auto& child = item.value();
    if (auto* q = nn::as_quantizable(*child)) {
      if (const auto qc = lookup(path, *child, qconfig, per_module); qc && q->stage() == nn::Stage::kFloat && accept(*child)) {
        try {
          q->prepare(*qc);
        } catch (const c10::Error& e) {
          const std::string why = e.what_without_backtrace();
          if (why.find("does not divide") == std::string::npos) {
            throw;
          }
          TORCH_CHECK_VALUE(
              !ctx.group_fallback.empty(), "qat::prepare: layer '", path, "': ", why,
              ". Leave it in float with a nullopt qconfig for '", path, "', give it a qconfig that "
              "fits it, or pass group_fallback \"per_channel\" or \"float\" for every such layer");
          ctx.fell_back.push_back(path);
          if (ctx.group_fallback == "float") {
            continue;
          }
          q->prepare(per_channel_weights(*qc));
        }
        ++count;
      }
      continue;
    }
    if (plain_or_subclass(child) && !plain_quantizable(child) && accept(*child) &&
        lookup(path, *child, qconfig, per_module)) {
      if (!is_container(parent)) {  // (a container's entries were listed above)
        ctx.subclasses.push_back(path + " (" + child->name() + ")");
      }
      continue;
    }
    if (plain_quantizable(child) && accept(*child) && lookup(path, *child, qconfig, per_module)) {
      std::string type;
      drop_in_for(child, &type);
      TORCH_CHECK(
          false, "qat::prepare: module '", path, "' is a plain ", child->name(),
          " held directly by '", prefix.empty() ? "the model" : prefix,
          "'; its forward would bypass quantization. Declare it as ", type,
          " (same options and constructor), or give it a nullopt qconfig to keep it in float.");
    }
    prepare_children(*child, path, qconfig, per_module, accept, count, ctx);
  }
}

std::pair<torch::nn::Module*, std::string> parent_of(torch::nn::Module& model, const std::string& path) {
  const auto dot = path.rfind('.');
  if (dot == std::string::npos) {
    return {&model, path};
  }
  const std::string parent_path = path.substr(0, dot);
  for (const auto& item : model.named_modules()) {
    if (item.key() == parent_path) {
      return {item.value().get(), path.substr(dot + 1)};
    }
  }
  TORCH_CHECK(false, "fuse_modules: no module '", parent_path, "' in the model");
}

std::shared_ptr<torch::nn::Module> find(torch::nn::Module& model, const std::string& path) {
  for (const auto& item : model.named_modules()) {
    if (item.key() == path) {
      return item.value();
    }
  }
  TORCH_CHECK(false, "fuse_modules: no module '", path, "' in the model");
}

/// Replaces the entry `name` of `parent` by `module`: in place for
/// containers, by re-registration otherwise.
void set_child(torch::nn::Module& parent, const std::string& name, std::shared_ptr<torch::nn::Module> module) {
  if (is_container(parent)) {
    rebuild(parent, [&](const std::string& n, const std::shared_ptr<torch::nn::Module>&) {
      return n == name ? module : std::shared_ptr<torch::nn::Module>();
    });
  } else {
    parent.replace_module(name, module);
  }
}

template <class F>
void for_each_fake_quantize(torch::nn::Module& model, F&& f) {
  for (const auto& m : model.modules()) {
    if (auto* fq = as_fake_quantize(*m)) {
      f(*fq);
    }
  }
}

template <class F>
void for_each_conv(torch::nn::Module& model, F&& f) {
  for (const auto& m : model.modules()) {
    if (auto* c = dynamic_cast<nn::Conv2dImpl*>(m.get())) {
      f(*c);
    } else if (auto* c1 = dynamic_cast<nn::Conv1dImpl*>(m.get())) {
      f(*c1);
    }
  }
}

}  // namespace

int64_t prepare(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const QConfigMap& per_module,
    const std::string& group_fallback) {
  TORCH_CHECK_VALUE(
      model.is_training(), "qat::prepare: the model is in eval mode; quantization-aware training "
      "trains it, so call model->train() first (as torch.ao's prepare_qat requires). For "
      "post-training quantization use qat::prepare_ptq, qat::quantize_static or "
      "qat::quantize_dynamic.");
  return detail::prepare_layers(
      model, qconfig, per_module, [](const torch::nn::Module&) { return true; }, group_fallback);
}

namespace {
template <class Ours, class Torch>
bool is_a(const torch::nn::Module& m) {
  return dynamic_cast<const Ours*>(&m) != nullptr || dynamic_cast<const Torch*>(&m) != nullptr;
}
}  // namespace

bool detail::is_layer_kind(const torch::nn::Module& m, const std::string& kind, const char* what) {
  if (kind == "Linear") {
    return is_a<nn::LinearImpl, torch::nn::LinearImpl>(m);
  }
  if (kind == "Conv1d") {
    return is_a<nn::Conv1dImpl, torch::nn::Conv1dImpl>(m);
  }
  if (kind == "Conv2d") {
    return is_a<nn::Conv2dImpl, torch::nn::Conv2dImpl>(m);
  }
  if (kind == "Embedding") {
    return is_a<nn::EmbeddingImpl, torch::nn::EmbeddingImpl>(m);
  }
  TORCH_CHECK(false, what, ": layer kinds are Linear, Conv1d, Conv2d or Embedding, got '", kind, "'");
}

int64_t detail::prepare_layers(
    torch::nn::Module& model,
    const QConfig& qconfig,
    const QConfigMap& per_module,
    const LayerFilter& accept,
    const std::string& group_fallback) {
  TORCH_CHECK_VALUE(
      group_fallback.empty() || group_fallback == "per_channel" || group_fallback == "float",
      "qat::prepare: group_fallback must be \"\", \"per_channel\" or \"float\", got \"",
      group_fallback, "\"");
  std::set<std::string> paths;
  for (const auto& item : model.named_modules()) {
    paths.insert(item.key());
  }
  for (const auto& [key, _] : per_module) {
    if (is_type_key(key)) {
      is_layer_kind(model, key.substr(kTypeKey.size()), "qat::prepare");  // a known kind
      continue;
    }
    TORCH_CHECK(key.empty() || paths.count(key), "qat::prepare: the qconfig map names '", key,
                "', which is not a module of the model");
  }
  int64_t count = 0;
  PrepareContext ctx{group_fallback, {}, {}};
  prepare_children(model, "", qconfig, per_module, accept, count, ctx);
  if (!ctx.subclasses.empty()) {
    std::string names;
    for (const auto& p : ctx.subclasses) {
      names += (names.empty() ? "" : ", ") + p;
    }
    TORCH_WARN(
        "qat::prepare: left in float ", ctx.subclasses.size(), " subclass(es) of torch::nn layers, "
        "whose forward may differ from the base layer's: ", names, ". To quantize one as its base "
        "layer inside a container, name its path in the qconfig map.");
  }
  if (!ctx.fell_back.empty()) {
    std::string names;
    for (const auto& p : ctx.fell_back) {
      names += (names.empty() ? "'" : ", '") + p + "'";
    }
    TORCH_WARN(
        "qat::prepare: the weight group size does not divide the width of ", ctx.fell_back.size(),
        " layer(s), left ", group_fallback == "float" ? "in float" : "with weights per channel", ": ",
        names);
  }
  if (count == 0) {
    for (const auto& item : model.named_modules()) {
      const auto* q = nn::as_quantizable(*item.value());
      TORCH_CHECK(
          q == nullptr || q->stage() == nn::Stage::kFloat, "qat::prepare: the model is already ",
          q->stage() == nn::Stage::kQat ? "prepared" : "converted", " ('",
          item.key().empty() ? "the model" : item.key(), "' is a ",
          q->stage() == nn::Stage::kQat ? "QAT" : "quantized", " layer); prepare a float model");
    }
  }
  TORCH_CHECK(count > 0, "qat::prepare: found no layer to quantize (qtorchext drop-in layers, or "
              "torch::nn Linear / Conv1d / Conv2d inside Sequential, ModuleList or ModuleDict; "
              "Embedding layers only when the qconfig map names them, by path or "
              "\"type:Embedding\")");
  return count;
}

namespace {
/// Whether q is a static (observed or learned) input quantizer that never saw
/// data: its observer's min_val still +inf and, for a learnable one, its
/// scale and zero point still the initial 1 and 0.
bool never_observed(torch::nn::Module* q) {
  std::shared_ptr<torch::nn::Module> obs;
  const LearnableFakeQuantizeImpl* learnable = nullptr;
  if (auto* f = dynamic_cast<FakeQuantizeImpl*>(q)) {
    obs = f->activation_post_process;
  } else if (auto* l = dynamic_cast<LearnableFakeQuantizeImpl*>(q)) {
    obs = l->activation_post_process;
    learnable = l;
  }
  if (!obs) {
    return false;
  }
  const at::Tensor seen = nn::find_buffer(*obs, "min_val");
  if (!seen.defined() || (seen.numel() > 0 && !seen.isinf().all().item<bool>())) {
    return false;
  }
  return learnable == nullptr ||
      (learnable->scale.eq(1).all().item<bool>() && learnable->zero_point.eq(0).all().item<bool>());
}
}  // namespace

int64_t convert(torch::nn::Module& model, bool allow_unobserved) {
  std::vector<nn::QuantizableLayer*> layers;
  std::vector<std::string> paths, unobserved;
  for (const auto& item : model.named_modules()) {
    auto* q = nn::as_quantizable(*item.value());
    if (q != nullptr && q->stage() == nn::Stage::kQat) {
      layers.push_back(q);
      paths.push_back(item.key());
      if (never_observed(q->input_quantizer())) {
        unobserved.push_back(item.key().empty() ? "(the model itself)" : item.key());
      }
    }
  }
  if (layers.empty()) {
    bool converted = false;
    for (const auto& m : model.modules()) {
      auto* q = nn::as_quantizable(*m);
      converted = converted || (q != nullptr && q->stage() == nn::Stage::kQuantized);
    }
    TORCH_CHECK(!converted, "qat::convert: the model is already converted (it holds quantized "
                "layers and no QAT ones)");
    TORCH_CHECK(false, "qat::convert: the model has no QAT layers; call qat::prepare(model, "
                "qconfig) first");
  }
  if (!unobserved.empty() && !allow_unobserved) {
    std::string more;
    if (unobserved.size() > 1) {
      more = fmt::format(" (and {} more layer{})", unobserved.size() - 1, unobserved.size() > 2 ? "s" : "");
    }
    TORCH_CHECK_VALUE(
        false, "qat::convert: the input quantizer of '", unobserved[0], "'", more,
        " never observed data, so its scale would be the initial 1.0 and the converted layer "
        "would compute something else than intended. Run calibration batches through the "
        "prepared model (qat::calibrate) or train it before converting; check that the batches "
        "are not empty and reach this layer. Pass allow_unobserved = true to convert anyway (as "
        "when converting a fresh model only to load a converted checkpoint into it).");
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    nn::QuantizableLayer* q = layers[i];
    try {
      q->convert();
    } catch (const c10::ValueError& e) {
      TORCH_CHECK_VALUE(
          false, "qat::convert: layer '", paths[i].empty() ? "(the model)" : paths[i], "': ",
          e.what_without_backtrace(), " (the layers before it are converted already)");
    }
    // the qparams it took from its quantizers are usable (a diverged learnable scale,
    // NaN from a NaN batch)
    auto* m = dynamic_cast<torch::nn::Module*>(q);
    std::vector<std::pair<std::string, at::Tensor>> state;
    for (const auto& b : m->named_buffers(/*recurse=*/false)) {
      state.emplace_back(b.key(), b.value());
    }
    try {
      check_layer_qparams(q->quantized_state().meta, state, "");
    } catch (const c10::Error& e) {
      TORCH_CHECK_VALUE(
          false, "qat::convert: layer '", paths[i].empty() ? "(the model)" : paths[i],
          "' would hold unusable qparams: ", e.what_without_backtrace(), ". Its quantizers' state "
          "is wrong (NaN or Inf reached an observer, or a learnable scale diverged); the layers "
          "before it are converted already.");
    }
  }
  return static_cast<int64_t>(layers.size());
}

std::vector<std::string> detail::drop_in_linears(torch::nn::Module& model) {
  std::vector<std::string> direct;
  std::vector<std::string> plain;
  for (const auto& item : model.named_modules()) {
    if (typeid(*item.value()) == typeid(torch::nn::LinearImpl)) {
      plain.push_back(item.key());
    }
  }
  for (const std::string& path : plain) {
    auto [parent, name] = parent_of(model, path);
    if (parent == nullptr || !is_container(*parent)) {
      direct.push_back(path);
      continue;
    }
    std::string type;
    set_child(*parent, name, drop_in_for(find(model, path), &type));
  }
  return direct;
}

void fuse_modules(torch::nn::Module& model, const std::vector<std::vector<std::string>>& groups) {
  for (const auto& group : groups) {
    TORCH_CHECK(group.size() >= 2 && group.size() <= 3, "fuse_modules: groups have 2 or 3 modules");
    // The patterns Python's fuse_modules takes, in order: Linear/Conv + ReLU,
    // Linear + GELU, Conv + BatchNorm, Conv + BatchNorm + ReLU (checked before
    // anything changes).
    std::string kinds;
    for (size_t i = 1; i < group.size(); ++i) {
      const std::shared_ptr<torch::nn::Module> m = find(model, group[i]);
      kinds += std::dynamic_pointer_cast<torch::nn::ReLUImpl>(m)
          ? "R"
          : (std::dynamic_pointer_cast<torch::nn::GELUImpl>(m) ? "G" : "B");
    }
    std::string names;
    for (const auto& path : group) {
      names += (names.empty() ? "" : ", ") + path;
    }
    TORCH_CHECK(
        kinds == "R" || kinds == "G" || kinds == "B" || kinds == "BR",
        "fuse_modules: cannot fuse {", names,
        "}: the patterns are Linear+ReLU, Linear+GELU, Conv1d/2d+ReLU, Conv1d/2d+BatchNorm(+ReLU), "
        "in this order");
    if (const nn::QuantizableLayer* fused = nn::as_quantizable(*find(model, group[0]))) {
      TORCH_CHECK(
          fused->stage() == nn::Stage::kFloat, "fuse_modules: cannot fuse {", names, "}: '",
          group[0], "' is already prepared; fuse before qat::prepare");
      TORCH_CHECK(
          fused->activation() == kNoActivation || kinds == "B", "fuse_modules: cannot fuse {",
          names, "}: '", group[0], "' already ends with a fused ", activation_name(fused->activation()));
    }
    if (kinds == "G") {
      // a GELU applied twice would change the output: its entry must be one a
      // container's forward runs (Sequential, ModuleList), replaced by Identity
      const std::shared_ptr<torch::nn::Module> first = find(model, group[0]);
      TORCH_CHECK(
          detail::is_layer_kind(*first, "Linear", "fuse_modules"), "fuse_modules: cannot fuse {", names,
          "}: a GELU fuses into a Linear, not a ", first->name());
      TORCH_CHECK(
          is_container(*parent_of(model, group[1]).first), "fuse_modules: '", group[1],
          "' is a GELU held directly by a module; its forward would still run after fusion "
          "(GELU twice). Hold it in a torch::nn::Sequential, or leave it unfused");
    }
    if (kinds[0] == 'B') {
      const std::shared_ptr<torch::nn::Module> conv = find(model, group[0]);
      const std::shared_ptr<torch::nn::Module> norm = find(model, group[1]);
      TORCH_CHECK(
          conv->is_training() == norm->is_training(),
          "fuse_modules: conv and batchnorm must both be in train or eval mode ('", group[0], "' is in ",
          conv->is_training() ? "train" : "eval", " mode, '", group[1], "' in ",
          norm->is_training() ? "train" : "eval", " mode)");
    }
    // The first layer: a drop-in, or a plain one inside a container.
    auto [parent, name] = parent_of(model, group[0]);
    std::shared_ptr<torch::nn::Module> first = find(model, group[0]);
    if (nn::as_quantizable(*first) == nullptr) {
      std::string type;
      auto drop_in = drop_in_for(first, &type);
      TORCH_CHECK(drop_in != nullptr, "fuse_modules: '", group[0], "' is a ", first->name(),
                  "; the first module must be Linear, Conv1d or Conv2d");
      TORCH_CHECK(is_container(*parent), "fuse_modules: '", group[0], "' is a plain ",
                  first->name(), " held directly by a module; declare it as ", type);
      set_child(*parent, name, drop_in);
      first = drop_in;
    }
    auto* layer = nn::as_quantizable(*first);
    for (size_t i = 1; i < group.size(); ++i) {
      auto [p, n] = parent_of(model, group[i]);
      std::shared_ptr<torch::nn::Module> m = find(model, group[i]);
      if (std::dynamic_pointer_cast<torch::nn::ReLUImpl>(m)) {
        layer->fuse_relu();
      } else if (auto gelu = std::dynamic_pointer_cast<torch::nn::GELUImpl>(m)) {
        layer->fuse_gelu(gelu->options.approximate());
      } else {
        std::shared_ptr<torch::nn::Module> bn = m;
        if (!dynamic_cast<nn::BatchNorm2dImpl*>(bn.get()) && !dynamic_cast<nn::BatchNorm1dImpl*>(bn.get())) {
          std::string type;
          auto drop_in = drop_in_for(m, &type);
          TORCH_CHECK(drop_in != nullptr && type.find("BatchNorm") != std::string::npos,
                      "fuse_modules: cannot fuse '", group[i], "' (", m->name(),
                      "); supported: Linear+ReLU, Conv1d/2d+ReLU, Conv1d/2d+BatchNorm(+ReLU)");
          TORCH_CHECK(is_container(*p), "fuse_modules: '", group[i], "' is a plain ", m->name(),
                      " held directly by a module; its forward would still run after fusion. "
                      "Declare it as ", type);
          bn = drop_in;
        }
        if (auto* c2 = dynamic_cast<nn::Conv2dImpl*>(first.get())) {
          auto b = std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(bn);
          TORCH_CHECK(b, "fuse_modules: Conv2d fuses with BatchNorm2d, got ", bn->name());
          c2->fuse_bn(b);
        } else if (auto* c1 = dynamic_cast<nn::Conv1dImpl*>(first.get())) {
          auto b = std::dynamic_pointer_cast<nn::BatchNorm1dImpl>(bn);
          TORCH_CHECK(b, "fuse_modules: Conv1d fuses with BatchNorm1d, got ", bn->name());
          c1->fuse_bn(b);
        } else {
          TORCH_CHECK(false, "fuse_modules: only convolutions fuse with BatchNorm");
        }
      }
      set_child(*p, n, torch::nn::Identity().ptr());
    }
  }
}

void enable_observer(torch::nn::Module& model, bool on) {
  for_each_fake_quantize(model, [on](FakeQuantizeInterface& f) { f.enable_observer(on); });
}

void disable_observer(torch::nn::Module& model) {
  enable_observer(model, false);
}

void enable_fake_quant(torch::nn::Module& model, bool on) {
  for_each_fake_quantize(model, [on](FakeQuantizeInterface& f) { f.enable_fake_quant(on); });
}

void disable_fake_quant(torch::nn::Module& model) {
  enable_fake_quant(model, false);
}

void freeze_bn_stats(torch::nn::Module& model) {
  for_each_conv(model, [](auto& c) { c.freeze_bn_stats(); });
}

void update_bn_stats(torch::nn::Module& model) {
  for_each_conv(model, [](auto& c) { c.update_bn_stats(); });
}

namespace {
std::shared_ptr<torch::nn::Module> module_at(torch::nn::Module& model, const std::string& path) {
  for (const auto& item : model.named_modules()) {
    if (item.key() == path) {
      return item.value();
    }
  }
  return nullptr;
}

/// Puts `m` back as it is now: a shallow copy (the same child modules and
/// tensors) assigned back in place, so typed members that hold the module see it
/// too. For the modules load_quantized changes in place; nullptr for others.
template <class T>
std::function<void()> restore_as(T* m, const std::shared_ptr<torch::nn::Module>& keep) {
  // from a const reference: Sequential's variadic constructor would take a T&
  auto before = std::make_shared<T>(std::as_const(*m));
  return [m, before, keep] { *m = std::move(*before); };
}

/// restore_as for the first of T... that m is; nullptr for none.
template <class... T>
std::function<void()> restore_point_as(torch::nn::Module& m, const std::shared_ptr<torch::nn::Module>& keep) {
  std::function<void()> restore;
  ((restore == nullptr && dynamic_cast<T*>(&m) != nullptr ? (restore = restore_as(dynamic_cast<T*>(&m), keep), 0) : 0), ...);
  return restore;
}

std::function<void()> restore_point(torch::nn::Module& m, const std::shared_ptr<torch::nn::Module>& keep) {
  return restore_point_as<
      torch::nn::SequentialImpl, torch::nn::ModuleListImpl, torch::nn::ModuleDictImpl, nn::LinearImpl,
      nn::Conv2dImpl, nn::Conv1dImpl, nn::EmbeddingImpl, nn::BatchNorm2dImpl, nn::BatchNorm1dImpl>(m, keep);
}

const char* layer_kind_name(int64_t layer) {
  switch (layer) {
    case kLinear:
      return "Linear";
    case kConv1d:
      return "Conv1d";
    case kConv2d:
      return "Conv2d";
    default:
      return "Embedding";
  }
}
}  // namespace

int64_t load_quantized(torch::nn::Module& model, const std::string& path) {
  const std::map<std::string, at::Tensor> saved = detail::read_state_file(path);
  const std::vector<std::string> layers = detail::converted_paths(saved);
  const std::string where = "load_quantized: " + path + ": ";
  TORCH_CHECK_VALUE(
      !layers.empty(), where, "the file holds no converted layer (no quant_meta entries): load "
      "a float or QAT state dict with qat::load_state_dict");
  // Every layer checked before the model changes (a model left half converted by a
  // refused file would compute garbage).
  struct Step {
    std::string layer;
    std::shared_ptr<torch::nn::Module> module;  // null: the model itself
    torch::nn::Module* target;
    QuantMeta meta;
  };
  std::vector<Step> steps;
  for (const std::string& layer : layers) {
    const std::string name = layer.empty() ? "(the model)" : layer;
    const std::string prefix = layer.empty() ? "" : layer + ".";
    std::shared_ptr<torch::nn::Module> m = layer.empty() ? nullptr : module_at(model, layer);
    torch::nn::Module* target = layer.empty() ? &model : m.get();
    TORCH_CHECK_VALUE(
        target != nullptr, where, "the file holds the converted layer '", name,
        "', but the model has no module by that name (pass the float model the file was "
        "converted from)");
    const QuantMeta meta = QuantMeta::from_tensor(saved.at(prefix + "quant_meta"), where + "'" + name + "': ");
    const char* kind = layer_kind_name(meta.layer);
    TORCH_CHECK_VALUE(
        detail::is_layer_kind(*target, kind, "qat::load_quantized"), where, "'", name, "' is a ",
        target->name(), " in the model, but the file holds it as a converted ", kind, " (",
        meta.describe(), ")");
    const nn::QuantizableLayer* q = nn::as_quantizable(*target);
    if (q == nullptr) {  // a plain torch::nn layer
      const auto dot = layer.rfind('.');
      std::shared_ptr<torch::nn::Module> parent =
          dot == std::string::npos ? nullptr : module_at(model, layer.substr(0, dot));
      TORCH_CHECK_VALUE(
          !layer.empty() && is_container(parent ? *parent : model), where, "'", name, "' is a plain ",
          target->name(), " held directly by a module; declare it as the qtorchext drop-in "
          "(qat::nn::", kind, ") so it can hold the converted layer");
    }
    if (q == nullptr || q->stage() != nn::Stage::kQuantized) {
      // a GELU is not idempotent: the file's must be fused in the model too (its
      // GELU module Identity), and a layer fused in the model must find its own
      const int64_t own = q == nullptr ? kNoActivation : q->activation();
      TORCH_CHECK_VALUE(
          (meta.activation != kGelu && meta.activation != kGeluTanh) || own == meta.activation,
          where, "'", name, "': the file's layer ends with a fused GELU (", meta.describe(),
          "); fuse the model's Linear with its GELU first (qat::fuse_modules), else that GELU "
          "would run a second time");
      TORCH_CHECK_VALUE(
          own == kNoActivation || own == meta.activation, where, "'", name, "': the model's "
          "layer fuses ", activation_name(own), ", but the file's layer is ", meta.describe());
    }
    steps.push_back({layer, m, target, meta});
  }
  // Every layer checked: the model changes now, and goes back as it was if the load
  // below refuses the file (a model left with zero-filled converted layers would
  // compute garbage). Each module changed in place is copied first (once: the first
  // copy is the state to go back to); a child replaced in a plain module is put back.
  std::vector<std::function<void()>> undo;
  std::set<const torch::nn::Module*> saved_modules;
  const auto before_change = [&](torch::nn::Module& m, std::shared_ptr<torch::nn::Module> keep) {
    if (saved_modules.insert(&m).second) {
      std::function<void()> restore = restore_point(m, std::move(keep));
      TORCH_INTERNAL_ASSERT(restore, "load_quantized: no way to restore a ", m.name());
      undo.push_back(std::move(restore));
    }
  };
  const auto replace_child = [&](const std::shared_ptr<torch::nn::Module>& parent, const std::string& name,
                                 std::shared_ptr<torch::nn::Module> child) {
    torch::nn::Module& holder = parent ? *parent : model;
    if (is_container(holder)) {
      before_change(holder, parent);
    } else {
      std::shared_ptr<torch::nn::Module> old = holder.named_children()[name];
      undo.push_back([&holder, parent, name, old] { holder.replace_module(name, old); });
    }
    set_child(holder, name, std::move(child));
  };
  try {
    for (Step& step : steps) {
      const std::string& layer = step.layer;
      torch::nn::Module* target = step.target;
      if (nn::as_quantizable(*target) == nullptr) {  // a plain torch::nn layer: its drop-in
        const auto dot = layer.rfind('.');
        std::shared_ptr<torch::nn::Module> parent =
            dot == std::string::npos ? nullptr : module_at(model, layer.substr(0, dot));
        std::string type;
        std::shared_ptr<torch::nn::Module> drop_in = drop_in_for(step.module, &type);
        replace_child(parent, layer.substr(dot == std::string::npos ? 0 : dot + 1), drop_in);
        target = drop_in.get();
      }
      nn::QuantizableLayer* q = nn::as_quantizable(*target);
      if (q->stage() != nn::Stage::kQuantized) {
        const std::string prefix = layer.empty() ? "" : layer + ".";
        before_change(*target, step.module);
        q->make_quantized(step.meta, saved.count(prefix + "bias") != 0);
      }
    }
    // BatchNorms folded into their convolutions have no entries in the file
    const auto absent = [&](const std::string& path_) {
      return !saved.count(path_ + ".running_mean") && !saved.count(path_ + ".weight");
    };
    // as fuse_modules leaves them: a drop-in one passes its input through (the
    // model's forward may still call it) and its registered entry becomes Identity;
    // a plain one in a container becomes Identity (containers rebuild, so one at a time)
    for (bool again = true; again;) {
      again = false;
      for (const auto& item : model.named_modules()) {
        const std::string& key = item.key();
        torch::nn::Module* mod = item.value().get();
        const bool drop_in = dynamic_cast<nn::BatchNorm2dImpl*>(mod) || dynamic_cast<nn::BatchNorm1dImpl*>(mod);
        const bool plain = dynamic_cast<torch::nn::BatchNorm2dImpl*>(mod) || dynamic_cast<torch::nn::BatchNorm1dImpl*>(mod);
        if (key.empty() || !(drop_in || plain) || !absent(key)) {
          continue;
        }
        const auto dot = key.rfind('.');
        std::shared_ptr<torch::nn::Module> parent =
            dot == std::string::npos ? nullptr : module_at(model, key.substr(0, dot));
        torch::nn::Module& holder = parent ? *parent : model;
        if (!drop_in && !is_container(holder)) {
          continue;  // a plain one held directly: the load reports its missing entries
        }
        if (drop_in) {
          before_change(*mod, item.value());
        }
        if (auto* b2 = dynamic_cast<nn::BatchNorm2dImpl*>(mod)) {
          b2->mark_fused();
        } else if (auto* b1 = dynamic_cast<nn::BatchNorm1dImpl*>(mod)) {
          b1->mark_fused();
        }
        replace_child(parent, key.substr(dot == std::string::npos ? 0 : dot + 1), torch::nn::Identity().ptr());
        again = true;
        break;
      }
    }
    detail::load_state(model, saved, path);
  } catch (...) {
    for (auto it = undo.rbegin(); it != undo.rend(); ++it) {
      (*it)();
    }
    throw;
  }
  model.eval();
  return static_cast<int64_t>(layers.size());
}

}  // namespace qat
