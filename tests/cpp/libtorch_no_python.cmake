# ctest libtorch_no_python: the C++ library without Python. Unpacks a LibTorch
# tree (the torch/ folder of a CPU torch wheel, or a LibTorch zip from
# pytorch.org), builds and installs qtorchext against it with
# -DQTORCHEXT_BUILD_PYTHON=OFF, then builds and runs examples/cpp/find_package
# as a LibTorch project (find_package(Torch) + find_package(qtorchext): QAT,
# convert, compare). Every python on PATH is a stub that fails and leaves a
# note, and find_package(Python/Python3) is disabled: the test fails if any
# step ran Python. Reruns reuse the unpacked tree and the build folder.
#
# Input: SOURCE_DIR, WORK_DIR, ARCHIVE, GENERATOR, MAKE_PROGRAM, CXX_COMPILER.
cmake_minimum_required(VERSION 3.22)

string(TIMESTAMP _t0 "%s")
if(NOT EXISTS "${ARCHIVE}")
  message(FATAL_ERROR
    "libtorch_no_python needs a LibTorch archive: ${ARCHIVE} does not exist. Set "
    "QTORCHEXT_LIBTORCH_ARCHIVE (CMake cache) to a torch CPU wheel (its torch/ folder is "
    "a LibTorch tree) or a LibTorch zip from pytorch.org.")
endif()

# --- The LibTorch tree, unpacked once per archive.
if(ARCHIVE MATCHES "\\.whl$")
  set(_members torch/include torch/lib torch/share)
  set(LIBTORCH "${WORK_DIR}/libtorch/torch")
else()
  set(_members libtorch)
  set(LIBTORCH "${WORK_DIR}/libtorch/libtorch")
endif()
file(SIZE "${ARCHIVE}" _size)
file(TIMESTAMP "${ARCHIVE}" _mtime "%s")
set(_stamp "${ARCHIVE} ${_size} ${_mtime}")
set(_old_stamp "")
if(EXISTS "${WORK_DIR}/libtorch.stamp")
  file(READ "${WORK_DIR}/libtorch.stamp" _old_stamp)
endif()
if(NOT _old_stamp STREQUAL _stamp OR NOT EXISTS "${LIBTORCH}/share/cmake/Torch/TorchConfig.cmake")
  message(STATUS "Unpacking ${_members} of ${ARCHIVE}")
  file(REMOVE_RECURSE "${WORK_DIR}/libtorch" "${WORK_DIR}/libtorch.stamp")
  file(MAKE_DIRECTORY "${WORK_DIR}/libtorch")
  execute_process(COMMAND ${CMAKE_COMMAND} -E tar xf "${ARCHIVE}" ${_members}
    WORKING_DIRECTORY "${WORK_DIR}/libtorch" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0 OR NOT EXISTS "${LIBTORCH}/share/cmake/Torch/TorchConfig.cmake")
    message(FATAL_ERROR "${ARCHIVE} did not unpack to a LibTorch tree at ${LIBTORCH} (${rc})")
  endif()
  file(WRITE "${WORK_DIR}/libtorch.stamp" "${_stamp}")
endif()

# --- No Python: stubs shadow every python on PATH, which keeps only system
# folders and those of the build tools.
set(_stubs "${WORK_DIR}/no-python-bin")
set(_ran "${WORK_DIR}/python-was-run.txt")
file(REMOVE "${_ran}")
file(MAKE_DIRECTORY "${_stubs}")
foreach(_name python python3 python3.9 python3.10 python3.11 python3.12 python3.13 python3.14)
  file(WRITE "${_stubs}/${_name}"
    "#!/bin/sh\necho \"$0 $*\" >> '${_ran}'\necho \"libtorch_no_python: $0 must not run\" >&2\nexit 1\n")
  file(CHMOD "${_stubs}/${_name}" PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE)
endforeach()
find_program(_ccache ccache)
set(_path "${_stubs}")
foreach(_tool "${MAKE_PROGRAM}" "${CXX_COMPILER}" "${_ccache}")
  if(_tool)
    get_filename_component(_dir "${_tool}" DIRECTORY)
    list(APPEND _path "${_dir}")
  endif()
endforeach()
list(APPEND _path /usr/bin /bin)
list(REMOVE_DUPLICATES _path)
string(REPLACE ";" ":" _path "${_path}")
set(ENV{PATH} "${_path}")
foreach(_var PYTHONPATH PYTHONHOME VIRTUAL_ENV CONDA_PREFIX CMAKE_PREFIX_PATH Torch_DIR)
  unset(ENV{${_var}})
