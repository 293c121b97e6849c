# The OpenMP part of qtorchext::torch, for TorchFromPython.cmake and
# TorchFromLibTorch.cmake.
#
# Input:  QTORCHEXT_TORCH_OPENMP (torch's parallel backend is OpenMP),
#         QTORCHEXT_TORCH_LIBRARY_DIR.
# Output: appends to _qtorchext_torch_libs; sets _qtorchext_omp_compile.
#
# at::parallel_for is a header template: with torch's OpenMP backend it runs
# in parallel only in code compiled with -fopenmp (without it, every loop runs
# on one thread). Link the OpenMP runtime torch itself loads (its bundled
# libgomp when the wheel has one), so torch.set_num_threads / at::set_num_threads
# govern our loops too and only one thread pool exists.
set(_qtorchext_omp_compile "")
if(QTORCHEXT_TORCH_OPENMP)
  file(GLOB _qtorchext_gomp "${QTORCHEXT_TORCH_LIBRARY_DIR}/libgomp*.so*")
  if(_qtorchext_gomp)
    list(GET _qtorchext_gomp 0 _qtorchext_gomp)
    list(APPEND _qtorchext_torch_libs "${_qtorchext_gomp}")
    set(_qtorchext_omp_compile "$<$<COMPILE_LANGUAGE:CXX>:-fopenmp>")
  else()
    find_package(OpenMP COMPONENTS CXX)
    if(OpenMP_CXX_FOUND)
      list(APPEND _qtorchext_torch_libs OpenMP::OpenMP_CXX)
    else()
      message(WARNING "torch uses OpenMP but no OpenMP runtime was found: "
        "qtorchext's CPU kernels will run on one thread")
    endif()
  endif()
endif()
