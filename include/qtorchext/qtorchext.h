/// @file qtorchext.h
/// Umbrella header of the qtorchext C++ API (namespace qat).
#pragma once

#include "qtorchext/ops.h"
#include "qtorchext/version.h"
