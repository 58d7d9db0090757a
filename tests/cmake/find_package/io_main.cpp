// Consumer test program for treegate::io found with find_package: a save/load round trip, and a
// changed data byte refused by the checksum (which needs zlib, linked through treegate::io).
#include <treegate/io/safetensors.hpp>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  namespace st = treegate::safetensors;
  if (argc != 2) {
    std::fprintf(stderr, "usage: io_consumer <file>\n");
    return 2;
  }
  const std::string path = argv[1];
  treegate::dense<float> d(3, 2);
  d.initialize(1);
  st::save(d, path);
  const auto back = st::load_dense<float>(path);
  if (st::save_to_memory(back) != st::save_to_memory(d)) {
    std::fprintf(stderr, "io_consumer: the reloaded layer differs\n");
    return 1;
  }
  std::vector<unsigned char> bytes = st::save_to_memory(d);
  bytes.back() = static_cast<unsigned char>(bytes.back() ^ 1u);
  try {
    (void)st::load_from_memory<treegate::dense<float>>(bytes.data(), bytes.size());
    std::fprintf(stderr, "io_consumer: a changed byte loaded\n");
    return 1;
  } catch (const treegate::file_error& e) {
    if (std::string(e.what()).find("checksum mismatch") == std::string::npos) {
      std::fprintf(stderr, "io_consumer: unexpected error: %s\n", e.what());
      return 1;
    }
  }
  std::printf("treegate::io %s: round trip and checksum ok\n", treegate::version_string());
  return 0;
}
