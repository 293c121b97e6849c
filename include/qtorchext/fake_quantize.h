/**
 * @file fake_quantize.h
 * Fake quantizers: modules that simulate quantization during training.
 *
 * The C++ twins of python/qtorchext/fake_quantize.py (same names, options and
 * state_dict keys). Every fake quantizer keeps two uint8 buffers,
 * `fake_quant_enabled` and `observer_enabled` (they replicate under data
 * parallelism and travel in state_dicts); forward decides from host copies of
 * them that the enable_* methods and load_state_dict keep in step, so it
 * never reads a device value. The fused path hands the flag tensors to the op.
 */
#pragma once

#include <memory>

#include "qtorchext/observer.h"

namespace qat {

namespace detail {
struct ObserverSync;
}  // namespace detail

/// What every fake quantizer offers (besides being a torch::nn::Module).
class FakeQuantizeInterface {
 public:
  FakeQuantizeInterface() = default;
  /// A copy (a clone) does not take the model's synchronisation across ranks.
  FakeQuantizeInterface(const FakeQuantizeInterface& /*other*/) {}
  FakeQuantizeInterface& operator=(const FakeQuantizeInterface& /*other*/) {
    return *this;
  }
  virtual ~FakeQuantizeInterface() = default;
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  /// Switches fake quantization (off: forward returns its input).
  virtual void enable_fake_quant(bool enabled = true) = 0;
  /// Switches statistics collection (and qparam updates).
  virtual void enable_observer(bool enabled = true) = 0;
  void disable_fake_quant() {
    enable_fake_quant(false);
  }
  void disable_observer() {
    enable_observer(false);
  }
  virtual bool is_fake_quant_enabled() const = 0;
  virtual bool is_observer_enabled() const = 0;
  /// Re-reads the host copies of the flags from the buffers (after loading a
  /// state_dict; one read at load time).
  virtual void sync_flags() = 0;

  /// The model's automatic synchronisation across ranks, when set
  /// (qat::set_observer_sync; FakeQuantize and LearnableFakeQuantize).
  std::shared_ptr<detail::ObserverSync> observer_sync;
};

namespace detail {

/// The flag buffers and their switches.
template <class Derived>
class FakeQuantizeFlags : public torch::nn::Cloneable<Derived>, public FakeQuantizeInterface {
 public:
  void enable_fake_quant(bool enabled = true) override;
  void enable_observer(bool enabled = true) override;
  bool is_fake_quant_enabled() const override {
    return fake_quant_on_;
  }
  bool is_observer_enabled() const override {
    return observer_on_;
  }
  void sync_flags() override;

  at::Tensor fake_quant_enabled;
  at::Tensor observer_enabled;

 protected:
  void register_flags();
  bool fake_quant_on_ = true;
  bool observer_on_ = true;
};

}  // namespace detail

/// Options of FakeQuantize.
struct FakeQuantizeOptions {
  /// Use the fused observer + fake-quant op when the observer is a min/max
  /// or moving-average one (per tensor or channel); false runs the same
  /// steps as separate ops (bit-identical results).
  TORCH_ARG(bool, fused) = true;
  /// kHalf or kBFloat16: the observer's scales are rounded to that type
  /// (kept as float32 values), so a converted model stores them in it
  /// exactly. Unset: float32 scales.
  TORCH_ARG(std::optional<at::ScalarType>, scale_dtype) = std::nullopt;
};

/// Scales rounded to nearest in dtype (unset: unchanged), as float32, kept
/// within that type's positive finite range.
at::Tensor round_scale(const at::Tensor& scale, std::optional<at::ScalarType> dtype);

/**
 * An observer (`activation_post_process`) and affine fake quantization with
 * its qparams (buffers `scale`, float32, and `zero_point`, int32): per tensor,
 * per channel (observer ch_axis) or per group (observer group_size).
 */
class FakeQuantizeImpl : public detail::FakeQuantizeFlags<FakeQuantizeImpl> {
 public:
  /// observer: an observer module holder, e.g.
  /// `MovingAverageMinMaxObserver(ObserverOptions().quant_min(0).quant_max(255))`.
  template <class ObserverHolder>
    requires requires(ObserverHolder h) { h.ptr(); }
  explicit FakeQuantizeImpl(ObserverHolder observer, FakeQuantizeOptions options = {})
      : FakeQuantizeImpl(std::shared_ptr<torch::nn::Module>(observer.ptr()), options) {}
  explicit FakeQuantizeImpl(
      std::shared_ptr<torch::nn::Module> observer,
      FakeQuantizeOptions options = {});
  FakeQuantizeImpl(const FakeQuantizeImpl& other);

  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;
  std::tuple<at::Tensor, at::Tensor> calculate_qparams();
  ObserverInterface& observer();
  /// Whether forward takes the fused path.
  bool fused() const {
    return fused_;
  }
  void pretty_print(std::ostream& stream) const override;

