# SPDX-License-Identifier: MIT
# The component targets: moa::queueing, moa::swarm, moa::ranges, moa::http, moa::net, moa::json
# (cmake/moaDependencies.cmake says what each needs). Each is an INTERFACE target over moa::moa
# that adds its link dependencies, so a consumer links what it includes and nothing more.
#
# Every component target exists whether or not its packages were found here (they are
# header-only: the consumer's machine needs the packages, not the packager's); linking one whose
# packages are missing fails at generation time naming the missing target. moa's own tests,
# examples and programs need queueing, swarm and ranges; http and net are optional for them.
include(${CMAKE_CURRENT_LIST_DIR}/moaDependencies.cmake)

set(MOA_FOUND_COMPONENTS)
foreach(_moa_c IN LISTS moa_components)
  moa_find_component(${_moa_c} _moa_missing)
  string(JOIN ", " _moa_missing ${_moa_missing})
  if(_moa_missing)
    if(MOA_DEV_BUILD AND _moa_c MATCHES "^(queueing|swarm|ranges)$")
      message(FATAL_ERROR "moa: the tests, examples and programs need the ${_moa_c} component, "
                          "which needs: ${_moa_missing}")
    endif()
    message(STATUS "moa: component ${_moa_c} not usable here (missing ${_moa_missing})")
  else()
    list(APPEND MOA_FOUND_COMPONENTS ${_moa_c})
  endif()
  add_library(moa_${_moa_c} INTERFACE)
  add_library(moa::${_moa_c} ALIAS moa_${_moa_c})
  set_target_properties(moa_${_moa_c} PROPERTIES EXPORT_NAME ${_moa_c})
  target_link_libraries(moa_${_moa_c} INTERFACE moa::moa ${moa_component_${_moa_c}})
endforeach()
