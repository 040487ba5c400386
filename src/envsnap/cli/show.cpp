#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/lock/lock.hpp"
#include "envsnap/lock/show.hpp"

namespace envsnap::cli {

void add_show(CLI::App& app, int* exit_code) {
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto store = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("show", "Summarise a lock or snapshot, GPU stack first");
  cmd->add_option("what", *path, "Lock file, root directory or store reference")->required();
  add_store_option(*cmd, *store);
  cmd->add_flag("--json", *json, "Print the lock document as JSON");
  cmd->callback([=] {
    auto doc = load_lock_argument(*path, *store, {}, true);
    write_output("-", *json ? lock::serialize(doc) : lock::summarize(doc));
    *exit_code = 0;
  });
}

}  // namespace envsnap::cli