  FakeQuantizeOptions options;
  std::shared_ptr<torch::nn::Module> activation_post_process;
  at::Tensor scale;
  at::Tensor zero_point;

 private:
  at::Tensor forward_impl(const at::Tensor& x);
  void size_qparams(int64_t n);
  bool fused_ = false;
};
TORCH_MODULE(FakeQuantize);

/// Options of LearnableFakeQuantize.
struct LearnableFakeQuantizeOptions {
  /// Forward calls (in training mode) during which the observer initialises
  /// the parameters; then it switches itself off. 0: never switch off.
  TORCH_ARG(int64_t, init_steps) = 1;
  /// LSQ's gradient scale 1 / sqrt(elements per scale * quant_max).
  TORCH_ARG(bool, use_grad_scaling) = true;
  /// Per-channel parameter size up front (else the first input sets it).
  TORCH_ARG(std::optional<int64_t>, channel_len) = std::nullopt;
};

/**
 * LSQ: `scale` and `zero_point` are parameters (float32) trained by gradient
 * descent, initialised from the observer while observer_enabled. The scale
 * is kept >= eps.
 */
class LearnableFakeQuantizeImpl : public detail::FakeQuantizeFlags<LearnableFakeQuantizeImpl> {
 public:
  template <class ObserverHolder>
    requires requires(ObserverHolder h) { h.ptr(); }
  explicit LearnableFakeQuantizeImpl(
      ObserverHolder observer,
      LearnableFakeQuantizeOptions options = {})
      : LearnableFakeQuantizeImpl(std::shared_ptr<torch::nn::Module>(observer.ptr()), options) {}
  explicit LearnableFakeQuantizeImpl(
      std::shared_ptr<torch::nn::Module> observer,
      LearnableFakeQuantizeOptions options = {});
  LearnableFakeQuantizeImpl(const LearnableFakeQuantizeImpl& other);

  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;
  std::tuple<at::Tensor, at::Tensor> calculate_qparams() const;
  ObserverInterface& observer();

  /// Sizes per-channel parameters to n channels (values reset to 1 / 0).
  void resize(int64_t n);

  LearnableFakeQuantizeOptions options;
  std::shared_ptr<torch::nn::Module> activation_post_process;
  at::Tensor scale;
  at::Tensor zero_point;
  /// Set by a forward that observed: qat::sync_observers combines this
  /// quantizer's statistics then even if that forward switched its observer
  /// off (the last of init_steps), and clears it.
  bool observed_since_sync = false;

 private:
  at::Tensor forward_impl(const at::Tensor& x);
  int64_t steps_ = 0;
};
TORCH_MODULE(LearnableFakeQuantize);

/// Options of BinaryFakeQuantize.
struct BinaryFakeQuantizeOptions {
  /// alpha per channel along this axis (nullopt: per tensor).
  TORCH_ARG(std::optional<int64_t>, ch_axis) = 0;
  /// Straight-through window |x| <= clip.
  TORCH_ARG(double, clip) = 1.0;
};

/// 1-bit weights: alpha * sign(x) with alpha = mean |x| (binary_scale),
/// computed from x each step.
class BinaryFakeQuantizeImpl : public detail::FakeQuantizeFlags<BinaryFakeQuantizeImpl> {
 public:
  explicit BinaryFakeQuantizeImpl(BinaryFakeQuantizeOptions options = {});
  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;

  BinaryFakeQuantizeOptions options;
};
TORCH_MODULE(BinaryFakeQuantize);

/// Rounds to float16 or bfloat16 and back (straight-through gradient).
class FloatFakeQuantizeImpl : public detail::FakeQuantizeFlags<FloatFakeQuantizeImpl> {
 public:
  explicit FloatFakeQuantizeImpl(at::ScalarType dtype = at::kHalf);
  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;

  at::ScalarType dtype;
};
TORCH_MODULE(FloatFakeQuantize);

/// Options of DynamicFakeQuantize.
struct DynamicFakeQuantizeOptions {
  TORCH_ARG(int64_t, quant_min) = -128;
  TORCH_ARG(int64_t, quant_max) = 127;
  TORCH_ARG(bool, symmetric) = false;
  TORCH_ARG(double, eps) = kDefaultEps;
};

/// Per-token dynamic activation quantization: one scale / zero point per row
/// (all dims but the last) computed from each input, as dynamic int8 layers
/// do at run time. No state.
class DynamicFakeQuantizeImpl : public detail::FakeQuantizeFlags<DynamicFakeQuantizeImpl> {
 public:
  explicit DynamicFakeQuantizeImpl(DynamicFakeQuantizeOptions options = {});
  void reset() override;
  at::Tensor forward(const at::Tensor& x) override;

  DynamicFakeQuantizeOptions options;
};
TORCH_MODULE(DynamicFakeQuantize);

/// The fake-quantizer interface of a module (nullptr if it is not one).
FakeQuantizeInterface* as_fake_quantize(torch::nn::Module& module);

}  // namespace qat
