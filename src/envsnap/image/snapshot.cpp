#include "envsnap/image/snapshot.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <future>
#include <mutex>

#include <fmt/format.h>

#include "envsnap/probe/environment.hpp"
#include "envsnap/util/sha256.hpp"

namespace envsnap::image {

namespace fs = std::filesystem;
using Json = nlohmann::json;

namespace {

std::string rfc3339(int64_t t) {
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The cache key of a layer: everything that decides its bytes. Inode and device
// numbers are in it so that a file replaced by another of the same size and
// mtime is not mistaken for the old one.
std::string layer_key(const PlannedLayer& layer, const LayerOptions& options) {
  util::Sha256 h;
  h.update(fmt::format("envsnap-layer-v1\n{}\n{}\n{}\n", layer.name, static_cast<int>(options.compression),
                       options.source_date_epoch ? *options.source_date_epoch : -1));
  for (const auto& e : layer.entries) {
    const auto& st = e.st;
    h.update(e.path);
    h.update(fmt::format("\n{} {} {} {} {} {} {} {}\n", st.st_mode, st.st_uid, st.st_gid, st.st_size,
                         st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_ino, st.st_dev));
    h.update(e.link_target);
    h.update("\n");
    h.update(e.hardlink_to);
    h.update("\n");
    if (e.content) h.update("content " + util::sha256_hex(*e.content) + "\n");
  }
  return h.hex();
}

// A layer cache entry as remembered; nothing in it is trusted until verified.
std::optional<LayerResult> cache_entry(store::Store& store, const std::string& key) {
  auto text = store.read_record("layers", key + ".json");
  if (!text) return std::nullopt;
  auto j = Json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.contains("blob") || !j.contains("diff_id")) return std::nullopt;
  auto blob = oci::Descriptor::from_json(j["blob"], "layer cache");
  auto diff_id = oci::Digest::parse(j.value("diff_id", ""));
  if (!blob || !diff_id) return std::nullopt;
  LayerResult r;
  r.blob = *blob;
  r.diff_id = *diff_id;
  r.tar_size = j.value("tar_size", uint64_t{0});
  return r;
}

bool hash_matches(const store::Store& store, const oci::Descriptor& blob, const std::atomic<bool>* stop) {
  auto fd = store.open_blob(blob.digest);
  if (!fd) return false;
  struct stat st{};
  if (::fstat(fd->get(), &st) != 0 || static_cast<int64_t>(st.st_size) != blob.size) return false;
  auto actual = util::sha256_file(fd->get(), store.blob_path(blob.digest).string(), stop);
  return actual && *actual == blob.digest.hex();
}

void remember_layer(store::Store& store, const std::string& key, const LayerResult& r) {
  // A record that cannot be written only costs a cache miss later.
  Json j = {{"blob", r.blob.to_json()}, {"diff_id", r.diff_id.str()}, {"tar_size", r.tar_size}};
  (void)store.write_record("layers", key + ".json", j.dump());
}

// A prefetched verdict answers only for the same digest and the same size.
std::string pending_key(const oci::Descriptor& d) { return fmt::format("{}/{}", d.digest.str(), d.size); }

class ProgressBar {
public:
  ProgressBar(bool enabled, uint64_t total) : m_enabled(enabled), m_total(std::max<uint64_t>(total, 1)) {}
  void update(uint64_t done_in_layer) {
    if (!m_enabled) return;
    auto now = std::chrono::steady_clock::now();
    if (now - m_last < std::chrono::milliseconds(100) && done_in_layer != 0) return;
    m_last = now;
    draw(m_done + done_in_layer);
  }
  void finish_layer(uint64_t bytes) {
    m_done += bytes;
    if (m_enabled) draw(m_done);
  }
  void label(const std::string& name) { m_label = name; }
  void end() {
    if (m_enabled) std::fputs("\n", stderr);
  }

private:
  void draw(uint64_t done) {
    double frac = std::min(1.0, static_cast<double>(done) / static_cast<double>(m_total));
    int width = 30;
    int fill = static_cast<int>(frac * width);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - m_start).count();
    double rate = secs > 0 ? static_cast<double>(done) / secs / (1 << 20) : 0;
    fmt::print(stderr, "\r[{}{}] {:3.0f}% {:.0f}/{:.0f} MiB {:.0f} MiB/s {:<24}", std::string(fill, '#'),
               std::string(width - fill, ' '), frac * 100, static_cast<double>(done) / (1 << 20),
               static_cast<double>(m_total) / (1 << 20), rate, m_label.substr(0, 24));
    std::fflush(stderr);
  }
  bool m_enabled;
  uint64_t m_total, m_done = 0;
  std::string m_label;
  std::chrono::steady_clock::time_point m_start = std::chrono::steady_clock::now(), m_last{};
};

}  // namespace

BlobVerifier::~BlobVerifier() {
  m_stop = true;
  if (m_thread.joinable()) m_thread.join();
}

