# SPDX-License-Identifier: MIT
# What each component of moa needs. Read by moa's own build (cmake/moaComponents.cmake) and
# installed next to moaConfig.cmake, so a consumer finds exactly the packages of the components
# it asks for. The core, moa::moa, needs Threads only.
#
#   component  headers                                            link dependencies
#   queueing   moa/queueing.hpp, moa/queueing/*                   Eigen
#   swarm      moa/swarm.hpp, moa/swarm/*, moa/topology/dag.hpp,  Eigen
#              moa/backends/tunable_synthetic.hpp
#   ranges     moa/exec/trace_views.hpp                           range-v3
#   http       moa/backends/openai.hpp, moa/backends/openai/*     libcurl, nlohmann-json
#   net        moa/net/zmq_*.hpp                                  cppzmq (libzmq), nlohmann-json
#   json       moa/queueing/json.hpp                              nlohmann-json (+ queueing)
#   config     moa/config/roster.hpp, moa/core/result_json.hpp    nlohmann-json, Eigen (DAG layouts)
#              (moa/config/roster_openai.hpp: + http)
#   eval       moa/eval/*                                         Eigen, nlohmann-json (+ queueing)
set(moa_components queueing swarm ranges http net json config eval)
set(moa_component_queueing Eigen3::Eigen)
set(moa_component_swarm Eigen3::Eigen)
set(moa_component_ranges range-v3::range-v3)
set(moa_component_http CURL::libcurl nlohmann_json::nlohmann_json)
set(moa_component_net cppzmq nlohmann_json::nlohmann_json)
set(moa_component_json moa::queueing nlohmann_json::nlohmann_json)
set(moa_component_config Eigen3::Eigen nlohmann_json::nlohmann_json)
set(moa_component_eval moa::queueing Eigen3::Eigen nlohmann_json::nlohmann_json)

# Finds the package that provides an imported target, at the versions moa is tested with
# (range-v3's version file accepts exact matches only, so it is found without one).
macro(moa_find_target _moa_target)
  if(NOT TARGET ${_moa_target})
    if("${_moa_target}" STREQUAL "Eigen3::Eigen")
      find_package(Eigen3 3.3 QUIET NO_MODULE)
    elseif("${_moa_target}" STREQUAL "range-v3::range-v3")
      find_package(range-v3 QUIET CONFIG)
    elseif("${_moa_target}" STREQUAL "CURL::libcurl")
      find_package(CURL 7.68 QUIET)
    elseif("${_moa_target}" STREQUAL "nlohmann_json::nlohmann_json")
      find_package(nlohmann_json 3.10 QUIET CONFIG)
    elseif("${_moa_target}" STREQUAL "cppzmq")
      find_package(cppzmq QUIET CONFIG)
    endif()
  endif()
endmacro()

# Finds what a component needs; sets <_moa_missing> to what is still missing, as Debian
# package names (empty when the component can be used).
macro(moa_find_component _moa_component _moa_missing)
  set(${_moa_missing})
  foreach(_moa_dep IN LISTS moa_component_${_moa_component})
    if(_moa_dep MATCHES "^moa::")
      continue()  # another component: requested with it
    endif()
    moa_find_target(${_moa_dep})
    if(NOT TARGET ${_moa_dep})
      if(_moa_dep STREQUAL "Eigen3::Eigen")
        list(APPEND ${_moa_missing} "Eigen3 >= 3.3 (libeigen3-dev)")
      elseif(_moa_dep STREQUAL "range-v3::range-v3")
        list(APPEND ${_moa_missing} "range-v3 (librange-v3-dev)")
      elseif(_moa_dep STREQUAL "CURL::libcurl")
        list(APPEND ${_moa_missing} "libcurl >= 7.68 (libcurl4-openssl-dev)")
      elseif(_moa_dep STREQUAL "nlohmann_json::nlohmann_json")
        list(APPEND ${_moa_missing} "nlohmann-json >= 3.10 (nlohmann-json3-dev)")
      elseif(_moa_dep STREQUAL "cppzmq")
        list(APPEND ${_moa_missing} "cppzmq (cppzmq-dev)")
      endif()
    endif()
  endforeach()
endmacro()
