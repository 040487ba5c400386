#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/lock/lock.hpp"
#include "envsnap/lock/show.hpp"

namespace envsnap::cli {

void add_show(CLI::App& app, int* exit_code) {
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("show", "Summarise a lock, GPU stack first");
  cmd->add_option("lock", *path, "Lock file")->required();
  cmd->add_flag("--json", *json, "Print the lock document as JSON");
  cmd->callback([=] {
    auto doc = lock::read_file(*path);
    if (!doc) throw util::Fatal(2, doc.message());
    if (*json)
      write_output("-", lock::serialize(*doc));
    else
      write_output("-", lock::summarize(*doc));
    *exit_code = 0;
  });
}

}  // namespace envsnap::cli
