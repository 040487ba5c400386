#include "envsnap/lock/capture.hpp"

#include <ctime>
#include <filesystem>
#include <future>

#include <fmt/format.h>

#include "envsnap/probe/context.hpp"
#include "envsnap/probe/cuda.hpp"
#include "envsnap/probe/data.hpp"
#include "envsnap/probe/environment.hpp"
#include "envsnap/probe/nvidia.hpp"
#include "envsnap/probe/project.hpp"
#include "envsnap/probe/python.hpp"
#include "envsnap/probe/system.hpp"
#include "envsnap/probe/torch.hpp"
#include "envsnap/util/rootfs.hpp"

extern char** environ;

namespace envsnap::lock {

namespace fs = std::filesystem;

std::string recorded_path(const std::string& root, const std::string& path) {
  std::error_code ec;
  auto real_root = fs::weakly_canonical(root, ec);
  auto real_path = fs::weakly_canonical(fs::absolute(path), ec);
  if (!ec && real_root != "/") {
    auto rel = real_path.lexically_relative(real_root);
    if (!rel.empty() && *rel.begin() != "..") return rel == "." ? "/" : "/" + rel.string();
  }
  return real_path.string();
}

static std::string utc_now() {
  auto t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

util::Result<LockDocument> capture_lock(const CaptureOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(options.root, ec))
    return util::Error{fmt::format("root {} does not exist or is not a directory", options.root)};
  auto root_fs = util::RootFs::open(options.root);
  if (!root_fs) return root_fs.error();
  auto canonical_root = fs::canonical(options.root, ec);
  auto liveness = canonical_root == "/" ? probe::Liveness::live_system : probe::Liveness::other_root;

  // Everything the user named is checked before any work starts.
  std::map<std::string, std::string> env;
  if (liveness == probe::Liveness::live_system) env = probe::training_environment(environ);
  for (auto& f : options.env_files) {
    auto kvs = probe::read_env_file(f);
    if (!kvs) return kvs.error();
    if (auto r = probe::add_assignments(env, *kvs, f); !r) return r.error();
  }
  if (auto r = probe::add_assignments(env, options.env, "--env"); !r) return r.error();
  for (auto& d : options.data)
    if (!fs::exists(d, ec)) return util::Error{fmt::format("--data {}: no such file or directory", d)};
  for (auto& w : options.weights)
    if (!fs::exists(w, ec)) return util::Error{fmt::format("--weights {}: no such file or directory", w)};
  if (!options.project.empty() && !fs::is_directory(options.project, ec))
    return util::Error{fmt::format("--project {}: not a directory", options.project)};

  probe::Warnings warnings;
  probe::Context ctx{*root_fs, liveness, warnings};

  // NVML forks: it runs before any thread starts.
  probe::NvmlOptions nvml;
  nvml.timeout = options.nvml_timeout;
  auto nvidia = probe::probe_nvidia(ctx, nvml);

  auto system = std::async(std::launch::async, [&] { return probe::probe_system(ctx); });
  auto project = std::async(std::launch::async, [&] {
    std::optional<probe::ProjectInfo> p;
    if (!options.project.empty())
      p = probe::probe_project(options.project, recorded_path(options.root, options.project), warnings);
    return p;
  });
  auto python = probe::probe_python(ctx, options.python_paths);
  std::vector<std::string> site_dirs;
  for (auto& e : python) site_dirs.push_back(e.path);
  auto torch = std::async(std::launch::async, [&] { return probe::probe_torch(ctx, site_dirs); });
  auto cuda = probe::probe_cuda(ctx, site_dirs);

  nlohmann::json data = nlohmann::json::array();
  std::vector<std::pair<std::string, std::string>> data_items;
  for (auto& d : options.data) data_items.emplace_back(d, "data");
  for (auto& w : options.weights) data_items.emplace_back(w, "weights");
  for (auto& [path, role] : data_items) {
    auto info = probe::probe_data(path, recorded_path(options.root, path), role, warnings);
    if (!info) return info.error();
    data.push_back(to_json(*info));
  }
  std::sort(data.begin(), data.end(), [](const nlohmann::json& a, const nlohmann::json& b) {
    return std::tie(a["path"].get_ref<const std::string&>(), a["role"].get_ref<const std::string&>()) <
           std::tie(b["path"].get_ref<const std::string&>(), b["role"].get_ref<const std::string&>());
  });

  nlohmann::json lock;
  lock["system"] = to_json(system.get());
  lock["nvidia"] = to_json(nvidia);
  lock["cuda"] = to_json(cuda);
  nlohmann::json envs = nlohmann::json::array();
  for (auto& e : python) envs.push_back(to_json(e));
  lock["python"] = {{"environments", std::move(envs)}};
  nlohmann::json torch_json = nlohmann::json::array();
  for (auto& t : torch.get()) torch_json.push_back(to_json(t));
  lock["torch"] = std::move(torch_json);
  if (auto p = project.get()) lock["project"] = to_json(*p);
  if (!data.empty()) lock["data"] = std::move(data);
  lock["env"] = env;

  auto items = warnings.items();
  std::sort(items.begin(), items.end());
  nlohmann::json captured = {{"at", utc_now()},
                             {"root", fs::absolute(options.root).lexically_normal().string()},
                             {"envsnap", ENVSNAP_VERSION},
                             {"warnings", items}};
  return make_document(std::move(lock), std::move(captured));
}

}  // namespace envsnap::lock
