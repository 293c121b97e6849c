/// @file qtorchext.h
/// Umbrella header of the qtorchext C++ API (namespace qat).
#pragma once

#include "qtorchext/distributed.h"
#include "qtorchext/fake_quantize.h"
#include "qtorchext/gptq.h"
#include "qtorchext/mixed_precision.h"
#include "qtorchext/nn/modules.h"
#include "qtorchext/nn/quantized.h"
#include "qtorchext/observer.h"
#include "qtorchext/ops.h"
#include "qtorchext/qconfig.h"
#include "qtorchext/quant_meta.h"
#include "qtorchext/quantize.h"
#include "qtorchext/ptq.h"
#include "qtorchext/serialize.h"
#include "qtorchext/smooth_quant.h"
#include "qtorchext/version.h"
