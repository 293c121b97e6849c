# Locates LibTorch through the torch package of a Python interpreter and
# defines the imported target qtorchext::torch.
#
# Why not find_package(Torch)? The CUDA wheels' TorchConfig.cmake insists on a
# full CUDA toolkit (cuBLAS, cuDNN, NVRTC development files) even when nothing
# of ours needs them, so it fails on machines that have only nvcc and the
# wheels' runtime libraries. Asking torch itself for its paths works for CPU
# and CUDA wheels of every supported release (2.11 to 2.14).
#
# Input:  Python3_EXECUTABLE (the interpreter whose torch is used).
# Output: QTORCHEXT_TORCH_VERSION, QTORCHEXT_TORCH_CUDA_VERSION (empty for CPU
#         builds), QTORCHEXT_TORCH_LIBRARY_DIR, QTORCHEXT_TORCH_INCLUDE_DIRS,
#         QTORCHEXT_TORCH_CXX11_ABI, QTORCHEXT_NVIDIA_INCLUDE_DIRS,
#         and the target qtorchext::torch.

if(NOT Python3_EXECUTABLE)
  message(FATAL_ERROR "TorchFromPython.cmake needs Python3_EXECUTABLE")
endif()

set(_qtorchext_probe [=[
import os, sys
try:
    import torch
except Exception as e:  # noqa: BLE001
    print("ERROR=" + repr(e))
    sys.exit(0)
root = os.path.dirname(torch.__file__)
inc = [os.path.join(root, "include"),
       os.path.join(root, "include", "torch", "csrc", "api", "include")]
print("VERSION=" + torch.__version__.split("+")[0])
print("CUDA=" + (torch.version.cuda or ""))
print("LIBDIR=" + os.path.join(root, "lib"))
print("INCLUDE=" + "|".join(inc))
print("ABI=" + str(int(torch._C._GLIBCXX_USE_CXX11_ABI)))
print("OPENMP=" + str(int(torch.backends.openmp.is_available())))
nv = []
site = os.path.dirname(root)
for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include",
            "nvidia/cublas/include", "nvidia/cusparse/include",
            "nvidia/cusolver/include", "nvidia/curand/include",
            "nvidia/cufft/include", "nvidia/nvtx/include"):
    p = os.path.join(site, sub)
    if os.path.isdir(p):
        nv.append(p)
print("NVINCLUDE=" + "|".join(nv))
]=])

execute_process(
  COMMAND "${Python3_EXECUTABLE}" -c "${_qtorchext_probe}"
  OUTPUT_VARIABLE _qtorchext_probe_out
  RESULT_VARIABLE _qtorchext_probe_rc
  ERROR_VARIABLE _qtorchext_probe_err)
if(NOT _qtorchext_probe_rc EQUAL 0)
  message(FATAL_ERROR
    "Could not run ${Python3_EXECUTABLE} to locate torch: ${_qtorchext_probe_err}")
endif()

string(REPLACE "\n" ";" _qtorchext_lines "${_qtorchext_probe_out}")
foreach(_line IN LISTS _qtorchext_lines)
  if(_line MATCHES "^ERROR=(.*)$")
    message(FATAL_ERROR
      "${Python3_EXECUTABLE} cannot import torch (${CMAKE_MATCH_1}). "
      "Run `make deps` (installs torch==2.14.1) or activate the environment "
      "that has torch.")
  elseif(_line MATCHES "^VERSION=(.*)$")
    set(QTORCHEXT_TORCH_VERSION "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^CUDA=(.*)$")
    set(QTORCHEXT_TORCH_CUDA_VERSION "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^LIBDIR=(.*)$")
    set(QTORCHEXT_TORCH_LIBRARY_DIR "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^INCLUDE=(.*)$")
    string(REPLACE "|" ";" QTORCHEXT_TORCH_INCLUDE_DIRS "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^OPENMP=(.*)$")
    set(QTORCHEXT_TORCH_OPENMP "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^ABI=(.*)$")
    set(QTORCHEXT_TORCH_CXX11_ABI "${CMAKE_MATCH_1}")
  elseif(_line MATCHES "^NVINCLUDE=(.*)$")
    string(REPLACE "|" ";" QTORCHEXT_NVIDIA_INCLUDE_DIRS "${CMAKE_MATCH_1}")
  endif()
endforeach()

if(QTORCHEXT_TORCH_VERSION VERSION_LESS 2.11)
  message(FATAL_ERROR
    "qtorchext needs torch 2.11 or newer; ${Python3_EXECUTABLE} has "
    "${QTORCHEXT_TORCH_VERSION}")
endif()

set(_qtorchext_torch_libs "")
foreach(_lib c10 torch_cpu torch)
  set(_path "${QTORCHEXT_TORCH_LIBRARY_DIR}/lib${_lib}.so")
  if(NOT EXISTS "${_path}")
    message(FATAL_ERROR "torch library ${_path} is missing")
  endif()
  list(APPEND _qtorchext_torch_libs "${_path}")
endforeach()
if(QTORCHEXT_TORCH_CUDA_VERSION)
  foreach(_lib c10_cuda torch_cuda)
    set(_path "${QTORCHEXT_TORCH_LIBRARY_DIR}/lib${_lib}.so")
    if(EXISTS "${_path}")
      list(APPEND _qtorchext_torch_libs "${_path}")
    endif()
  endforeach()
endif()

include("${CMAKE_CURRENT_LIST_DIR}/TorchOpenMP.cmake")

if(NOT TARGET qtorchext::torch)
  add_library(qtorchext::torch INTERFACE IMPORTED)
  set_target_properties(qtorchext::torch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${QTORCHEXT_TORCH_INCLUDE_DIRS}"
    INTERFACE_COMPILE_DEFINITIONS
      "_GLIBCXX_USE_CXX11_ABI=${QTORCHEXT_TORCH_CXX11_ABI}"
    INTERFACE_COMPILE_OPTIONS "${_qtorchext_omp_compile}"
    INTERFACE_LINK_LIBRARIES "${_qtorchext_torch_libs}")
endif()

message(STATUS
  "qtorchext: torch ${QTORCHEXT_TORCH_VERSION} (OpenMP: ${QTORCHEXT_TORCH_OPENMP}) "
  "(CUDA: ${QTORCHEXT_TORCH_CUDA_VERSION}) at ${QTORCHEXT_TORCH_LIBRARY_DIR}")
