# Writes the C++ example of README.md to a source file; part of treegate's test build.
# Usage: cmake -DREADME=<README.md> -DOUTPUT=<file.cpp> -P extract_readme_example.cmake
#
# The example is the fenced block opened by ```cpp on the first non-blank line after the line
# `<!-- readme-example -->`, up to the next line starting with ```. A #line directive maps
# compiler messages back to README.md.
cmake_minimum_required(VERSION 3.21)

foreach(var README OUTPUT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "extract_readme_example.cmake: -D${var}=... is required")
  endif()
endforeach()

set(marker "<!-- readme-example -->")
file(READ "${README}" text)
string(REPLACE "\r\n" "\n" text "${text}")

string(FIND "${text}" "${marker}" marker_pos)
if(marker_pos LESS 0)
  message(FATAL_ERROR "${README}: no '${marker}' line")
endif()
string(FIND "${text}" "${marker}" last_marker_pos REVERSE)
if(NOT last_marker_pos EQUAL marker_pos)
  message(FATAL_ERROR "${README}: more than one '${marker}' line; only one example is extracted")
endif()

string(LENGTH "${marker}" marker_len)
math(EXPR after_marker "${marker_pos} + ${marker_len}")
string(SUBSTRING "${text}" ${after_marker} -1 rest)

# Only blank lines may separate the marker from the opening fence.
if(NOT rest MATCHES "^[ \t]*\n([ \t]*\n)*```(cpp|c\\+\\+)[ \t]*\n")
  message(FATAL_ERROR "${README}: the line after '${marker}' must open a ```cpp code block")
endif()
string(LENGTH "${CMAKE_MATCH_0}" opening_len)
math(EXPR code_pos "${after_marker} + ${opening_len}")
string(SUBSTRING "${text}" ${code_pos} -1 code)

# The block ends at the first line that starts with ``` (the code may not contain one).
if(code MATCHES "^```")
  set(code "")
else()
  string(FIND "${code}" "\n```" close_pos)
  if(close_pos LESS 0)
    message(FATAL_ERROR "${README}: the ```cpp block after '${marker}' is not closed")
  endif()
  math(EXPR close_pos "${close_pos} + 1")  # keep the code's final newline
  string(SUBSTRING "${code}" 0 ${close_pos} code)
endif()
if(code STREQUAL "")
  message(FATAL_ERROR "${README}: the ```cpp block after '${marker}' is empty")
endif()

# Line number of the block's first line in README.md, for the #line directive.
string(SUBSTRING "${text}" 0 ${code_pos} before)
string(LENGTH "${before}" before_len)
string(REPLACE "\n" "" before_stripped "${before}")
string(LENGTH "${before_stripped}" before_stripped_len)
math(EXPR first_line "${before_len} - ${before_stripped_len} + 1")

file(TO_CMAKE_PATH "${README}" readme_path)
file(WRITE "${OUTPUT}"
  "// Generated from ${readme_path} by cmake/extract_readme_example.cmake; edit README.md.\n"
  "#line ${first_line} \"${readme_path}\"\n"
  "${code}")
