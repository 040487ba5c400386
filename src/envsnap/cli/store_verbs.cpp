#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::cli {

namespace {

constexpr int exit_bad_ref = 2;
constexpr int exit_store = 3;

store::Store open_store(const std::string& flag) {
  auto s = store::Store::open(store::default_store_path(flag), store::OpenMode::must_exist);
  if (!s) throw util::Fatal(exit_store, s.message());
  return std::move(*s);
}

std::string human_bytes(uint64_t n) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (n < 1024) return fmt::format("{} B", n);
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 5) {
    v /= 1024;
    ++u;
  }
  return v < 10 ? fmt::format("{:.1f} {}", v, units[u]) : fmt::format("{:.0f} {}", v, units[u]);
}

struct Row {
  std::string name, digest, created;
  int64_t size = -1;  // -1: unknown (an image index, or an unreadable manifest)
};

std::vector<Row> list_rows(const store::Store& s) {
  auto images = s.list();
  if (!images) throw util::Fatal(exit_store, images.message());
  std::vector<Row> rows;
  for (auto& img : *images) {
    Row r{img.name, img.manifest.digest.str(), "", -1};
    auto m = s.read_manifest(img.manifest);
    if (!m) {
      fmt::print(stderr, "envsnap: warning: {}: {}\n", img.name, m.message());
    } else if (m->contains("layers") && (*m)["layers"].is_array()) {
      int64_t total = 0;
      for (auto& l : (*m)["layers"])
        if (l.is_object() && l.contains("size") && l["size"].is_number_integer()) total += l["size"].get<int64_t>();
      r.size = total;
      auto cfg = s.read_config(*m);
      if (!cfg)
        fmt::print(stderr, "envsnap: warning: {}: {}\n", img.name, cfg.message());
      else if (cfg->contains("created") && (*cfg)["created"].is_string())
        r.created = (*cfg)["created"].get<std::string>();
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace

void add_store_verbs(CLI::App& app, int* exit_code) {
  {
    auto flag = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    auto* cmd = app.add_subcommand("ls", "List the images in the store");
    add_store_option(*cmd, *flag);
    cmd->add_flag("--json", *json, "Print a JSON array of {name, digest, size, created}");
    cmd->callback([=] {
      auto s = open_store(*flag);
      auto rows = list_rows(s);
      if (*json) {
        auto out = nlohmann::json::array();
        for (auto& r : rows)
          out.push_back({{"name", r.name},
                         {"digest", r.digest},
                         {"size", r.size >= 0 ? nlohmann::json(r.size) : nlohmann::json(nullptr)},
                         {"created", r.created.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.created)}});
        write_output("-", out.dump(2) + "\n");
      } else {
        size_t w = 8;
        for (auto& r : rows) w = std::max(w, r.name.size());
        std::string text = fmt::format("{:<{}}  {:<12}  {:>9}  {}\n", "NAME:TAG", w, "DIGEST", "SIZE", "CREATED");
        for (auto& r : rows)
          text += fmt::format("{:<{}}  {:<12}  {:>9}  {}\n", r.name, w, r.digest.substr(7, 12),
                              r.size >= 0 ? human_bytes(static_cast<uint64_t>(r.size)) : "-",
                              r.created.empty() ? "-" : r.created);
        write_output("-", text);
      }
      *exit_code = 0;
    });
  }
  {
    auto flag = std::make_shared<std::string>();
    auto ref = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("rm", "Untag an image (envsnap gc frees the space)");
    add_store_option(*cmd, *flag);
    cmd->add_option("ref", *ref, "NAME[:TAG], NAME@sha256:..., or a digest prefix")->required();
    cmd->callback([=] {
      auto s = open_store(*flag);
      auto target = s.resolve(*ref);
      if (!target) throw util::Fatal(exit_bad_ref, target.message());
      auto before = s.list();
      if (!before) throw util::Fatal(exit_store, before.message());
      if (auto r = s.untag(*ref); !r) throw util::Fatal(exit_store, r.message());
      auto after = s.list();
      if (!after) throw util::Fatal(exit_store, after.message());
      std::string text;
      for (auto& b : *before) {
        bool kept = std::any_of(after->begin(), after->end(), [&](auto& a) {
          return a.name == b.name && a.manifest.digest == b.manifest.digest;
        });
        if (!kept) text += fmt::format("untagged {} ({})\n", b.name, b.manifest.digest.str());
      }
      text += "envsnap gc frees the space its blobs use\n";
      write_output("-", text);
      *exit_code = 0;
    });
  }
  {
    auto flag = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    auto* cmd = app.add_subcommand("gc", "Remove blobs no image references, stale temporaries and caches");
    add_store_option(*cmd, *flag);
    cmd->add_flag("--json", *json, "Print what was freed as JSON");
    cmd->callback([=] {
      auto s = open_store(*flag);
      auto rep = s.gc();
      if (!rep) throw util::Fatal(exit_store, rep.message());
      if (*json) {
        nlohmann::json j = {{"blobs_removed", rep->blobs_removed},
                            {"bytes_removed", rep->bytes_removed},
                            {"temp_files_removed", rep->temp_files_removed},
                            {"temp_bytes_removed", rep->temp_bytes_removed},
                            {"cache_bytes_removed", rep->cache_bytes_removed}};
        write_output("-", j.dump(2) + "\n");
      } else {
        write_output("-", fmt::format("removed {} blobs ({}), {} temporary files ({}), {} of caches\n",
                                      rep->blobs_removed, human_bytes(rep->bytes_removed), rep->temp_files_removed,
                                      human_bytes(rep->temp_bytes_removed), human_bytes(rep->cache_bytes_removed)));
      }
      *exit_code = 0;
    });
  }
  {
    auto flag = std::make_shared<std::string>();
    auto json = std::make_shared<bool>(false);
    auto* cmd = app.add_subcommand("check", "Re-hash every blob and check that every referenced blob exists");
    add_store_option(*cmd, *flag);
    cmd->add_flag("--json", *json, "Print {blobs_checked, problems, clean} as JSON");
    cmd->callback([=] {
      auto s = open_store(*flag);
      auto rep = s.check();
      if (!rep) throw util::Fatal(exit_store, rep.message());
      bool clean = rep->problems.empty();
      if (*json) {
        nlohmann::json j = {{"blobs_checked", rep->blobs_checked}, {"problems", rep->problems}, {"clean", clean}};
        write_output("-", j.dump(2) + "\n");
      } else if (clean) {
        write_output("-", fmt::format("{} blobs checked, store is clean\n", rep->blobs_checked));
      } else {
        std::string text;
        for (auto& p : rep->problems) text += p + "\n";
        text += fmt::format("{} blobs checked, {} problems\n", rep->blobs_checked, rep->problems.size());
        write_output("-", text);
      }
      *exit_code = clean ? 0 : 1;
    });
  }
}

}  // namespace envsnap::cli
