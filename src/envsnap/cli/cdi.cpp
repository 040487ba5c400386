#include <memory>
#include <string>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/gpu/cdi.hpp"
#include "envsnap/gpu/driver.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::cli {

namespace {
constexpr int exit_bad_input = 2;
}  // namespace

void add_cdi(CLI::App& app, int* exit_code) {
  auto output = std::make_shared<std::string>("-");
  auto driver_root = std::make_shared<std::string>("/");
  auto dev_root = std::make_shared<std::string>();
  auto format = std::make_shared<std::string>("json");
  auto* cmd = app.add_subcommand("cdi", "Write a CDI spec (nvidia.com/gpu) for this host's NVIDIA GPUs and driver");
  cmd->add_option("-o,--output", *output, "File to write, atomically (default: stdout)");
  cmd->add_option("--driver-root", *driver_root, "Root directory holding the driver files (default: /)");
  cmd->add_option("--dev-root", *dev_root, "Root directory holding /dev (default: the driver root)");
  cmd->add_option("--format", *format, "json (default) or yaml")->check(CLI::IsMember({"json", "yaml"}));
  cmd->callback([=] {
    gpu::DiscoverOptions options;
    options.driver_root = *driver_root;
    options.dev_root = *dev_root;
    auto driver = gpu::discover_driver(options);
    if (!driver) throw util::Fatal(exit_bad_input, driver.message());
    for (const auto& w : driver->warnings) fmt::print(stderr, "envsnap: warning: {}\n", w);
    auto spec = gpu::cdi_spec(*driver);
    if (!spec) throw util::Fatal(exit_bad_input, spec.message());
    write_output(*output, *format == "yaml" ? gpu::to_yaml(*spec) : spec->dump(2) + "\n");
    *exit_code = 0;
  });
}

}  // namespace envsnap::cli
