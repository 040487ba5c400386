#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/lock/capture.hpp"

namespace envsnap::cli {

void add_capture(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<lock::CaptureOptions>();
  auto lock_only = std::make_shared<bool>(false);
  auto quiet = std::make_shared<bool>(false);
  auto output = std::make_shared<std::string>("-");
  auto nvml_timeout = std::make_shared<double>(10.0);
  auto* cmd = app.add_subcommand("capture", "Capture a root (default /) into a lock");
  cmd->add_option("root", opts->root, "Root directory to capture")->default_val("/");
  cmd->add_flag("--lock-only", *lock_only, "Write only the lock, no image");
  cmd->add_option("-o,--output", *output, "Write the lock to FILE (default: stdout)");
  cmd->add_option("--python", opts->python_paths, "Another Python interpreter, prefix or site-packages dir (in ROOT)");
  cmd->add_option("--project", opts->project, "Training code directory (git)");
  cmd->add_option("--data", opts->data, "Data directory or file to digest");
  cmd->add_option("--weights", opts->weights, "Weights file or directory to digest");
  cmd->add_option("--env", opts->env, "Record an environment variable K=V");
  cmd->add_option("--env-file", opts->env_files, "Record the K=V lines of FILE");
  cmd->add_option("--nvml-timeout", *nvml_timeout, "Seconds NVML may take before it is given up")->check(CLI::PositiveNumber);
  cmd->add_flag("-q,--quiet", *quiet, "Do not print warnings");
  cmd->callback([=] {
    if (!*lock_only)
      throw util::Fatal(2, "capture without --lock-only packs an image into the store, which this build "
                           "does not have yet; use --lock-only");
    opts->nvml_timeout = std::chrono::milliseconds(static_cast<long>(*nvml_timeout * 1000));
    auto doc = lock::capture_lock(*opts);
    if (!doc) throw util::Fatal(2, doc.message());
    if (!*quiet) print_warnings(doc->captured);
    write_output(*output, lock::serialize(*doc));
    *exit_code = 0;
  });
}

}  // namespace envsnap::cli
