#include "envsnap/registry/transfer.hpp"

#include <fcntl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "envsnap/util/result.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::registry {

namespace fs = std::filesystem;

namespace {

constexpr int exit_bad_input = 2;
constexpr int exit_store = 3;

const char* accept_header =
    "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

bool is_index_type(std::string_view mt) { return mt == oci::media_index || mt == oci::media_docker_list; }
bool is_manifest_type(std::string_view mt) { return mt == oci::media_manifest || mt == oci::media_docker_manifest; }

std::string short_digest(const oci::Digest& d) { return d.hex().substr(0, 12); }

std::string human(uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  double v = static_cast<double>(n);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  int u = -1;
  while (v >= 1024 && u < 3) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", v, units[u]);
}

// Per-blob progress bars on stderr, redrawn at most every 100 ms.
class Progress {
public:
  explicit Progress(bool enabled) : m_enabled(enabled) {}
  ~Progress() { redraw(true); }
  int add(std::string label, uint64_t total) {
    std::lock_guard lk(m_mu);
    m_items.push_back({std::move(label), total, 0, ""});
    return static_cast<int>(m_items.size() - 1);
  }
  void update(int id, uint64_t done) {
    if (!m_enabled) return;
    std::lock_guard lk(m_mu);
    m_items[static_cast<size_t>(id)].done = done;
    auto now = std::chrono::steady_clock::now();
    if (now - m_last < std::chrono::milliseconds(100)) return;
    m_last = now;
    draw_locked(false);
  }
  void finish(int id, std::string status) {
    if (!m_enabled) return;
    std::lock_guard lk(m_mu);
    auto& it = m_items[static_cast<size_t>(id)];
    it.status = std::move(status);
    it.done = it.total;
    draw_locked(false);
  }
  void redraw(bool final) {
    if (!m_enabled) return;
    std::lock_guard lk(m_mu);
    draw_locked(final);
  }

private:
  struct Item {
    std::string label;
    uint64_t total, done;
    std::string status;  // non-empty once finished
    bool printed = false;
  };
  std::string bar(const Item& it) const {
    int width = 30;
    int filled = it.total ? static_cast<int>(width * static_cast<double>(it.done) / static_cast<double>(it.total)) : width;
    if (filled > width) filled = width;
    return fmt::format("{} [{}{}] {} / {}", it.label, std::string(static_cast<size_t>(filled), '='),
                       std::string(static_cast<size_t>(width - filled), ' '), human(it.done), human(it.total));
  }
  void draw_locked(bool final) {
    std::string out;
    if (m_drawn > 0) out += fmt::format("\x1b[{}A", m_drawn);
    for (auto& it : m_items)
      if (!it.status.empty() && !it.printed) {
        out += fmt::format("\x1b[2K{} {}\n", it.label, it.status);
        it.printed = true;
      }
    int n = 0;
    if (!final)
      for (auto& it : m_items)
        if (it.status.empty() && it.done > 0) {
          out += "\x1b[2K" + bar(it) + "\n";
          ++n;
        }
    out += "\x1b[J";
    m_drawn = n;
    std::fwrite(out.data(), 1, out.size(), stderr);
    std::fflush(stderr);
  }

  bool m_enabled;
  std::mutex m_mu;
  std::vector<Item> m_items;
  int m_drawn = 0;
  std::chrono::steady_clock::time_point m_last{};
};

// Runs jobs on up to max_parallel threads; the first exception stops the rest and is rethrown.
void run_parallel(size_t n, const std::function<void(size_t)>& job) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr first;
  std::mutex mu;
  auto worker = [&] {
    while (!failed) {
      size_t i = next++;
      if (i >= n) return;
      try {
        job(i);
      } catch (...) {
        std::lock_guard lk(mu);
        if (!first) first = std::current_exception();
        failed = true;
      }
    }
  };
  size_t threads = std::min<size_t>(n, max_parallel);
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  if (threads > 0) worker();
  for (auto& t : pool) t.join();
  if (first) std::rethrow_exception(first);
}

std::string with_digest_param(const std::string& location, const oci::Digest& d) {
  return location + (location.find('?') == std::string::npos ? "?" : "&") + "digest=" + url_encode(d.str());
}

std::string host_arch() {
  struct utsname u;
  if (::uname(&u) != 0) return "amd64";
  return oci::oci_arch(u.machine);
}

struct Blob {
  oci::Descriptor desc;
};

