#include <unistd.h>

#include <memory>
#include <string>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/image/restore.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::cli {

namespace {
constexpr int exit_bad_input = 2;
constexpr int exit_store = 3;
constexpr int exit_corrupt = 6;
}  // namespace

void add_restore(CLI::App& app, int* exit_code) {
  auto ref = std::make_shared<std::string>();
  auto dir = std::make_shared<std::string>();
  auto store_flag = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("restore", "Unpack an image of the store into a new or empty directory");
  cmd->add_option("ref", *ref, "NAME[:TAG], NAME@sha256:... or a manifest digest prefix")->required();
  cmd->add_option("dir", *dir, "Directory to create (must not exist, or be empty)")->required();
  add_store_option(*cmd, *store_flag);
  cmd->callback([=] {
    auto s = store::Store::open(store::default_store_path(*store_flag), store::OpenMode::must_exist);
    if (!s) throw util::Fatal(exit_store, s.message());
    image::RestoreOptions options;
    options.progress = ::isatty(STDERR_FILENO) == 1;
    image::FailureKind kind = image::FailureKind::other;
    auto r = image::restore_image(*s, *ref, *dir, options, &kind);
    if (!r) throw util::Fatal(kind == image::FailureKind::corrupt ? exit_corrupt : exit_bad_input, r.message());
    fmt::print("{} {} restored into {}\n", *ref, r->digest.str(), *dir);
    *exit_code = 0;
  });
}

}  // namespace envsnap::cli
