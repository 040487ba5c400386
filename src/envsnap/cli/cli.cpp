#include <algorithm>
#include "envsnap/cli/cli.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::cli {

void write_output(const std::string& path, const std::string& bytes) {
  if (path == "-") {
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
    return;
  }
  std::string tmp = path + ".tmp-envsnap";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw util::Fatal(2, fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  size_t off = 0;
  while (off < bytes.size()) {
    auto n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      throw util::Fatal(2, fmt::format("cannot write {}: {}", path, std::strerror(err)));
    }
    off += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw util::Fatal(2, fmt::format("cannot write {}: {}", path, std::strerror(err)));
  }
}

void add_store_option(CLI::App& cmd, std::string& store_flag) {
  cmd.add_option("--store", store_flag, "Store directory (default: $ENVSNAP_STORE, else $XDG_DATA_HOME/envsnap)");
}

void print_warnings(const nlohmann::json& captured) {
  if (!captured.is_object() || !captured.contains("warnings")) return;
  for (auto& w : captured["warnings"]) fmt::print(stderr, "envsnap: warning: {}\n", w.get<std::string>());
}

int run(int argc, char** argv) {
  CLI::App app{"envsnap: freeze a GPU training environment and restore it anywhere"};
  app.set_version_flag("--version", "envsnap " ENVSNAP_VERSION);
  app.require_subcommand(1);
  int exit_code = 0;
  add_capture(app, &exit_code);
  add_show(app, &exit_code);
  add_diff(app, &exit_code);
  add_help(app, &exit_code);
  add_store_verbs(app, &exit_code);
  add_restore(app, &exit_code);
  add_export_import(app, &exit_code);
  add_registry_verbs(app, &exit_code);
  add_run(app, &exit_code);
  add_cdi(app, &exit_code);
  std::vector<std::string> args(argv + 1, argv + argc);
  bool is_run = !args.empty() && args.front() == "run";
  if (is_run) args = separate_run_command(*app.get_subcommand("run"), args);
  std::reverse(args.begin(), args.end());  // CLI11 consumes the vector from its back
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    // run fails as docker run does: 125 when it cannot even start.
    return rc == 0 ? 0 : is_run ? 125 : 2;
  }
  return exit_code;
}

}  // namespace envsnap::cli