std::vector<oci::Descriptor> blobs_of(const nlohmann::json& manifest, std::string_view where) {
  std::vector<oci::Descriptor> out;
  if (!manifest.contains("config"))
    throw util::Fatal(exit_bad_input, fmt::format("{}: the manifest has no config descriptor", where));
  auto cfg = oci::Descriptor::from_json(manifest["config"], where);
  if (!cfg) throw util::Fatal(exit_bad_input, cfg.message());
  out.push_back(*cfg);
  if (manifest.contains("layers") && manifest["layers"].is_array())
    for (auto& l : manifest["layers"]) {
      if (l.is_object() && l.contains("urls")) continue;  // foreign layers stay where they are
      auto d = oci::Descriptor::from_json(l, where);
      if (!d) throw util::Fatal(exit_bad_input, d.message());
      bool dup = false;
      for (auto& o : out) dup = dup || o.digest == d->digest;
      if (!dup) out.push_back(*d);
    }
  return out;
}

// ------------------------------------------------------------------ push

enum class Outcome { uploaded, present, mounted };

class Pusher {
public:
  Pusher(store::Store& s, Client& c, std::string repo, KnownBlobs& known, Progress& progress)
      : m_s(s), m_c(c), m_repo(std::move(repo)), m_known(known), m_progress(progress),
        m_scope("repository:" + m_repo + ":pull,push") {}

  Outcome push_blob(const oci::Descriptor& d) {
    std::string blob_url = m_c.url(fmt::format("/v2/{}/blobs/{}", m_repo, d.digest.str()));
    HttpRequest head;
    head.method = "HEAD";
    head.url = blob_url;
    auto h = m_c.send(head, m_scope);
    if (h.status == 200) return Outcome::present;

    std::string location;
    std::set<std::string> others;
    {
      std::lock_guard lk(m_known_mu);
      others = m_known.repositories(m_c.host(), d.digest);
    }
    for (auto& from : others) {
      if (from == m_repo) continue;
      HttpRequest m;
      m.method = "POST";
      m.url = m_c.url(fmt::format("/v2/{}/blobs/uploads/?mount={}&from={}", m_repo, url_encode(d.digest.str()), url_encode(from)));
      auto r = m_c.send(m, m_scope + " repository:" + from + ":pull");
      if (r.status == 201) return Outcome::mounted;
      if (r.status == 202 && !r.header("location").empty()) {
        location = resolve_location(r.url.empty() ? m.url : r.url, r.header("location"));
        break;
      }
    }
    upload(d, location);
    return Outcome::uploaded;
  }

  void put_manifest(const std::string& reference, const std::string& media_type, const std::string& bytes) {
    HttpRequest req;
    req.method = "PUT";
    req.url = m_c.url(fmt::format("/v2/{}/manifests/{}", m_repo, reference));
    req.headers.push_back("Content-Type: " + media_type);
    req.body = bytes;
    auto r = m_c.send(req, m_scope);
    if (r.status != 201 && r.status != 200 && r.status != 202)
      throw util::Fatal(exit_network, fmt::format("{}/{}: the registry refused the manifest {}: {}", m_c.host(), m_repo,
                                                  oci::Digest::of(bytes).str(), describe(r)));
  }

private:
  std::string start_upload() {
    HttpRequest req;
    req.method = "POST";
    req.url = m_c.url(fmt::format("/v2/{}/blobs/uploads/", m_repo));
    auto r = m_c.send(req, m_scope);
    if (r.status != 202 || r.header("location").empty())
      throw util::Fatal(exit_network, fmt::format("{}/{}: cannot start a blob upload: {}", m_c.host(), m_repo, describe(r)));
    return resolve_location(r.url.empty() ? req.url : r.url, r.header("location"));
  }

  // Throws Fatal when the registry refuses the finished upload.
  void finish_put(const HttpResponse& r, const oci::Descriptor& d) {
    if (r.status == 400 && r.body.find("DIGEST_INVALID") != std::string::npos)
      throw util::Fatal(exit_corrupt, fmt::format("{}/{}: the registry says blob {} does not match its digest: {}",
                                                  m_c.host(), m_repo, d.digest.str(), describe(r)));
    throw util::Fatal(exit_network, fmt::format("{}/{}: upload of blob {} failed: {}", m_c.host(), m_repo,
                                                d.digest.str(), describe(r)));
  }

