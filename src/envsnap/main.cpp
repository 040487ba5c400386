#include <cstdio>
#include <exception>

#include <fmt/format.h>

#include "envsnap/cli/cli.hpp"
#include "envsnap/util/result.hpp"

int main(int argc, char** argv) {
  try {
    return envsnap::cli::run(argc, argv);
  } catch (const envsnap::util::Fatal& e) {
    fmt::print(stderr, "envsnap: error: {}\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    fmt::print(stderr, "envsnap: error: {}\n", e.what());
    return 125;
  }
}
