# SPDX-License-Identifier: MIT
# Layers point down: fails when a header of include/moa includes a family above its own, or the
# detail/ folder of another family. The order is the one of docs/ARCHITECTURE.md:
#
#   core  ->  topology gossip prompt aggregate  ->  exec  ->  net queueing swarm bench eval config backends
#         ->  serve, the umbrella header moa/moa.hpp  ->  programs
#
# Families of one level may include each other. Run: cmake -DMOA_INCLUDE_DIR=<repo>/include -P
# check.cmake (ctest does; see tests/CMakeLists.txt).
cmake_minimum_required(VERSION 3.20)
if(NOT MOA_INCLUDE_DIR)
  message(FATAL_ERROR "give -DMOA_INCLUDE_DIR=<repo>/include")
endif()

set(_level_core 0)
set(_level_version 0)  # moa/version.hpp: a constant, readable from anywhere
foreach(_f topology gossip prompt aggregate)
  set(_level_${_f} 1)
endforeach()
set(_level_exec 2)
foreach(_f net queueing swarm bench eval config backends)
  set(_level_${_f} 3)
endforeach()
set(_level_umbrella 4)
set(_level_serve 4)  # moa/serve/: the OpenAI-compatible server over config/ and exec/
# Top-level headers that front one family sit at that family's layer: a header of the same or a
# higher layer may include them (eval/ runs pipelines; config/ names aggregation policies).
set(_level_aggregator 1)  # moa/aggregator.hpp: the catalogue of aggregate/
set(_level_pipeline 2)    # moa/pipeline.hpp: typed and runtime pipelines over exec/
set(_level_queueing_umbrella 3)
set(_level_swarm_umbrella 3)

# The family of a path below include/: moa/<family>/... or a top-level moa/<name>.hpp.
function(_family path out)
  if(path MATCHES "^moa/([a-z_]+)/")
    set(${out} ${CMAKE_MATCH_1} PARENT_SCOPE)
  elseif(path STREQUAL "moa/version.hpp")
    set(${out} version PARENT_SCOPE)
  elseif(path STREQUAL "moa/aggregator.hpp")
    set(${out} aggregator PARENT_SCOPE)
  elseif(path STREQUAL "moa/pipeline.hpp")
    set(${out} pipeline PARENT_SCOPE)
  elseif(path STREQUAL "moa/queueing.hpp")
    set(${out} queueing_umbrella PARENT_SCOPE)
  elseif(path STREQUAL "moa/swarm.hpp")
    set(${out} swarm_umbrella PARENT_SCOPE)
  else()
    set(${out} umbrella PARENT_SCOPE)
  endif()
endfunction()

file(GLOB_RECURSE _headers RELATIVE ${MOA_INCLUDE_DIR} ${MOA_INCLUDE_DIR}/moa/*.hpp)
set(_faults 0)
foreach(_h IN LISTS _headers)
  _family(${_h} _from)
  if(NOT DEFINED _level_${_from})
    message(SEND_ERROR "${_h}: family '${_from}' has no layer; add it to ${CMAKE_CURRENT_LIST_FILE}")
    math(EXPR _faults "${_faults} + 1")
    continue()
  endif()
  file(STRINGS ${MOA_INCLUDE_DIR}/${_h} _lines REGEX "^[ \t]*#[ \t]*include[ \t]*[<\"]moa/")
  foreach(_line IN LISTS _lines)
    string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]*[<\"]([^>\"]+)[>\"].*$" "\\1" _to_path "${_line}")
    _family(${_to_path} _to)
    if(NOT DEFINED _level_${_to})
      message(SEND_ERROR "${_h} includes ${_to_path}: family '${_to}' has no layer")
      math(EXPR _faults "${_faults} + 1")
    elseif(_level_${_to} GREATER _level_${_from})
      message(SEND_ERROR "${_h} (layer ${_level_${_from}}, ${_from}) includes ${_to_path} "
                         "(layer ${_level_${_to}}, ${_to}): layers point down only")
      math(EXPR _faults "${_faults} + 1")
    elseif(_to_path MATCHES "/detail/" AND NOT _to STREQUAL _from)
      message(SEND_ERROR "${_h} includes ${_to_path}: the detail/ of another family")
      math(EXPR _faults "${_faults} + 1")
    endif()
  endforeach()
endforeach()
list(LENGTH _headers _count)
if(_faults GREATER 0)
  message(FATAL_ERROR "layering: ${_faults} include(s) point the wrong way in ${_count} headers")
endif()
message(STATUS "layering: ${_count} headers, every include points down")