  void upload(const oci::Descriptor& d, std::string location) {
    auto fd = m_s.open_blob(d.digest);
    if (!fd) throw util::Fatal(exit_store, fd.message());
    uint64_t size = static_cast<uint64_t>(d.size);
    int id = m_progress.add("sha256:" + short_digest(d.digest), size);
    for (int session = 0; session <= max_retries; ++session) {
      if (location.empty()) location = start_upload();
      if (size < monolithic_limit) {
        HttpRequest put;
        put.method = "PUT";
        put.url = with_digest_param(location, d.digest);
        put.headers.push_back("Content-Type: application/octet-stream");
        put.body_fd = fd->get();
        put.body_length = size;
        put.on_sent = [&](uint64_t n) { m_progress.update(id, n); };
        auto r = m_c.send(put, m_scope);
        if (r.status == 201 || r.status == 204) break;
        if (r.status == 404) {
          location.clear();
          continue;
        }
        finish_put(r, d);
      }
      uint64_t offset = 0;
      int failures = 0;
      bool restart = false;
      while (offset < size && !restart) {
        uint64_t len = std::min(chunk_size, size - offset);
        HttpRequest patch;
        patch.method = "PATCH";
        patch.url = location;
        patch.headers.push_back("Content-Type: application/octet-stream");
        patch.headers.push_back(fmt::format("Content-Range: {}-{}", offset, offset + len - 1));
        patch.body_fd = fd->get();
        patch.body_offset = offset;
        patch.body_length = len;
        uint64_t base = offset;
        patch.on_sent = [&, base](uint64_t n) { m_progress.update(id, base + n); };
        auto r = m_c.send(patch, m_scope, false);
        if (r.curl_code == 0 && r.status == 202) {
          if (!r.header("location").empty()) location = resolve_location(location, r.header("location"));
          auto held = parse_upload_range(r.header("range"));
          uint64_t next = offset + len;
          offset = held && *held != 0 && *held <= next ? *held : next;  // "0-0" after a chunk: ambiguous, trust the chunk
          failures = 0;
          continue;
        }
        if (r.curl_code == 0 && r.status == 404) {
          restart = true;
          break;
        }
        if (r.curl_code == 0 && !is_retryable(0, r.status) && r.status != 416) finish_put(r, d);
        if (++failures > max_retries) {
          if (r.status == 0 || r.curl_code != 0)
            throw util::Fatal(exit_network, fmt::format("{}/{}: upload of blob {} failed: {}", m_c.host(), m_repo,
                                                        d.digest.str(), describe(r)));
          finish_put(r, d);
        }
        std::this_thread::sleep_for(retry_delay(failures - 1));
        HttpRequest status;
        status.url = location;
        auto st = m_c.send(status, m_scope);
        if (st.status == 404) {
          restart = true;
          break;
        }
        if (st.status == 204 || st.status == 200) {
          if (!st.header("location").empty()) location = resolve_location(location, st.header("location"));
          if (auto held = parse_upload_range(st.header("range")); held && *held <= size) offset = *held;
        }
      }
      if (restart) {
        location.clear();
        continue;
      }
      HttpRequest put;
      put.method = "PUT";
      put.url = with_digest_param(location, d.digest);
      put.headers.push_back("Content-Type: application/octet-stream");
      auto r = m_c.send(put, m_scope);
      if (r.status == 201 || r.status == 204) break;
      if (r.status == 404 && session < max_retries) {
        location.clear();
        continue;
      }
      finish_put(r, d);
    }
    m_progress.finish(id, "pushed");
  }

  store::Store& m_s;
  Client& m_c;
  std::string m_repo;
  KnownBlobs& m_known;
  std::mutex m_known_mu;
  Progress& m_progress;
  std::string m_scope;
};

// ------------------------------------------------------------------ pull

struct Fetched {
  std::string bytes, media_type;
  oci::Digest digest;
};

