#include "envsnap/probe/project.hpp"

#include <fcntl.h>

#include <fmt/format.h>

#include "envsnap/probe/environment.hpp"
#include "envsnap/util/process.hpp"
#include "envsnap/util/sha256.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::probe {

using namespace std::chrono_literals;

static util::Result<util::CommandOutput> git(const std::string& dir, std::vector<std::string> args) {
  // No fsmonitor, hooks or pagers: reading a repository must not run its configured commands.
  std::vector<std::string> argv = {"git",  "-C", dir, "--no-pager", "-c", "core.fsmonitor=false",
                                   "-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null",
                                   "--no-optional-locks"};
  argv.insert(argv.end(), args.begin(), args.end());
  return util::run_command(argv, 60s, {"GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "LC_ALL=C"});
}

ProjectInfo probe_project(const std::string& dir, const std::string& recorded_path, Warnings& warnings) {
  ProjectInfo p;
  p.path = recorded_path;
  auto top = git(dir, {"rev-parse", "--show-toplevel"});
  if (!top) {
    warnings.add(fmt::format("{}: cannot read the project's git state: {}", dir, top.message()));
    return p;
  }
  if (top->exit_code != 0) {
    warnings.add(fmt::format("{}: not a git repository; the project is recorded without a commit", dir));
    return p;
  }
  p.is_git = true;
  if (auto r = git(dir, {"rev-parse", "--verify", "-q", "HEAD"}); r && r->exit_code == 0)
    p.commit = std::string(util::trim(r->out));
  if (auto r = git(dir, {"symbolic-ref", "-q", "--short", "HEAD"}); r && r->exit_code == 0)
    p.branch = std::string(util::trim(r->out));
  if (auto r = git(dir, {"remote"}); r && r->exit_code == 0) {
    auto remotes = util::lines(r->out);
    std::string name;
    for (auto rm : remotes)
      if (rm == "origin") name = "origin";
    if (name.empty() && !remotes.empty()) name = std::string(remotes.front());
    if (!name.empty())
      if (auto u = git(dir, {"remote", "get-url", name}); u && u->exit_code == 0)
        p.remote = remove_url_credentials(util::trim(u->out));
  }
  auto status = git(dir, {"status", "--porcelain=v1", "-z", "--untracked-files=all"});
  if (!status || status->exit_code != 0) {
    warnings.add(fmt::format("{}: git status failed; dirty state unknown", dir));
    return p;
  }
  p.dirty = !status->out.empty();
  if (p.dirty) {
    util::Sha256 h;
    auto diff = git(dir, {"diff", "--binary", "--no-color", "--no-ext-diff", "HEAD"});
    if (diff && diff->exit_code == 0) h.update(diff->out);
    // Untracked files: their names and contents.
    auto untracked = git(dir, {"ls-files", "--others", "--exclude-standard", "-z"});
    if (untracked && untracked->exit_code == 0) {
      for (auto name : util::split(untracked->out, '\0')) {
        if (name.empty()) continue;
        h.update(name);
        h.update("\0", 1);
        std::string full = dir + "/" + std::string(name);
        util::UniqueFd fd(::open(full.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
        if (fd) {
          if (auto d = util::sha256_file(fd.get(), full)) h.update(*d);
        }
      }
    }
    p.diff_digest = "sha256:" + h.hex();
  }
  return p;
}

nlohmann::json to_json(const ProjectInfo& p) {
  nlohmann::json j = {{"path", p.path}};
  if (!p.is_git) return j;
  if (!p.commit.empty()) j["commit"] = p.commit;
  if (!p.branch.empty()) j["branch"] = p.branch;
  if (!p.remote.empty()) j["remote"] = p.remote;
  j["dirty"] = p.dirty;
  if (!p.diff_digest.empty()) j["diff_digest"] = p.diff_digest;
  return j;
}

}  // namespace envsnap::probe
