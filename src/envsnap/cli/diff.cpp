#include <filesystem>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/lock/capture.hpp"
#include "envsnap/lock/diff.hpp"
#include "envsnap/lock/lock.hpp"

namespace envsnap::cli {

namespace fs = std::filesystem;

void add_diff(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<std::string>();
  auto b = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto quiet = std::make_shared<bool>(false);
  auto data = std::make_shared<std::vector<std::string>>();
  auto store = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("diff", "Show what differs between two locks or roots, ranked by risk");
  cmd->add_option("a", *a, "Lock file, root directory or store reference")->required();
  cmd->add_option("b", *b, "Lock file, root directory or store reference")->required();
  add_store_option(*cmd, *store);
  cmd->add_option("--data", *data, "Data path inside each root to digest (roots only)");
  cmd->add_flag("--json", *json, "Machine-readable output");
  cmd->add_flag("-q,--quiet", *quiet, "Do not print capture warnings");
  cmd->callback([=] {
    auto da = load_lock_argument(*a, *store, *data, *quiet);
    auto db = load_lock_argument(*b, *store, *data, *quiet);
    auto changes = lock::diff_locks(da.lock, db.lock);
    if (*json) {
      write_output("-", lock::to_json(changes).dump(2) + "\n");
    } else if (changes.empty()) {
      write_output("-", fmt::format("no differences ({})\n", da.digest));
    } else {
      write_output("-", fmt::format("{} differences, most likely to change results first:\n{}", changes.size(),
                                    lock::format_changes(changes)));
    }
    *exit_code = changes.empty() ? 0 : 1;
  });
}

void add_help(CLI::App& app, int* exit_code) {
  auto topic = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("help", "Help topics: exit-codes");
  cmd->add_option("topic", *topic, "Topic")->required();
  cmd->callback([=] {
    if (*topic != "exit-codes") throw util::Fatal(2, fmt::format("no help topic '{}'; topics: exit-codes", *topic));
    write_output("-",
                 "0    ok\n"
                 "1    a finding: diff found differences, doctor found errors, check found corruption\n"
                 "2    usage error or bad input (a missing root, an unreadable lock, a bad flag, an unknown reference)\n"
                 "3    store error (no store, not a layout, unreadable index, lock or write failure)\n"
                 "4    network error (registry unreachable, connection reset, timeout after retries)\n"
                 "5    authentication failed (wrong credentials, no permission)\n"
                 "6    corrupt content (a blob or manifest does not match its digest)\n"
                 "125  run: envsnap itself failed before the command started\n"
                 "126  run: the command cannot be executed\n"
                 "127  run: the command was not found\n"
                 "     run: otherwise the command's own code; 128+N when killed by signal N\n");
    *exit_code = 0;
  });
}

}  // namespace envsnap::cli
