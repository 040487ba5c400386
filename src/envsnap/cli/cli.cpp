#include "envsnap/cli/cli.hpp"

#include <CLI/CLI.hpp>

namespace envsnap::cli {

int run(int argc, char** argv) {
  CLI::App app{"envsnap: freeze a GPU training environment and restore it anywhere"};
  app.require_subcommand(1);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  return 0;
}

}  // namespace envsnap::cli