std::string BlobVerifier::root_key(const util::RootFs& root) {
  struct stat st{};
  std::error_code ec;
  auto canonical = fs::weakly_canonical(root.path(), ec);
  if (::stat(root.path().c_str(), &st) != 0) return "";
  return util::sha256_hex(fmt::format("{}\n{}\n{}", ec ? root.path().string() : canonical.string(), st.st_dev,
                                      st.st_ino));
}

void BlobVerifier::prefetch(const std::string& root_key) {
  if (root_key.empty() || m_thread.joinable()) return;
  auto text = m_store.read_record("captures", root_key + ".json");
  if (!text) return;
  auto j = Json::parse(*text, nullptr, false);
  if (!j.is_object() || !j["blobs"].is_array()) return;
  std::vector<oci::Descriptor> blobs;
  for (const auto& b : j["blobs"])
    if (auto d = oci::Descriptor::from_json(b, "capture record"); d && m_store.has_blob(d->digest)) blobs.push_back(*d);
  if (blobs.empty()) return;
  auto hold = m_store.lock_shared();
  if (!hold) return;
  m_hold = std::move(*hold);
  std::sort(blobs.begin(), blobs.end(), [](const auto& a, const auto& b) { return a.size > b.size; });
  std::vector<std::shared_ptr<Entry>> work;
  {
    std::lock_guard lock(m_mutex);
    for (auto& b : blobs) {
      if (m_pending.count(pending_key(b))) continue;
      auto entry = std::make_shared<Entry>();
      entry->blob = b;
      m_pending.emplace(pending_key(b), entry);
      work.push_back(std::move(entry));
    }
  }
  m_thread = std::thread([this, work = std::move(work)] {
    for (const auto& entry : work) {
      if (entry->claimed.exchange(true)) continue;  // a caller of intact() took it
      entry->verdict.set_value(!m_stop && hash_matches(m_store, entry->blob, &m_stop));
    }
  });
}

bool BlobVerifier::intact(const oci::Descriptor& blob) {
  std::shared_ptr<Entry> entry;
  {
    std::lock_guard lock(m_mutex);
    if (auto it = m_pending.find(pending_key(blob)); it != m_pending.end()) entry = it->second;
  }
  if (!entry) return hash_matches(m_store, blob, nullptr);
  if (!entry->claimed.exchange(true)) {
    bool ok = hash_matches(m_store, blob, nullptr);
    entry->verdict.set_value(ok);
    return ok;
  }
  return entry->result.get();
}

void BlobVerifier::remember(const std::string& root_key, const std::vector<oci::Descriptor>& blobs) {
  if (root_key.empty()) return;
  Json list = Json::array();
  for (const auto& b : blobs) list.push_back(b.to_json());
  (void)m_store.write_record("captures", root_key + ".json", Json{{"blobs", std::move(list)}}.dump());
}

Json make_config(const lock::LockDocument& doc, const std::vector<LayerReport>& layers, const SnapshotOptions& options,
                 int64_t created) {
  std::vector<std::string> env = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                  "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"};
  for (auto& [k, v] : doc.lock.value("env", Json::object()).items()) {
    if (!v.is_string() || v.get<std::string>() == probe::redacted) continue;
    if (k == "PATH" || k == "NVIDIA_VISIBLE_DEVICES" || k == "NVIDIA_DRIVER_CAPABILITIES") continue;
    if (v.get<std::string>().find(std::string(probe::redacted)) != std::string::npos) continue;
    env.push_back(k + "=" + v.get<std::string>());
  }
  std::sort(env.begin() + 3, env.end());
  Json cfg = {{"Env", env},
              {"Labels",
               {{std::string(oci::label_lock), lock::canonical(doc.lock)},
                {std::string(oci::label_lock_digest), doc.digest}}}};
  if (!options.workdir.empty()) cfg["WorkingDir"] = options.workdir;
  if (!options.cmd.empty()) cfg["Cmd"] = options.cmd;
  Json diff_ids = Json::array();
  Json history = Json::array();
  for (const auto& l : layers) {
    diff_ids.push_back(l.result.diff_id.str());
    history.push_back({{"created", rfc3339(created)},
                       {"created_by", fmt::format("envsnap capture: {} ({} files)", l.name, l.files)}});
  }
  std::string machine = doc.lock.value("system", Json::object()).value("arch", "");
  return {{"created", rfc3339(created)},
          {"architecture", oci::oci_arch(machine)},
          {"os", "linux"},
          {"config", std::move(cfg)},
          {"rootfs", {{"type", "layers"}, {"diff_ids", std::move(diff_ids)}}},
          {"history", std::move(history)}};
}

