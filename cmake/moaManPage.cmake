# SPDX-License-Identifier: MIT
# Man pages generated from the programs' own --help (help2man), at build time, so they never
# drift from the program: the page of `moa` holds the main help and, in section SUBCOMMANDS, the
# help of every subcommand it lists. Optional: without help2man (Debian: help2man) the programs
# are built and installed without a page.
#
# Also a script: cmake -DPROGRAM=<exe> -DOUTPUT=<file> -P moaManPage.cmake writes help2man's
# include file with the subcommands' help.
if(CMAKE_SCRIPT_MODE_FILE)
  execute_process(COMMAND "${PROGRAM}" --help OUTPUT_VARIABLE help RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${PROGRAM} --help failed (${rc})")
  endif()
  get_filename_component(name "${PROGRAM}" NAME)
  string(REPLACE ";" "," help "${help}")  # only names are read from it; keep lines whole
  string(REPLACE "\n" ";" lines "${help}")
  set(in_list OFF)
  set(out "")
  foreach(line IN LISTS lines)
    if(line MATCHES "^Subcommands:")
      set(in_list ON)
    elseif(in_list AND line MATCHES "^  ([a-z][a-z0-9_-]*)( |$)")
      set(sub ${CMAKE_MATCH_1})
      execute_process(COMMAND "${PROGRAM}" ${sub} --help OUTPUT_VARIABLE sub_help)
      # roff: escape backslashes, keep lines starting with . or ' literal, no filling.
      string(REPLACE "\\" "\\e" sub_help "${sub_help}")
      string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" sub_help "${sub_help}")
      string(REPLACE "${PROGRAM}" "${name}" sub_help "${sub_help}")
      string(APPEND out ".SS \"${name} ${sub}\"\n.nf\n${sub_help}.fi\n")
    elseif(in_list AND NOT line MATCHES "^ ")
      set(in_list OFF)
    endif()
  endforeach()
  if(out)
    set(out "[SUBCOMMANDS]\n${out}")
  endif()
  file(WRITE "${OUTPUT}" "${out}")
  return()
endif()

find_program(MOA_HELP2MAN help2man)
if(NOT MOA_HELP2MAN)
  message(STATUS "moa: help2man not found: no man pages (Debian: help2man)")
endif()

# moa_add_man_page(<target> <name> "<one-line description>" [PROGRAM <path>]): <name>.1 from
# `<target> --help` (or `<path> --help`, a program the target builds, such as a link to it),
# built with the default target and installed to man1. Only for builds that install, and never
# from a sanitizer build (the page would run an instrumented program at build time).
function(moa_add_man_page _target _name _description)
  if(NOT MOA_HELP2MAN OR NOT MOA_INSTALL OR MOA_DEV_SANITIZE OR CMAKE_CROSSCOMPILING)
    return()
  endif()
  cmake_parse_arguments(PARSE_ARGV 3 _arg "" "PROGRAM" "")
  set(_program $<TARGET_FILE:${_target}>)
  if(_arg_PROGRAM)
    set(_program ${_arg_PROGRAM})
  endif()
  set(_page ${CMAKE_CURRENT_BINARY_DIR}/${_name}.1)
  set(_include ${CMAKE_CURRENT_BINARY_DIR}/${_name}.h2m)
  add_custom_command(OUTPUT ${_page}
    COMMAND ${CMAKE_COMMAND} -DPROGRAM=${_program} -DOUTPUT=${_include}
            -P ${PROJECT_SOURCE_DIR}/cmake/moaManPage.cmake
    COMMAND ${MOA_HELP2MAN} --no-info --no-discard-stderr --section=1
            --version-string=${PROJECT_VERSION} --name=${_description} --include=${_include}
            --output=${_page} ${_program}
    DEPENDS ${_target} ${PROJECT_SOURCE_DIR}/cmake/moaManPage.cmake
    COMMENT "help2man: ${_name}.1"
    VERBATIM)
  add_custom_target(${_name}_man ALL DEPENDS ${_page})
  if(MOA_INSTALL)
    install(FILES ${_page} DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
  endif()
endfunction()
