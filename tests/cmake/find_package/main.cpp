// Consumer test program: the umbrella header must compile warning-free in a strict build.
#include <treegate/treegate.hpp>

#include <cstdio>

#if defined(TREEGATE_EXPECTED_VERSION_MAJOR)
static_assert(TREEGATE_VERSION_MAJOR == TREEGATE_EXPECTED_VERSION_MAJOR &&
                  TREEGATE_VERSION_MINOR == TREEGATE_EXPECTED_VERSION_MINOR &&
                  TREEGATE_VERSION_PATCH == TREEGATE_EXPECTED_VERSION_PATCH,
              "treegate's version macros disagree with project(treegate VERSION ...)");
#endif

int main() {
  const char* version = treegate::version_string();
  std::printf("treegate %s\n", version);
  return 0;
}