util::Result<SnapshotResult> build_snapshot(const util::RootFs& root, const lock::LockDocument& doc, const Plan& plan,
                                            const SnapshotOptions& options, store::Store& store,
                                            const oci::Reference& tag) {
  SnapshotResult out;
  uint64_t total = 0;
  int64_t created = 0;
  for (const auto& l : plan.layers) {
    total += l.bytes;
    for (const auto& e : l.entries) created = std::max<int64_t>(created, e.st.st_mtim.tv_sec);
  }
  if (options.layer.source_date_epoch) created = std::min(created, *options.layer.source_date_epoch);

  // Held from the first blob until the tag, so a concurrent gc keeps our untagged blobs.
  auto hold = store.lock_shared();
  if (!hold) return hold.error();
  ProgressBar bar(options.progress, total);
  // A layer whose cache entry exists is re-hashed on its own thread; the layers
  // without one are packed meanwhile, so the hashing hides behind the packing.
  // A layer whose blob fails its digest is packed afresh afterwards.
  std::optional<BlobVerifier> own_verifier;
  BlobVerifier* verifier = options.verifier;
  if (!verifier) verifier = &own_verifier.emplace(store);
  std::vector<LayerReport> reports(plan.layers.size());
  std::vector<std::string> keys(plan.layers.size());
  std::vector<std::optional<LayerResult>> entries(plan.layers.size());
  std::vector<std::future<bool>> verified(plan.layers.size());
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    const auto& layer = plan.layers[i];
    reports[i].name = layer.name;
    reports[i].bytes = layer.bytes;
    for (const auto& e : layer.entries)
      if (S_ISREG(e.st.st_mode)) ++reports[i].files;
    keys[i] = layer_key(layer, options.layer);
    entries[i] = cache_entry(store, keys[i]);
    if (entries[i])
      verified[i] = std::async(std::launch::async, [verifier, blob = entries[i]->blob] { return verifier->intact(blob); });
  }
  auto pack = [&](size_t i) -> util::Result<void> {
    const auto& layer = plan.layers[i];
    bar.label(layer.name);
    auto written =
        write_layer(root, layer.entries, options.layer, store, [&bar](uint64_t done) { bar.update(done); });
    if (!written) return util::Error{fmt::format("layer {}: {}", layer.name, written.message())};
    reports[i].result = *written;
    remember_layer(store, keys[i], reports[i].result);
    bar.finish_layer(layer.bytes);
    return {};
  };
  for (size_t i = 0; i < plan.layers.size(); ++i)
    if (!entries[i])
      if (auto r = pack(i); !r) return r.error();
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    if (!entries[i]) continue;
    if (verified[i].get()) {
      reports[i].result = *entries[i];
      reports[i].reused = true;
      bar.finish_layer(plan.layers[i].bytes);
    } else {
      if (store.remove_if_corrupt(entries[i]->blob.digest))
        out.warnings.push_back(fmt::format("blob {} of layer {} did not match its digest; it was packed afresh",
                                           entries[i]->blob.digest.str(), plan.layers[i].name));
      if (auto r = pack(i); !r) return r.error();
    }
  }
  out.layers = std::move(reports);
  bar.end();

  auto config_bytes = make_config(doc, out.layers, options, created).dump();
  auto config = store.put_blob(config_bytes, std::string(oci::media_config));
  if (!config) return config.error();
  Json layers = Json::array();
  for (const auto& l : out.layers) {
    auto d = l.result.blob.to_json();
    d["annotations"] = {{"dev.envsnap.layer", l.name}};
    layers.push_back(std::move(d));
  }
  Json manifest = {{"schemaVersion", 2},
                   {"mediaType", oci::media_manifest},
                   {"config", config->to_json()},
                   {"layers", std::move(layers)},
                   {"annotations", {{"dev.envsnap.lock.digest", doc.digest}}}};
  auto m = store.put_blob(manifest.dump(), std::string(oci::media_manifest));
  if (!m) return m.error();
  m->platform_os = "linux";
  m->platform_arch = oci::oci_arch(doc.lock.value("system", Json::object()).value("arch", ""));
  if (auto r = store.tag(tag, *m); !r) return r.error();
  out.manifest = *m;
  std::vector<oci::Descriptor> blobs;
  for (const auto& l : out.layers) blobs.push_back(l.result.blob);
  verifier->remember(options.root_key, blobs);
  return out;
}

util::Result<lock::LockDocument> lock_from_config(const Json& config, std::string_view where) {
  const auto& labels = config.value("config", Json::object()).value("Labels", Json::object());
  auto lock_text = labels.value(std::string(oci::label_lock), "");
  auto digest = labels.value(std::string(oci::label_lock_digest), "");
  if (lock_text.empty())
    return util::Error{fmt::format("{}: the image has no envsnap lock (label {}); it was not made by envsnap capture",
                                   where, oci::label_lock)};
  auto lock = Json::parse(lock_text, nullptr, false);
  if (lock.is_discarded() || !lock.is_object())
    return util::Error{fmt::format("{}: the lock label is not valid JSON", where)};
  auto doc = lock::make_document(std::move(lock), Json::object());
  if (doc.digest != digest)
    return util::Error{fmt::format("{}: the lock label does not match its digest label ({} vs {})", where, doc.digest,
                                   digest)};
  return doc;
}

}  // namespace envsnap::image