Fetched fetch_manifest(Client& c, const std::string& repo, const std::string& reference,
                       const std::optional<oci::Digest>& expected, const std::string& what) {
  HttpRequest req;
  req.url = c.url(fmt::format("/v2/{}/manifests/{}", repo, reference));
  req.headers.push_back(accept_header);
  req.follow_redirects = true;
  auto r = c.send(req, "repository:" + repo + ":pull");
  if (r.status == 404)
    throw util::Fatal(exit_bad_input, fmt::format("{}: no such image in the registry ({})", what, describe(r)));
  if (r.status != 200) throw util::Fatal(exit_network, fmt::format("{}: cannot fetch the manifest: {}", what, describe(r)));
  Fetched f{std::move(r.body), "", oci::Digest::of("")};
  f.digest = oci::Digest::of(f.bytes);
  if (expected && *expected != f.digest)
    throw util::Fatal(exit_corrupt, fmt::format("{}: corrupt content: the manifest hashes to {}, expected {}", what,
                                                f.digest.str(), expected->str()));
  if (auto h = r.header("docker-content-digest"); !h.empty() && !expected)
    if (auto d = oci::Digest::parse(h); d && *d != f.digest)
      throw util::Fatal(exit_corrupt, fmt::format("{}: corrupt content: the manifest hashes to {}, the registry says {}",
                                                  what, f.digest.str(), d->str()));
  auto j = nlohmann::json::parse(f.bytes, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw util::Fatal(exit_bad_input, fmt::format("{}: the manifest is not a JSON object", what));
  f.media_type = manifest_media_type(r.header("content-type"), j);
  if (!is_index_type(f.media_type) && !is_manifest_type(f.media_type))
    throw util::Fatal(exit_bad_input, fmt::format("{}: unsupported manifest type '{}' (envsnap reads OCI and docker v2 "
                                                  "manifests and indexes)", what, f.media_type));
  return f;
}

void pull_blob(store::Store& s, Client& c, const std::string& repo, const oci::Descriptor& d, Progress& progress,
               const std::string& what) {
  auto w = s.new_blob();
  if (!w) throw util::Fatal(exit_store, w.message());
  store::BlobWriter writer = std::move(*w);
  std::string scope = "repository:" + repo + ":pull";
  int id = progress.add("sha256:" + short_digest(d.digest), static_cast<uint64_t>(d.size));
  int failures = 0, rounds = 0;
  while (true) {
    uint64_t start = writer.size();
    bool overflow = false, first = true;
    std::string store_error;
    HttpRequest req;
    req.url = c.url(fmt::format("/v2/{}/blobs/{}", repo, d.digest.str()));
    req.follow_redirects = true;
    if (start > 0) req.headers.push_back(fmt::format("Range: bytes={}-", start));
    req.sink = [&](long status, const char* data, size_t len) {
      if (first) {
        first = false;
        if (status != 206 && writer.size() > 0) {  // the server ignored Range: start over
          auto fresh = s.new_blob();
          if (!fresh) {
            store_error = fresh.message();
            return false;
          }
          writer = std::move(*fresh);
        }
      }
      if (writer.size() + len > static_cast<uint64_t>(d.size)) {
        overflow = true;
        return false;
      }
      if (auto r = writer.write(data, len); !r) {
        store_error = r.message();
        return false;
      }
      progress.update(id, writer.size());
      return true;
    };
    auto r = c.send(req, scope);
    if (r.curl_code == 0 && (r.status == 200 || r.status == 206)) break;
    if (overflow)
      throw util::Fatal(exit_corrupt, fmt::format("{}: corrupt content: blob {} is larger than its descriptor's {} bytes",
                                                  what, d.digest.str(), d.size));
    if (!store_error.empty()) throw util::Fatal(exit_store, store_error);
    if (r.curl_code == 0 && r.status == 416) {
      auto fresh = s.new_blob();
      if (!fresh) throw util::Fatal(exit_store, fresh.message());
      writer = std::move(*fresh);
    } else if (r.curl_code == 0 && !is_retryable(0, r.status)) {
      throw util::Fatal(r.status == 404 ? exit_bad_input : exit_network,
                        fmt::format("{}: cannot fetch blob {}: {}", what, d.digest.str(), describe(r)));
    }
    if (writer.size() > start) failures = 0;
    if (++failures > max_retries || ++rounds > 50)
      throw util::Fatal(exit_network, fmt::format("{}: cannot fetch blob {}: {}", what, d.digest.str(), describe(r)));
    std::this_thread::sleep_for(retry_delay(failures - 1));
  }
  std::string mt = d.media_type.empty() ? "application/octet-stream" : d.media_type;
  auto committed = writer.commit_expected(mt, d.digest);
  if (!committed) {
    bool mismatch = committed.message().rfind("blob content hashes to", 0) == 0;
    throw util::Fatal(mismatch ? exit_corrupt : exit_store,
                      mismatch ? fmt::format("{}: corrupt content: blob {}: {}", what, d.digest.str(), committed.message())
                               : committed.message());
  }
  if (committed->size != d.size)
    throw util::Fatal(exit_corrupt, fmt::format("{}: corrupt content: blob {} has {} bytes, its descriptor says {}", what,
                                                d.digest.str(), committed->size, d.size));
  progress.finish(id, "pulled");
}

}  // namespace

