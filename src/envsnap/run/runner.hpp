#pragma once
// `envsnap run`: the per-run supervisor. It resolves the image (pulling a registry
// reference first), checks the host, composes the root file system from the layer
// cache with overlayfs in a mount namespace of its own (so nothing stays mounted on
// the host when it ends, however it ends; a copy where overlayfs is refused), writes
// the OCI bundle and runs it with runc or crun, or hands the image to podman or
// docker. It relays the output to the terminal and the run's log, forwards signals,
// proxies -p ports into the container's network namespace, and returns docker's
// exit codes: 125 for its own failures, else the command's (126/127 from the init
// when the command cannot run or is missing; 128+N when killed by signal N).

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "envsnap/cli/verbs.hpp"

namespace envsnap::run {

inline constexpr int exit_run_failed = 125;

struct RunRequest {
  std::string ref;
  std::vector<std::string> command;  // after the entrypoint; empty: the image's cmd
  std::optional<std::string> entrypoint;  // --entrypoint: replaces the image's ("" clears it)
  std::string gpus = "auto";         // auto: all when this host has a driver, else none
  std::vector<std::string> volumes, ports, env, env_files, ulimits;
  std::string workdir, user, name, shm_size, ipc, runtime = "auto";
  bool interactive = false, tty = false, remove = false, force = false, quiet = false;
  bool print_config = false;         // --print-config: write config.json to stdout, run nothing
  std::string store_flag;
  std::string driver_root = "/";     // where the NVIDIA driver is looked for (tests use a fake root)
  cli::NetFlags net;
};

// Runs the request; returns the exit code to exit with. Throws util::Fatal(125, ...)
// for failures before the command starts.
int run(const RunRequest& request);

}  // namespace envsnap::run