endforeach()
set(_no_python
  -DPython3_EXECUTABLE=${_stubs}/python3 -DPython_EXECUTABLE=${_stubs}/python
  -DCMAKE_DISABLE_FIND_PACKAGE_Python3=ON -DCMAKE_DISABLE_FIND_PACKAGE_Python=ON
  --no-warn-unused-cli)
set(_tools -G "${GENERATOR}" -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM} -DCMAKE_CXX_COMPILER=${CXX_COMPILER})

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "libtorch_no_python: ${what} failed (${rc})")
  endif()
endfunction()

# --- qtorchext against that tree: the library alone (no tests, examples, CUDA).
set(_build "${WORK_DIR}/build")
set(_install "${WORK_DIR}/install")
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${_build} ${_tools} -DCMAKE_BUILD_TYPE=Release
    -DQTORCHEXT_BUILD_PYTHON=OFF -DQTORCHEXT_BUILD_TESTS=OFF -DQTORCHEXT_BUILD_EXAMPLES=OFF
    -DQTORCHEXT_WITH_CUDA=OFF -DCMAKE_PREFIX_PATH=${LIBTORCH}/share/cmake
    -DCMAKE_INSTALL_PREFIX=${_install} ${_no_python}
  OUTPUT_VARIABLE _out ERROR_VARIABLE _out RESULT_VARIABLE rc)
message("${_out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "libtorch_no_python: configuring qtorchext failed (${rc})")
endif()
if(NOT _out MATCHES "qtorchext: LibTorch ([0-9.]+) ")
  message(FATAL_ERROR "libtorch_no_python: the configure did not report a LibTorch version")
endif()
set(_torch_version "${CMAKE_MATCH_1}")
string(TIMESTAMP _t1 "%s")
run_step("building qtorchext" ${CMAKE_COMMAND} --build ${_build})
run_step("installing qtorchext" ${CMAKE_COMMAND} --install ${_build})
string(TIMESTAMP _t2 "%s")
file(GLOB_RECURSE _config "${_install}/qtorchextConfig.cmake")
list(GET _config 0 _config)
file(STRINGS "${_config}" _from REGEX "set\\(qtorchext_TORCH_FROM \"libtorch\"\\)")
if(NOT _from)
  message(FATAL_ERROR "libtorch_no_python: ${_config} does not say it was built against LibTorch")
endif()

# --- An outside LibTorch project: find_package(Torch) + find_package(qtorchext).
set(EXAMPLE_SOURCE_DIR "${SOURCE_DIR}/examples/cpp/find_package")
set(EXAMPLE_BINARY_DIR "${WORK_DIR}/example")
set(INSTALL_PREFIX "${_install}")
set(LIBTORCH_PREFIX "${LIBTORCH}/share/cmake")
set(EXTRA_CONFIGURE_ARGS ${_no_python} -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}
  -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
include("${CMAKE_CURRENT_LIST_DIR}/build_example.cmake")
string(TIMESTAMP _t3 "%s")

# --- Another torch than the one qtorchext was built with is a clear error.
set(_fake "${WORK_DIR}/fake-torch-9.9.0")
file(WRITE "${_fake}/TorchConfig.cmake" "set(TORCH_INSTALL_PREFIX \"${_fake}\")\n")
file(WRITE "${_fake}/TorchConfigVersion.cmake"
  "set(PACKAGE_VERSION 9.9.0)\nset(PACKAGE_VERSION_COMPATIBLE TRUE)\n")
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${EXAMPLE_SOURCE_DIR} -B ${WORK_DIR}/example-other-torch
    ${_tools} -DCMAKE_PREFIX_PATH=${_install} -DTorch_DIR=${_fake} ${_no_python}
  OUTPUT_VARIABLE _out ERROR_VARIABLE _out RESULT_VARIABLE rc)
string(REGEX REPLACE "[ \n]+" " " _flat "${_out}")  # CMake wraps the message
if(rc EQUAL 0 OR NOT _flat MATCHES
   "built against LibTorch ${_torch_version}; find_package\\(Torch\\) found LibTorch 9\\.9\\.0")
  message("${_out}")
  message(FATAL_ERROR "libtorch_no_python: find_package(qtorchext) with LibTorch 9.9.0 did not "
    "fail with the version error")
endif()

if(EXISTS "${_ran}")
  file(READ "${_ran}" _calls)
  message(FATAL_ERROR "libtorch_no_python: Python was run:\n${_calls}")
endif()
math(EXPR _configure "${_t1} - ${_t0}")
math(EXPR _lib "${_t2} - ${_t1}")
math(EXPR _example "${_t3} - ${_t2}")
message(STATUS "libtorch_no_python: LibTorch ${_torch_version} from ${ARCHIVE}, no Python run; "
  "unpack + configure ${_configure} s, library build + install ${_lib} s, "
  "example build + run ${_example} s")
