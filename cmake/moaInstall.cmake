# SPDX-License-Identifier: MIT
# What `cmake --install` puts in place besides the programs (programs/CMakeLists.txt) and their
# man pages (cmake/moaManPage.cmake): the headers, the CMake package with one export per
# component, and pkg-config files (moa.pc for the core, moa-<component>.pc for the others).
include(CMakePackageConfigHelpers)
set(_moa_cmake_dir ${CMAKE_INSTALL_DATADIR}/moa/cmake)

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/moa DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS moa EXPORT moaTargets)
install(EXPORT moaTargets NAMESPACE moa:: DESTINATION ${_moa_cmake_dir})
foreach(_moa_c IN LISTS moa_components)
  install(TARGETS moa_${_moa_c} EXPORT moa_${_moa_c}Targets)
  install(EXPORT moa_${_moa_c}Targets NAMESPACE moa:: DESTINATION ${_moa_cmake_dir})
endforeach()

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/moaConfig.cmake.in
  ${PROJECT_BINARY_DIR}/moaConfig.cmake INSTALL_DESTINATION ${_moa_cmake_dir})
# Header-only: the same package serves every architecture. Before 1.0 a minor release may break
# the API (CHANGELOG.md, "Versions"), so only the same minor version is compatible.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/moaConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/moaConfig.cmake ${PROJECT_BINARY_DIR}/moaConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/moaDependencies.cmake
        DESTINATION ${_moa_cmake_dir})

# pkg-config: header-only, so the files are architecture-independent (share/pkgconfig) and
# relocatable (${pcfiledir}). Requires names the pkg-config modules of the link dependencies;
# range-v3 ships none on Debian (its headers are in the default include path).
set(_moa_pc_Eigen3::Eigen eigen3)
set(_moa_pc_CURL::libcurl libcurl)
set(_moa_pc_nlohmann_json::nlohmann_json nlohmann_json)
set(_moa_pc_cppzmq cppzmq)
set(_moa_pc_moa::queueing moa-queueing)
if(IS_ABSOLUTE "${CMAKE_INSTALL_DATADIR}")
  set(MOA_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  set(MOA_PC_PREFIX "\${pcfiledir}/../..")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(MOA_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(MOA_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()
set(MOA_PC_NAME moa)
set(MOA_PC_DESCRIPTION "${PROJECT_DESCRIPTION} (core; C++20)")
set(MOA_PC_REQUIRES "")
set(MOA_PC_CFLAGS "-I\${includedir} -pthread")
set(MOA_PC_LIBS "-pthread")
configure_file(${PROJECT_SOURCE_DIR}/cmake/moa.pc.in ${PROJECT_BINARY_DIR}/pkgconfig/moa.pc @ONLY)
set(_moa_pc_files ${PROJECT_BINARY_DIR}/pkgconfig/moa.pc)
foreach(_moa_c IN LISTS moa_components)
  set(MOA_PC_NAME moa-${_moa_c})
  set(MOA_PC_DESCRIPTION "moa's ${_moa_c} component")
  set(MOA_PC_REQUIRES "moa")
  foreach(_moa_dep IN LISTS moa_component_${_moa_c})
    if(DEFINED _moa_pc_${_moa_dep})
      string(APPEND MOA_PC_REQUIRES " ${_moa_pc_${_moa_dep}}")
    endif()
  endforeach()
  set(MOA_PC_CFLAGS "")
  set(MOA_PC_LIBS "")
  configure_file(${PROJECT_SOURCE_DIR}/cmake/moa.pc.in
                 ${PROJECT_BINARY_DIR}/pkgconfig/moa-${_moa_c}.pc @ONLY)
  list(APPEND _moa_pc_files ${PROJECT_BINARY_DIR}/pkgconfig/moa-${_moa_c}.pc)
endforeach()
install(FILES ${_moa_pc_files} DESTINATION ${CMAKE_INSTALL_DATADIR}/pkgconfig)

install(FILES ${PROJECT_SOURCE_DIR}/LICENSE ${PROJECT_SOURCE_DIR}/CHANGELOG.md
              ${PROJECT_SOURCE_DIR}/README.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
