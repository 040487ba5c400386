#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/image/plan.hpp"
#include "envsnap/image/snapshot.hpp"
#include "envsnap/lock/capture.hpp"
#include "envsnap/store/store.hpp"

namespace envsnap::cli {

namespace fs = std::filesystem;

namespace {

struct CaptureArgs {
  lock::CaptureOptions lock;
  bool lock_only = false, dry_run = false, json = false, quiet = false;
  std::string output = "-", tag, store, compression = "gzip", workdir;
  std::vector<std::string> includes, excludes, cmd;
  double nvml_timeout = 10.0;
  int64_t source_date_epoch = -1;
  unsigned threads = 0;
};

// The in-root path ("/x/y") of a host path under ROOT, or empty when it lies outside.
std::string in_root(const std::string& root, const std::string& path) {
  std::error_code ec;
  auto r = fs::weakly_canonical(root, ec);
  auto p = fs::weakly_canonical(fs::absolute(path), ec);
  auto rel = p.lexically_relative(r);
  if (rel.empty() || *rel.begin() == "..") return {};
  return rel == "." ? "/" : "/" + rel.string();
}

void print_dry_run(const image::Plan& plan, bool json) {
  if (json) {
    nlohmann::json j = {{"layers", nlohmann::json::array()}, {"excluded", nlohmann::json::array()},
                        {"sanitised", nlohmann::json::array()}};
    for (const auto& l : plan.layers) {
      nlohmann::json files = nlohmann::json::array();
      for (const auto& e : l.entries) files.push_back("/" + e.path);
      j["layers"].push_back({{"name", l.name}, {"entries", l.entries.size()}, {"bytes", l.bytes}, {"paths", files}});
    }
    for (const auto& e : plan.excluded) j["excluded"].push_back({{"path", e.path}, {"reason", e.reason}});
    for (const auto& s : plan.sanitised) j["sanitised"].push_back({{"path", s.path}, {"what", s.what}});
    write_output("-", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
    return;
  }
  std::string o = "layers (in image order):\n";
  uint64_t total = 0;
  for (const auto& l : plan.layers) {
    o += fmt::format("  {:<28} {:>8} entries {:>10.1f} MiB\n", l.name, l.entries.size(),
                     static_cast<double>(l.bytes) / (1 << 20));
    total += l.bytes;
  }
  o += fmt::format("  {:<28} {:>8}         {:>10.1f} MiB\n", "total", "", static_cast<double>(total) / (1 << 20));
  o += fmt::format("\nleft out ({}):\n", plan.excluded.size());
  for (const auto& e : plan.excluded) o += fmt::format("  {}  ({})\n", e.path, e.reason);
  o += fmt::format("\nsanitised ({}):\n", plan.sanitised.size());
  for (const auto& s : plan.sanitised) o += fmt::format("  {}  ({})\n", s.path, s.what);
  write_output("-", o);
}

int run_capture(CaptureArgs& a) {
  a.lock.nvml_timeout = std::chrono::milliseconds(static_cast<long>(a.nvml_timeout * 1000));
  if (!a.lock_only && a.tag.empty() && !a.dry_run)
    throw util::Fatal(2, "capture needs -t NAME[:TAG] to name the snapshot in the store, or --lock-only for a lock file");
  std::optional<oci::Reference> ref;
  if (!a.tag.empty()) {
    auto r = oci::parse_reference(a.tag);
    if (!r || r->digest) throw util::Fatal(2, fmt::format("-t {}: {}", a.tag, r ? "give NAME:TAG, not a digest" : r.message()));
    ref = *r;
  }
  if (a.compression != "gzip" && a.compression != "zstd")
    throw util::Fatal(2, fmt::format("--compression {}: use gzip or zstd", a.compression));

  auto doc = lock::capture_lock(a.lock);
  if (!doc) throw util::Fatal(2, doc.message());
  if (a.lock_only) {
    if (!a.quiet) print_warnings(doc->captured);
    write_output(a.output, lock::serialize(*doc));
    return 0;
  }

  auto root = util::RootFs::open(a.lock.root);
  if (!root) throw util::Fatal(2, root.message());
  auto store_path = store::default_store_path(a.store);
  image::PlanOptions plan_options;
  plan_options.includes = a.includes;
  plan_options.excludes = a.excludes;
  for (auto& d : a.lock.data)
    if (auto p = in_root(a.lock.root, d); !p.empty()) plan_options.data_paths.push_back(p);
  for (auto& w : a.lock.weights)
    if (auto p = in_root(a.lock.root, w); !p.empty()) plan_options.data_paths.push_back(p);
  if (!a.lock.project.empty()) plan_options.project_path = in_root(a.lock.root, a.lock.project);
  plan_options.store_path = in_root(a.lock.root, store_path.string());

  // When the store exists, the blobs the last capture of this root used are
  // re-hashed while the root is walked.
  std::optional<image::BlobVerifier> verifier;
  auto root_key = image::BlobVerifier::root_key(*root);
  if (!a.dry_run)
    if (auto existing = store::Store::open(store_path, store::OpenMode::must_exist))
      verifier.emplace(*existing).prefetch(root_key);

  probe::Warnings warnings;
  auto plan = image::plan_layers(*root, doc->lock, plan_options, warnings);
  if (!plan) throw util::Fatal(2, plan.message());
  if (!a.quiet) {
    print_warnings(doc->captured);
    for (auto& w : warnings.items()) fmt::print(stderr, "envsnap: warning: {}\n", w);
  }
  if (a.dry_run) {
    print_dry_run(*plan, a.json);
    return 0;
  }
  if (a.compression == "gzip" && !a.quiet)
    if (auto caveat = image::gzip_cpu_caveat(); !caveat.empty()) fmt::print(stderr, "envsnap: warning: {}\n", caveat);
  if (a.compression == "zstd" && !a.quiet)
    fmt::print(stderr, "envsnap: warning: zstd layers cannot be read by Docker before 23.0; use the default gzip "
                       "for older engines\n");

  auto store = store::Store::open(store_path, store::OpenMode::create_if_missing);
  if (!store) throw util::Fatal(3, store.message());
  image::SnapshotOptions options;
  options.plan = plan_options;
  options.layer.compression = a.compression == "zstd" ? image::Compression::zstd : image::Compression::gzip;
  options.layer.threads = a.threads;
  if (a.source_date_epoch >= 0) {
    options.layer.source_date_epoch = a.source_date_epoch;
  } else if (const char* sde = std::getenv("SOURCE_DATE_EPOCH"); sde && *sde) {
    char* end = nullptr;
    long long v = std::strtoll(sde, &end, 10);
    if (*end || v < 0) throw util::Fatal(2, fmt::format("SOURCE_DATE_EPOCH={}: not a number of seconds", sde));
    options.layer.source_date_epoch = v;
  }
  options.workdir = a.workdir;
  options.cmd = a.cmd;
  options.progress = !a.quiet && ::isatty(2);
  if (verifier) options.verifier = &*verifier;
  options.root_key = root_key;
  auto result = image::build_snapshot(*root, *doc, *plan, options, *store, *ref);
  if (!result) throw util::Fatal(3, result.message());
  if (!a.quiet)
    for (auto& w : result->warnings) fmt::print(stderr, "envsnap: warning: {}\n", w);

  if (a.json) {
    nlohmann::json j = {{"tag", ref->str()}, {"manifest", result->manifest.digest.str()},
                        {"lock_digest", doc->digest}, {"layers", nlohmann::json::array()}};
    for (auto& l : result->layers)
      j["layers"].push_back({{"name", l.name}, {"digest", l.result.blob.digest.str()},
                             {"diff_id", l.result.diff_id.str()}, {"size", l.result.blob.size},
                             {"files", l.files}, {"reused", l.reused}});
    write_output("-", j.dump(2) + "\n");
  } else {
    uint64_t size = 0;
    int reused = 0;
    for (auto& l : result->layers) {
      size += static_cast<uint64_t>(l.result.blob.size);
      reused += l.reused ? 1 : 0;
    }
    write_output("-", fmt::format("{} {} ({} layers, {:.1f} MiB, {} re-used)\nlock {}\n", ref->str(),
                                  result->manifest.digest.str(), result->layers.size(),
                                  static_cast<double>(size) / (1 << 20), reused, doc->digest));
  }
  return 0;
}

}  // namespace

void add_capture(CLI::App& app, int* exit_code) {
  auto a = std::make_shared<CaptureArgs>();
  auto* cmd = app.add_subcommand("capture", "Capture a root (default /) into a snapshot (lock + image) or a lock");
  cmd->add_option("root", a->lock.root, "Root directory to capture")->default_val("/");
  cmd->add_option("-t,--tag", a->tag, "Name the snapshot NAME[:TAG] in the store");
  cmd->add_flag("--lock-only", a->lock_only, "Write only the lock, no image");
  cmd->add_option("-o,--output", a->output, "With --lock-only: write the lock to FILE (default: stdout)");
  cmd->add_flag("--dry-run", a->dry_run, "List what would go in, by layer, and what is left out or sanitised");
  cmd->add_option("--include", a->includes, "Keep paths matching GLOB (in-root) that would be left out");
  cmd->add_option("--exclude", a->excludes, "Leave out paths matching GLOB (in-root)");
  cmd->add_option("--compression", a->compression, "gzip (default) or zstd");
  cmd->add_option("--source-date-epoch", a->source_date_epoch, "Clamp newer modification times to T (seconds)");
  cmd->add_option("--threads", a->threads, "Compression threads (default: cores + 1)");
  cmd->add_option("--workdir", a->workdir, "Working directory of the image");
  cmd->add_option("--cmd", a->cmd, "Default command of the image (repeat for each argument)");
  cmd->add_option("--python", a->lock.python_paths, "Another Python interpreter, prefix or site-packages dir (in ROOT)");
  cmd->add_option("--project", a->lock.project, "Training code directory (git)");
  cmd->add_option("--data", a->lock.data, "Data directory or file: digested, mounted at run time, never packed");
  cmd->add_option("--weights", a->lock.weights, "Weights file or directory: digested, never packed");
  cmd->add_option("--env", a->lock.env, "Record an environment variable K=V");
  cmd->add_option("--env-file", a->lock.env_files, "Record the K=V lines of FILE");
  cmd->add_option("--nvml-timeout", a->nvml_timeout, "Seconds NVML may take before it is given up")->check(CLI::PositiveNumber);
  cmd->add_flag("--json", a->json, "Machine-readable output");
  cmd->add_flag("-q,--quiet", a->quiet, "No warnings, no progress bar");
  add_store_option(*cmd, a->store);
  cmd->callback([a, exit_code] { *exit_code = run_capture(*a); });
}

}  // namespace envsnap::cli
