# SPDX-License-Identifier: MIT
# cmake -DPREFIX=<dir> -DPROGRAMS=ON|OFF -DDEVICE=ON|OFF -DMAN=ON|OFF -DCOMPONENTS=<list>
#       -P installed_files.cmake
# Checks that an install holds what a package needs.
set(expected
  include/moa/moa.hpp include/moa/version.hpp
  share/moa/cmake/moaConfig.cmake share/moa/cmake/moaConfigVersion.cmake
  share/moa/cmake/moaTargets.cmake share/moa/cmake/moaDependencies.cmake
  share/pkgconfig/moa.pc
  share/doc/moa/LICENSE share/doc/moa/CHANGELOG.md share/doc/moa/README.md)
foreach(c IN LISTS COMPONENTS)
  list(APPEND expected share/moa/cmake/moa_${c}Targets.cmake share/pkgconfig/moa-${c}.pc)
endforeach()
if(PROGRAMS)
  list(APPEND expected bin/moa)
  if(MAN)
    list(APPEND expected share/man/man1/moa.1)
  endif()
  if(DEVICE)  # with ZeroMQ, moa_device: a link to moa, and its page
    list(APPEND expected bin/moa_device)
    if(MAN)
      list(APPEND expected share/man/man1/moa_device.1)
    endif()
  endif()
endif()
set(missing)
foreach(f IN LISTS expected)
  if(NOT EXISTS "${PREFIX}/${f}")
    list(APPEND missing ${f})
  endif()
endforeach()
if(missing)
  message(FATAL_ERROR "not installed: ${missing}")
endif()
if(MAN)
  file(READ "${PREFIX}/share/man/man1/moa.1" page)
  if(NOT page MATCHES "\\.TH MOA \"1\"" OR NOT page MATCHES "SUBCOMMANDS" OR NOT page MATCHES "moa run")
    message(FATAL_ERROR "share/man/man1/moa.1 is not moa's man page")
  endif()
endif()
if(EXISTS "${PREFIX}/bin/moa_device")
  file(READ_SYMLINK "${PREFIX}/bin/moa_device" target)
  if(NOT target STREQUAL "moa")
    message(FATAL_ERROR "bin/moa_device is not a link to moa (it points to '${target}')")
  endif()
endif()
list(LENGTH expected n)
message(STATUS "installed: all ${n} expected files")
