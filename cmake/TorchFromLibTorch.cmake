# Locates LibTorch with find_package(Torch) and defines the imported target
# qtorchext::torch, without running Python: the -DQTORCHEXT_BUILD_PYTHON=OFF
# build and the qtorchextConfig.cmake it installs use it.
#
# Torch is found as any LibTorch project finds it: CMAKE_PREFIX_PATH at the
# LibTorch folder (or its share/cmake), or Torch_DIR at <libtorch>/share/cmake/Torch.
# A LibTorch zip from pytorch.org and the torch/ folder of a torch wheel both
# are such folders.
#
# Input:  QTORCHEXT_TORCH_HINT (optional): a Torch_DIR searched after the usual
#         places (the installed config passes the one qtorchext was built with).
# Output: QTORCHEXT_TORCH_ERROR (empty when torch was found; otherwise why not,
#         and nothing else is set), QTORCHEXT_TORCH_VERSION (Torch's package
#         version, e.g. 2.13.0), QTORCHEXT_TORCH_CUDA_VERSION (empty for CPU
#         builds), QTORCHEXT_TORCH_LIBRARY_DIR, QTORCHEXT_TORCH_INCLUDE_DIRS,
#         QTORCHEXT_TORCH_OPENMP, and the target qtorchext::torch.

set(QTORCHEXT_TORCH_ERROR "")
set(_qtorchext_hints "")
if(QTORCHEXT_TORCH_HINT)
  set(_qtorchext_hints HINTS "${QTORCHEXT_TORCH_HINT}")
endif()
find_package(Torch QUIET ${_qtorchext_hints})
if(NOT Torch_FOUND)
  string(CONCAT QTORCHEXT_TORCH_ERROR
    "find_package(Torch) found no LibTorch. Set CMAKE_PREFIX_PATH to the LibTorch folder "
    "(the one with share/cmake/Torch) or Torch_DIR to <libtorch>/share/cmake/Torch.")
  return()
endif()

set(QTORCHEXT_TORCH_VERSION "${Torch_VERSION}")
set(QTORCHEXT_TORCH_LIBRARY_DIR "${TORCH_INSTALL_PREFIX}/lib")
set(QTORCHEXT_TORCH_INCLUDE_DIRS "${TORCH_INCLUDE_DIRS}")
set(QTORCHEXT_NVIDIA_INCLUDE_DIRS "")
set(QTORCHEXT_TORCH_CUDA_VERSION "")
if(TARGET torch_cuda)
  # Caffe2's cuda.cmake (run by find_package(Torch) for a CUDA LibTorch) found these.
  if(CUDA_VERSION)
    set(QTORCHEXT_TORCH_CUDA_VERSION "${CUDA_VERSION}")
  else()
    set(QTORCHEXT_TORCH_CUDA_VERSION "${CUDAToolkit_VERSION}")
  endif()
endif()

if(NOT QTORCHEXT_TORCH_VERSION)
  set(QTORCHEXT_TORCH_ERROR
    "${Torch_DIR} gives no version (no TorchConfigVersion.cmake next to TorchConfig.cmake)")
  return()
endif()
if(QTORCHEXT_TORCH_VERSION VERSION_LESS 2.11)
  set(QTORCHEXT_TORCH_ERROR
    "qtorchext needs torch 2.11 or newer; ${Torch_DIR} is ${QTORCHEXT_TORCH_VERSION}")
  return()
endif()

# The parallel backend torch was built with, from its ATen/Config.h.
set(QTORCHEXT_TORCH_OPENMP 0)
foreach(_dir IN LISTS TORCH_INCLUDE_DIRS)
  if(EXISTS "${_dir}/ATen/Config.h")
    file(STRINGS "${_dir}/ATen/Config.h" _qtorchext_omp_line
      REGEX "^#define AT_PARALLEL_OPENMP 1")
    if(_qtorchext_omp_line)
      set(QTORCHEXT_TORCH_OPENMP 1)
    endif()
    break()
  endif()
endforeach()

# TORCH_LIBRARIES: the targets and libraries a LibTorch project links (with
# TORCH_CXX_FLAGS, such as the C++ ABI, on the target torch).
set(_qtorchext_torch_libs ${TORCH_LIBRARIES})
include("${CMAKE_CURRENT_LIST_DIR}/TorchOpenMP.cmake")

if(NOT TARGET qtorchext::torch)
  add_library(qtorchext::torch INTERFACE IMPORTED)
  set_target_properties(qtorchext::torch PROPERTIES
    INTERFACE_COMPILE_OPTIONS "${_qtorchext_omp_compile}"
    INTERFACE_LINK_LIBRARIES "${_qtorchext_torch_libs}")
endif()

message(STATUS
  "qtorchext: LibTorch ${QTORCHEXT_TORCH_VERSION} (OpenMP: ${QTORCHEXT_TORCH_OPENMP}) "
  "(CUDA: ${QTORCHEXT_TORCH_CUDA_VERSION}) at ${TORCH_INSTALL_PREFIX}")
