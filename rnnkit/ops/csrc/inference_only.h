// The Autograd kernel shared by every rnnkit_fused op: refuse a call that autograd would have to record.
//
// The kernels have no derivatives of their own; rnnkit/engine differentiates whole sequences around
// them (autograd.Functions). A kernel reached with an input that requires grad, in grad mode, would
// stop gradients silently, so InferenceOnly<...>::call raises instead.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <optional>
#include <string>

namespace rnnkit {

inline bool recorded(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
inline bool recorded(const std::optional<at::Tensor>& t) { return t.has_value() && recorded(*t); }
inline bool recorded(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (recorded(t)) return true;
  return false;
}
template <typename T>
inline bool recorded(const T&) { return false; }

// Whether a tensor needs the dispatcher to reach its kernel: anything but a plain dense CPU tensor.
inline bool wrapped(const at::Tensor& t) {
  static const auto plain = c10::DispatchKeySet({c10::DispatchKey::CPU, c10::DispatchKey::AutogradCPU, c10::DispatchKey::ADInplaceOrView,
                                                 c10::DispatchKey::AutocastCPU});
  return t.defined() && !(t.key_set() - plain).empty();
}
inline bool wrapped(const std::optional<at::Tensor>& t) { return t.has_value() && wrapped(*t); }
inline bool wrapped(at::TensorList tensors) {
  for (const at::Tensor& t : tensors)
    if (wrapped(t)) return true;
  return false;
}
template <typename T>
inline bool wrapped(const T&) { return false; }

template <typename Signature, Signature* kernel, const char* name>
struct InferenceOnly;

template <typename Ret, typename... Args, Ret (*kernel)(Args...), const char* name>
struct InferenceOnly<Ret(Args...), kernel, name> {
  static Ret call(Args... args) {
    TORCH_CHECK(!at::GradMode::is_enabled() || !(recorded(args) || ...), "rnnkit_fused::", name,
                " has no autograd formula of its own (rnnkit's autograd.Functions differentiate around it), but an input "
                "requires grad; call it under torch.no_grad() or through rnnkit's layers and cells");
    // Plain CPU tensors go straight to the kernel: one dispatch less on the streaming path, where a
    // step costs a few microseconds. Fake, meta and wrapped tensors (torch.compile, export, torch.func)
    // are dispatched again below autograd, so that they reach their own kernels.
    if (!(wrapped(args) || ...)) return kernel(args...);
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow((std::string("rnnkit_fused::") + name).c_str(), "").typed<Ret(Args...)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(args...);
  }
};

}  // namespace rnnkit
