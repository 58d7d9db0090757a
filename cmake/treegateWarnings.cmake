# Compiler settings for treegate's own tests, benchmarks and examples.
# Never applied to the treegate target itself, so consumers keep full control of their flags.
include_guard(GLOBAL)

# Warnings the headers must be clean of (the README's Developing section). CMAKE_COMPILE_WARNING_AS_ERROR turns
# them into errors; we do not add -Werror here so as not to fight that switch.
function(treegate_strict_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "^(GNU|Clang|AppleClang)$")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wconversion)
  elseif(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
  endif()
endfunction()

# Everything one of our own executables or check libraries needs: strict warnings, ISO C++17
# without GNU extensions (what the headers promise), the TREEGATE_NATIVE switch, the library.
function(treegate_own_target target)
  treegate_strict_warnings(${target})
  set_target_properties(${target} PROPERTIES
    CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON CXX_EXTENSIONS OFF)
  if(TREEGATE_NATIVE AND CMAKE_CXX_COMPILER_ID MATCHES "^(GNU|Clang|AppleClang)$")
    target_compile_options(${target} PRIVATE -march=native)
  endif()
  target_link_libraries(${target} PRIVATE treegate::treegate)
endfunction()
