# SPDX-License-Identifier: MIT
# cmake -DPREFIX=<dir> -DBUILD_DIR=<build> -P install.cmake: a clean install into PREFIX.
file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}"
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${rc}); the programs must be built first")
endif()
