#pragma once
// Child processes: a function run in a forked child with a timeout (for calls
// that can hang, such as NVML on a broken driver), and host commands with
// captured output.

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "envsnap/util/result.hpp"

namespace envsnap::util {

// Forks; the child runs fn and its returned bytes come back through a pipe. The
// child is killed when it runs past timeout; the error then says so. Call it
// before starting threads: the child of a multi-threaded process may deadlock.
Result<std::string> run_in_child(const std::function<std::string()>& fn, std::chrono::milliseconds timeout);

struct CommandOutput {
  int exit_code = 0;
  std::string out;
  std::string err;
};

// Runs argv (argv[0] looked up on PATH) with stdin from /dev/null, capturing
// stdout and stderr. An error only when it cannot start or runs past timeout.
Result<CommandOutput> run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                                  const std::vector<std::string>& extra_env = {});

}  // namespace envsnap::util
