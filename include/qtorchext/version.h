/// @file version.h
/// qtorchext's version (the single source: CMake and setup.py read it here).
#pragma once

#define QTORCHEXT_VERSION_STRING "0.1.0"

namespace qat {

/// The library version, "major.minor.patch".
inline const char* version() {
  return QTORCHEXT_VERSION_STRING;
}

}  // namespace qat
