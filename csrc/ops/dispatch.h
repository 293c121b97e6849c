// Typed handles to qtorchext dispatcher ops (looked up once, then cached).
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace qtorchext {

template <class Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

}  // namespace qtorchext

/// Calls qtorchext::NAME with the given signature and arguments.
#define QTORCHEXT_CALL_OP(NAME, SIG, ...)                                \
  [&]() {                                                                \
    static const auto op = ::qtorchext::op_handle<SIG>("qtorchext::" NAME); \
    return op.call(__VA_ARGS__);                                         \
  }()
