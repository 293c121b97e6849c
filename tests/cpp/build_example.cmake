# Configures, builds and runs examples/cpp/find_package against an installed
# qtorchext (ctest test find_package_example).
foreach(step configure build run)
  if(step STREQUAL "configure")
    set(cmd ${CMAKE_COMMAND} -S ${EXAMPLE_SOURCE_DIR} -B ${EXAMPLE_BINARY_DIR}
      -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release
      -DCMAKE_PREFIX_PATH=${INSTALL_PREFIX}
      -DPython3_EXECUTABLE=${Python3_EXECUTABLE})
    find_program(CCACHE ccache)
    if(CCACHE)
      list(APPEND cmd -DCMAKE_CXX_COMPILER_LAUNCHER=${CCACHE})
    endif()
  elseif(step STREQUAL "build")
    set(cmd ${CMAKE_COMMAND} --build ${EXAMPLE_BINARY_DIR})
  else()
    set(cmd ${EXAMPLE_BINARY_DIR}/find_package_example)
  endif()
  execute_process(COMMAND ${cmd} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "find_package example: ${step} failed (${rc})")
  endif()
endforeach()