// ------------------------------------------------------------------ public

std::string manifest_media_type(const std::string& content_type, const nlohmann::json& body) {
  std::string ct = std::string(util::trim(content_type.substr(0, content_type.find(';'))));
  if (is_index_type(ct) || is_manifest_type(ct)) return ct;
  if (body.is_object() && body.contains("mediaType") && body["mediaType"].is_string())
    return body["mediaType"].get<std::string>();
  if (body.is_object() && body.contains("manifests")) return std::string(oci::media_index);
  if (body.is_object() && body.contains("config") && body.value("schemaVersion", 0) == 2) return std::string(oci::media_manifest);
  return ct;
}

std::optional<oci::Descriptor> pick_platform(const nlohmann::json& index, const std::string& arch) {
  if (!index.is_object() || !index.contains("manifests") || !index["manifests"].is_array()) return std::nullopt;
  for (auto& m : index["manifests"]) {
    auto d = oci::Descriptor::from_json(m, "index");
    if (d && d->platform_os == "linux" && d->platform_arch == arch) return *d;
  }
  return std::nullopt;
}

KnownBlobs::KnownBlobs(fs::path file) : m_file(std::move(file)) {
  std::ifstream in(m_file);
  if (!in) return;
  std::stringstream ss;
  ss << in.rdbuf();
  auto j = nlohmann::json::parse(ss.str(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return;
  for (auto& [host, blobs] : j.items()) {
    if (!blobs.is_object()) continue;
    for (auto& [digest, repos] : blobs.items())
      if (repos.is_array())
        for (auto& r : repos)
          if (r.is_string()) m_known[host][digest].insert(r.get<std::string>());
  }
}

std::set<std::string> KnownBlobs::repositories(const std::string& host, const oci::Digest& d) const {
  auto h = m_known.find(host);
  if (h == m_known.end()) return {};
  auto b = h->second.find(d.str());
  return b == h->second.end() ? std::set<std::string>{} : b->second;
}

void KnownBlobs::add(const std::string& host, const oci::Digest& d, const std::string& repository) {
  m_known[host][d.str()].insert(repository);
}

void KnownBlobs::save() const {
  KnownBlobs merged(m_file);
  for (auto& [host, blobs] : m_known)
    for (auto& [digest, repos] : blobs)
      for (auto& r : repos) merged.m_known[host][digest].insert(r);
  nlohmann::json j = nlohmann::json::object();
  for (auto& [host, blobs] : merged.m_known)
    for (auto& [digest, repos] : blobs) j[host][digest] = repos;
  std::error_code ec;
  fs::create_directories(m_file.parent_path(), ec);
  fs::path tmp = m_file;
  tmp += fmt::format(".tmp-{}", ::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return;
    out << j.dump() << "\n";
    if (!out) return;
  }
  fs::rename(tmp, m_file, ec);
  if (ec) fs::remove(tmp, ec);
}

PushResult push_image(store::Store& s, const oci::Descriptor& top, const RegistryReference& dest, Client& c,
                      const TransferOptions& opts) {
  KnownBlobs known(s.cache_dir("cache/registry") / "known-blobs.json");
  Progress progress(opts.progress);
  Pusher pusher(s, c, dest.repository, known, progress);

  struct ManifestBytes {
    oci::Digest digest;
    std::string media_type, bytes;
  };
  auto load = [&](const oci::Descriptor& d) {
    auto bytes = s.read_blob(d.digest);
    if (!bytes) throw util::Fatal(exit_store, bytes.message());
    auto j = nlohmann::json::parse(*bytes, nullptr, false);
    if (j.is_discarded() || !j.is_object())
      throw util::Fatal(exit_store, fmt::format("manifest {} is not a JSON object", d.digest.str()));
    std::string mt = j.contains("mediaType") && j["mediaType"].is_string() ? j["mediaType"].get<std::string>() : d.media_type;
    if (mt.empty()) mt = std::string(oci::media_manifest);
    return std::pair{ManifestBytes{d.digest, mt, std::move(*bytes)}, std::move(j)};
  };

  auto [root, root_json] = load(top);
  std::vector<ManifestBytes> children;
  std::vector<oci::Descriptor> blobs;
  auto add_blobs = [&](const nlohmann::json& m, const oci::Digest& d) {
    for (auto& b : blobs_of(m, d.str())) {
      bool dup = false;
      for (auto& o : blobs) dup = dup || o.digest == b.digest;
      if (!dup) blobs.push_back(b);
    }
  };
  if (is_index_type(root.media_type)) {
    for (auto& m : root_json.value("manifests", nlohmann::json::array())) {
      auto d = oci::Descriptor::from_json(m, root.digest.str());
      if (!d) throw util::Fatal(exit_store, d.message());
      auto [child, child_json] = load(*d);
      if (!is_manifest_type(child.media_type)) continue;
      add_blobs(child_json, child.digest);
      children.push_back(std::move(child));
    }
  } else {
    add_blobs(root_json, root.digest);
  }
  if (dest.digest && *dest.digest != root.digest)
    throw util::Fatal(exit_bad_input, fmt::format("{}: the image's manifest is {}, not the digest given", dest.str(),
                                                  root.digest.str()));

  PushResult res{root.digest};
  std::vector<Outcome> outcomes(blobs.size());
  run_parallel(blobs.size(), [&](size_t i) { outcomes[i] = pusher.push_blob(blobs[i]); });
  progress.redraw(true);
  for (size_t i = 0; i < blobs.size(); ++i) {
    known.add(c.host(), blobs[i].digest, dest.repository);
    if (outcomes[i] == Outcome::uploaded) ++res.uploaded;
    if (outcomes[i] == Outcome::present) ++res.present;
    if (outcomes[i] == Outcome::mounted) ++res.mounted;
  }
  known.save();
  for (auto& ch : children) pusher.put_manifest(ch.digest.str(), ch.media_type, ch.bytes);
  pusher.put_manifest(dest.reference(), root.media_type, root.bytes);
  return res;
}

PullResult pull_image(store::Store& s, const RegistryReference& src, Client& c, const TransferOptions& opts) {
  std::string what = src.str();
  auto f = fetch_manifest(c, src.repository, src.reference(), src.digest, what);
  if (is_index_type(f.media_type)) {
    auto index = nlohmann::json::parse(f.bytes);
    std::string arch = host_arch();
    auto pick = pick_platform(index, arch);
    if (!pick) {
      std::vector<std::string> have;
      for (auto& m : index.value("manifests", nlohmann::json::array()))
        if (auto d = oci::Descriptor::from_json(m, "index"); d) have.push_back(d->platform_os + "/" + d->platform_arch);
      throw util::Fatal(exit_bad_input, fmt::format("{}: the index has no linux/{} image (it has: {})", what, arch,
                                                    have.empty() ? std::string("none") : fmt::format("{}", fmt::join(have, ", "))));
    }
    f = fetch_manifest(c, src.repository, pick->digest.str(), pick->digest, what);
    if (!is_manifest_type(f.media_type))
      throw util::Fatal(exit_bad_input, fmt::format("{}: linux/{} points at another index, which envsnap does not follow", what, arch));
  }
  auto manifest = nlohmann::json::parse(f.bytes);
  auto blobs = blobs_of(manifest, what);

  KnownBlobs known(s.cache_dir("cache/registry") / "known-blobs.json");
  Progress progress(opts.progress);
  PullResult res;
  std::vector<oci::Descriptor> missing;
  for (auto& b : blobs) {
    known.add(c.host(), b.digest, src.repository);
    if (s.has_blob(b.digest))
      ++res.present;
    else
      missing.push_back(b);
  }
  run_parallel(missing.size(), [&](size_t i) { pull_blob(s, c, src.repository, missing[i], progress, what); });
  progress.redraw(true);
  res.fetched = static_cast<int>(missing.size());
  auto stored = s.put_blob(f.bytes, f.media_type);
  if (!stored) throw util::Fatal(exit_store, stored.message());
  if (stored->digest != f.digest)
    throw util::Fatal(exit_store, fmt::format("stored manifest hashes to {}, expected {}", stored->digest.str(), f.digest.str()));
  res.manifest = *stored;
  res.manifest.media_type = f.media_type;
  known.save();
  return res;
}

}  // namespace envsnap::registry
