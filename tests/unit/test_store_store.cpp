#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "temp_dir.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/sha256.hpp"

using namespace envsnap;
namespace fs = std::filesystem;

namespace {

using envsnap::test::TempDir;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, std::string_view bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

store::Store make_store(const fs::path& dir) {
  auto s = store::Store::open(dir, store::OpenMode::create_if_missing);
  EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.message());
  return std::move(*s);
}

struct Image {
  oci::Descriptor manifest, config;
  std::vector<oci::Descriptor> layers;
};

// A manifest with a config and two layers, all stored; layers' content is derived from seed.
Image put_image(store::Store& s, const std::string& seed) {
  Image img;
  std::vector<std::string> diff_ids;
  for (int i = 0; i < 2; ++i) {
    std::string bytes = fmt::format("layer {} of {}", i, seed);
    auto d = s.put_blob(bytes, std::string(oci::media_layer_tar));
    EXPECT_TRUE(d.ok());
    img.layers.push_back(*d);
    diff_ids.push_back(d->digest.str());
  }
  nlohmann::json cfg = {{"architecture", "amd64"},
                        {"os", "linux"},
                        {"created", "2024-05-01T12:00:00Z"},
                        {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}};
  img.config = *s.put_blob(cfg.dump(), std::string(oci::media_config));
  nlohmann::json m = {{"schemaVersion", 2}, {"mediaType", oci::media_manifest}, {"config", img.config.to_json()}};
  m["layers"] = nlohmann::json::array();
  for (auto& l : img.layers) m["layers"].push_back(l.to_json());
  img.manifest = *s.put_blob(m.dump(), std::string(oci::media_manifest));
  return img;
}

oci::Reference ref(const std::string& text) { return *oci::parse_reference(text); }

size_t count_files(const fs::path& dir) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) ++n;
  return n;
}

}  // namespace

TEST(StoreStore, CreatesAnOciLayout) {
  TempDir t;
  auto s = make_store(t.path() / "store");
  EXPECT_EQ(slurp(t.path() / "store/oci-layout"), R"({"imageLayoutVersion":"1.0.0"})");
  auto idx = nlohmann::json::parse(slurp(t.path() / "store/index.json"));
  EXPECT_EQ(idx, (nlohmann::json{{"schemaVersion", 2},
                                 {"mediaType", "application/vnd.oci.image.index.v1+json"},
                                 {"manifests", nlohmann::json::array()}}));
  EXPECT_TRUE(fs::is_directory(t.path() / "store/blobs/sha256"));
  // Opening again keeps it.
  auto again = store::Store::open(t.path() / "store", store::OpenMode::must_exist);
  ASSERT_TRUE(again.ok()) << again.message();
}

TEST(StoreStore, OpenRefusesForeignDirectoriesAndMissingStores) {
  TempDir t;
  spit(t.path() / "notes/readme.txt", "mine");
  auto s = store::Store::open(t.path() / "notes", store::OpenMode::create_if_missing);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), fmt::format("{} exists and is not an envsnap store (no oci-layout file, and it is not "
                                     "empty); give --store a new or empty directory",
                                     (t.path() / "notes").string()));
  EXPECT_FALSE(fs::exists(t.path() / "notes/index.json"));
  auto m = store::Store::open(t.path() / "absent", store::OpenMode::must_exist);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.message(),
            fmt::format("no store at {}; capture something first or give --store", (t.path() / "absent").string()));
  EXPECT_FALSE(fs::exists(t.path() / "absent"));
  // An empty directory becomes a store.
  fs::create_directories(t.path() / "empty");
  EXPECT_TRUE(store::Store::open(t.path() / "empty", store::OpenMode::create_if_missing).ok());
  EXPECT_TRUE(fs::exists(t.path() / "empty/oci-layout"));
}

TEST(StoreStore, PutReadAndVerify) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto d = s.put_blob("hello", "text/plain");
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d->digest.str(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
  EXPECT_EQ(d->size, 5);
  EXPECT_EQ(d->media_type, "text/plain");
  EXPECT_TRUE(s.has_blob(d->digest));
  EXPECT_EQ(s.blob_path(d->digest), t.path() / "s/blobs/sha256/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
  EXPECT_EQ(*s.read_blob(d->digest), "hello");
  // Writing the same content again keeps the existing blob and leaves no temporary.
  auto w = s.new_blob();
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->write("hel").ok());
  ASSERT_TRUE(w->write("lo").ok());
  EXPECT_EQ(w->size(), 5u);
  auto d2 = w->commit("text/plain");
  ASSERT_TRUE(d2.ok());
  EXPECT_EQ(d2->digest, d->digest);
  EXPECT_EQ(count_files(t.path() / "s/.envsnap/tmp"), 0u);
  auto fd = s.open_blob(d->digest);
  ASSERT_TRUE(fd.ok());
  char buf[8] = {};
  EXPECT_EQ(::read(fd->get(), buf, sizeof buf), 5);
  auto check = s.check();
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(check->blobs_checked, 1u);
  EXPECT_TRUE(check->problems.empty());
}

TEST(StoreStore, CorruptBlobIsNamed) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto d = *s.put_blob("hello", "text/plain");
  fs::path p = s.blob_path(d.digest);
  spit(p, "jello");
  auto r = s.read_blob(d.digest);
  ASSERT_FALSE(r.ok());
  std::string actual = util::sha256_hex("jello");
  EXPECT_EQ(r.message(), fmt::format("blob {} is corrupt (content hashes to sha256:{}): {}; run envsnap check",
                                     d.digest.str(), actual, p.string()));
  auto check = s.check();
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(check->blobs_checked, 1u);
  ASSERT_EQ(check->problems.size(), 1u);
  EXPECT_EQ(check->problems[0], fmt::format("{}: corrupt: content hashes to sha256:{}", p.string(), actual));
}

TEST(StoreStore, RemoveIfCorruptTakesOnlyABlobThatFailsItsDigest) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto good = *s.put_blob("hello", "text/plain");
  EXPECT_FALSE(s.remove_if_corrupt(good.digest));
  EXPECT_EQ(slurp(s.blob_path(good.digest)), "hello");
  auto missing = oci::Digest::from_hex(util::sha256_hex("never stored"));
  EXPECT_FALSE(s.remove_if_corrupt(missing));

  auto bad = *s.put_blob("world", "text/plain");
  spit(s.blob_path(bad.digest), "w0rld");
  EXPECT_TRUE(s.remove_if_corrupt(bad.digest));
  EXPECT_FALSE(fs::exists(s.blob_path(bad.digest)));
  // Nothing is left aside, and the right bytes can be stored again under the name.
  auto again = s.put_blob("world", "text/plain");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(slurp(s.blob_path(bad.digest)), "world");
  auto check = s.check();
  ASSERT_TRUE(check.ok());
  EXPECT_TRUE(check->problems.empty());
  for (auto& e : fs::directory_iterator(t.path() / "s" / ".envsnap" / "tmp"))
    ADD_FAILURE() << "left in tmp: " << e.path();
}

TEST(StoreStore, CheckFindsMissingAndTruncatedReferencedBlobs) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto img = put_image(s, "a");
  ASSERT_TRUE(s.tag(ref("app:v1"), img.manifest).ok());
  fs::remove(s.blob_path(img.layers[0].digest));
  auto check = *s.check();
  EXPECT_EQ(check.blobs_checked, 3u);
  ASSERT_EQ(check.problems.size(), 1u);
  EXPECT_EQ(check.problems[0], fmt::format("{}: missing (layer of {})", s.blob_path(img.layers[0].digest).string(),
                                           img.manifest.digest.str()));
}

TEST(StoreStore, CommitExpectedMismatchStoresNothing) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto w = s.new_blob();
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(w->write("abc").ok());
  auto expected = oci::Digest::of("xyz");
  auto r = w->commit_expected("text/plain", expected);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.message(), fmt::format("blob content hashes to {}, expected {} (3 bytes); nothing was stored",
                                     oci::Digest::of("abc").str(), expected.str()));
  EXPECT_EQ(count_files(t.path() / "s/blobs/sha256"), 0u);
  EXPECT_EQ(count_files(t.path() / "s/.envsnap/tmp"), 0u);
  auto w2 = s.new_blob().value();
  ASSERT_TRUE(w2.write("abc").ok());
  auto ok = w2.commit_expected("text/plain", oci::Digest::of("abc"));
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(s.has_blob(oci::Digest::of("abc")));
}

TEST(StoreStore, AbandonedWriterLeavesNothing) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  {
    auto w = s.new_blob().value();
    ASSERT_TRUE(w.write("partial").ok());
    EXPECT_EQ(count_files(t.path() / "s/.envsnap/tmp"), 1u);
  }
  EXPECT_EQ(count_files(t.path() / "s/.envsnap/tmp"), 0u);
  EXPECT_EQ(count_files(t.path() / "s/blobs/sha256"), 0u);
}

TEST(StoreStore, TagResolveUntag) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto a = put_image(s, "a");
  auto b = put_image(s, "b");
  ASSERT_TRUE(s.tag(ref("app:v1"), a.manifest).ok());
  ASSERT_TRUE(s.tag(ref("app"), b.manifest).ok());
  ASSERT_TRUE(s.tag(ref("other/tool:2.0"), a.manifest).ok());

  EXPECT_EQ(s.resolve("app:v1")->digest, a.manifest.digest);
  EXPECT_EQ(s.resolve("app")->digest, b.manifest.digest);
  EXPECT_EQ(s.resolve("app:latest")->digest, b.manifest.digest);
  EXPECT_EQ(s.resolve("app@" + a.manifest.digest.str())->digest, a.manifest.digest);
  EXPECT_EQ(s.resolve(b.manifest.digest.str())->digest, b.manifest.digest);
  EXPECT_EQ(s.resolve(a.manifest.digest.hex().substr(0, 7))->digest, a.manifest.digest);
  EXPECT_EQ(s.resolve(a.manifest.digest.hex())->size, a.manifest.size);
  EXPECT_EQ(s.resolve("app:v1")->media_type, "application/vnd.oci.image.manifest.v1+json");

  auto missing = s.resolve("app:v2");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.message(), fmt::format("no image 'app:v2' in the store at {}; it has app:latest, app:v1, "
                                           "other/tool:2.0 (envsnap ls lists them)",
                                           (t.path() / "s").string()));
  EXPECT_EQ(s.resolve("nope").message(),
            fmt::format("no image 'nope:latest' in the store at {}; it has app:latest, app:v1, other/tool:2.0 "
                        "(envsnap ls lists them)",
                        (t.path() / "s").string()));
  EXPECT_FALSE(s.resolve(a.manifest.digest.hex().substr(0, 6)).ok());
  auto cfg = s.resolve(a.config.digest.str());
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.message(), fmt::format("{} in the store at {} is not an image manifest", a.config.digest.str(),
                                       (t.path() / "s").string()));

  // A manifest blob that no tag names still resolves by digest.
  auto c = put_image(s, "c");
  auto rc = s.resolve(c.manifest.digest.str());
  ASSERT_TRUE(rc.ok()) << rc.message();
  EXPECT_EQ(rc->size, c.manifest.size);
  EXPECT_EQ(rc->media_type, "application/vnd.oci.image.manifest.v1+json");

  auto list = *s.list();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].name, "app:latest");
  EXPECT_EQ(list[1].name, "app:v1");
  EXPECT_EQ(list[2].name, "other/tool:2.0");

  // Re-tagging moves the tag.
  ASSERT_TRUE(s.tag(ref("app:v1"), b.manifest).ok());
  EXPECT_EQ(s.resolve("app:v1")->digest, b.manifest.digest);
  EXPECT_EQ(s.list()->size(), 3u);

  ASSERT_TRUE(s.untag("app:v1").ok());
  EXPECT_FALSE(s.resolve("app:v1").ok());
  EXPECT_EQ(s.list()->size(), 2u);
  auto again = s.untag("app:v1");
  ASSERT_FALSE(again.ok());
  EXPECT_TRUE(again.message().starts_with("no image 'app:v1' in the store at ")) << again.message();

  // A digest prefix removes every tag of that manifest.
  ASSERT_TRUE(s.tag(ref("app:v3"), a.manifest).ok());
  ASSERT_TRUE(s.untag(a.manifest.digest.hex().substr(0, 12)).ok());
  list = *s.list();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "app:latest");

  auto idx = nlohmann::json::parse(slurp(t.path() / "s/index.json"));
  EXPECT_EQ(idx["schemaVersion"], 2);
  EXPECT_EQ(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
  ASSERT_EQ(idx["manifests"].size(), 1u);
  EXPECT_EQ(idx["manifests"][0],
            (nlohmann::json{{"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                            {"digest", b.manifest.digest.str()},
                            {"size", b.manifest.size},
                            {"annotations", {{"org.opencontainers.image.ref.name", "app:latest"}}}}));
}

TEST(StoreStore, AmbiguousPrefixListsCandidates) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  // Find two manifests whose digests share 7 hex digits (deterministic search).
  std::map<std::string, std::string> seen;
  std::string first, second;
  for (int i = 0; first.empty(); ++i) {
    nlohmann::json m = {{"schemaVersion", 2}, {"mediaType", oci::media_manifest}, {"layers", nlohmann::json::array()},
                        {"annotations", {{"n", std::to_string(i)}}}};
    std::string bytes = m.dump();
    std::string prefix = util::sha256_hex(bytes).substr(0, 7);
    auto [it, fresh] = seen.emplace(prefix, bytes);
    if (!fresh) {
      first = it->second;
      second = bytes;
    }
  }
  auto d1 = *s.put_blob(first, std::string(oci::media_manifest));
  auto d2 = *s.put_blob(second, std::string(oci::media_manifest));
  ASSERT_TRUE(s.tag(ref("x:1"), d1).ok());
  ASSERT_TRUE(s.tag(ref("x:2"), d2).ok());
  std::string prefix = d1.digest.hex().substr(0, 7);
  auto r = s.resolve(prefix);
  ASSERT_FALSE(r.ok());
  auto lo = std::min(d1.digest, d2.digest), hi = std::max(d1.digest, d2.digest);
  EXPECT_EQ(r.message(), fmt::format("'{}' is ambiguous in the store at {}: it matches {}, {}; give more digits",
                                     prefix, (t.path() / "s").string(), lo.str(), hi.str()));
  EXPECT_EQ(s.resolve(d1.digest.hex().substr(0, 12))->digest, d1.digest);
}

TEST(StoreStore, ConcurrentTaggingLosesNothing) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto img = put_image(s, "a");
  std::vector<pid_t> kids;
  for (int c = 0; c < 8; ++c) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto mine = store::Store::open(t.path() / "s", store::OpenMode::must_exist);
      int failures = mine.ok() ? 0 : 1;
      for (int i = 0; i < 20 && mine.ok(); ++i)
        if (!mine->tag(*oci::parse_reference(fmt::format("c{}:t{}", c, i)), img.manifest).ok()) ++failures;
      ::_exit(failures == 0 ? 0 : 1);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  auto list = s.list();
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->size(), 160u);
  for (int c = 0; c < 8; ++c)
    for (int i = 0; i < 20; ++i) EXPECT_TRUE(s.resolve(fmt::format("c{}:t{}", c, i)).ok()) << c << " " << i;
}

TEST(StoreStore, GcRemovesOnlyUnreferenced) {
  TempDir t;
  auto s = make_store(t.path() / "s");
  auto kept = put_image(s, "kept");
  auto dropped = put_image(s, "dropped");
  auto nested = put_image(s, "nested");
  ASSERT_TRUE(s.tag(ref("kept:1"), kept.manifest).ok());
  ASSERT_TRUE(s.tag(ref("dropped:1"), dropped.manifest).ok());
  // An image index tagged in index.json keeps its sub-manifest's blobs.
  nlohmann::json index = {{"schemaVersion", 2}, {"mediaType", oci::media_index}, {"manifests", {nested.manifest.to_json()}}};
  auto idx_desc = *s.put_blob(index.dump(), std::string(oci::media_index));
  ASSERT_TRUE(s.tag(ref("multi:1"), idx_desc).ok());
  ASSERT_TRUE(s.untag("dropped:1").ok());
  auto stray = *s.put_blob("stray bytes", "text/plain");

  spit(t.path() / "s/.envsnap/tmp/blob-crashed", "0123456789");
  auto live = s.new_blob().value();
  ASSERT_TRUE(live.write("in progress").ok());

  fs::path unpacked = t.path() / "s/.envsnap/cache/unpacked";
  spit(unpacked / dropped.layers[0].digest.hex() / "usr/bin/tool", "12345");
  spit(unpacked / kept.layers[1].digest.hex() / "usr/bin/tool", "1234567");
  spit(unpacked / "notes.txt", "keep me");

  auto rep = s.gc();
  ASSERT_TRUE(rep.ok()) << rep.message();
  uint64_t dropped_bytes = static_cast<uint64_t>(dropped.manifest.size + dropped.config.size + dropped.layers[0].size +
                                                 dropped.layers[1].size + stray.size);
  EXPECT_EQ(rep->blobs_removed, 5u);
  EXPECT_EQ(rep->bytes_removed, dropped_bytes);
  EXPECT_EQ(rep->temp_files_removed, 1u);
  EXPECT_EQ(rep->temp_bytes_removed, 10u);
  EXPECT_EQ(rep->cache_bytes_removed, 5u);

  for (auto* img : {&kept, &nested}) {
    EXPECT_TRUE(s.has_blob(img->manifest.digest));
    EXPECT_TRUE(s.has_blob(img->config.digest));
    for (auto& l : img->layers) EXPECT_TRUE(s.has_blob(l.digest));
  }
  EXPECT_TRUE(s.has_blob(idx_desc.digest));
  EXPECT_FALSE(s.has_blob(dropped.manifest.digest));
  EXPECT_FALSE(s.has_blob(dropped.config.digest));
  EXPECT_FALSE(s.has_blob(dropped.layers[0].digest));
  EXPECT_FALSE(s.has_blob(stray.digest));
  EXPECT_FALSE(fs::exists(t.path() / "s/.envsnap/tmp/blob-crashed"));
  EXPECT_FALSE(fs::exists(unpacked / dropped.layers[0].digest.hex()));
  EXPECT_TRUE(fs::exists(unpacked / kept.layers[1].digest.hex() / "usr/bin/tool"));
  EXPECT_TRUE(fs::exists(unpacked / "notes.txt"));

  // The live writer was not disturbed.
  auto committed = live.commit("text/plain");
  ASSERT_TRUE(committed.ok()) << committed.message();
  EXPECT_TRUE(s.has_blob(committed->digest));

  auto check = *s.check();
  EXPECT_EQ(check.blobs_checked, 10u);
  EXPECT_TRUE(check.problems.empty());
}

TEST(StoreStore, OpensSkopeoLayout) {
  TempDir t;
  fs::path dir = t.path() / "sk";
  std::string layer = "not really a tar";
  std::string cfg = R"({"architecture":"amd64","os":"linux","created":"2023-01-02T03:04:05Z","rootfs":{"type":"layers","diff_ids":[]}})";
  auto ld = oci::Digest::of(layer), cd = oci::Digest::of(cfg);
  std::string manifest = fmt::format(
      R"({{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{}}}]}})",
      cd.str(), cfg.size(), ld.str(), layer.size());
  auto md = oci::Digest::of(manifest);
  spit(dir / "oci-layout", R"({"imageLayoutVersion": "1.0.0"})");
  spit(dir / "index.json",
       fmt::format(R"({{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"docker.io/library/busybox:1.36"}}}}]}})",
                   md.str(), manifest.size()));
  for (auto* b : {&layer, &cfg, &manifest}) spit(dir / "blobs/sha256" / util::sha256_hex(*b), *b);

  auto s = store::Store::open(dir, store::OpenMode::must_exist);
  ASSERT_TRUE(s.ok()) << s.message();
  auto list = s->list();
  ASSERT_TRUE(list.ok()) << list.message();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "docker.io/library/busybox:1.36");
  EXPECT_EQ((*list)[0].manifest.digest, md);
  auto r = s->resolve("docker.io/library/busybox:1.36");
  ASSERT_TRUE(r.ok()) << r.message();
  auto m = s->read_manifest(*r);
  ASSERT_TRUE(m.ok()) << m.message();
  auto c = s->read_config(*m);
  ASSERT_TRUE(c.ok()) << c.message();
  EXPECT_EQ((*c)["created"], "2023-01-02T03:04:05Z");
  auto check = s->check();
  EXPECT_EQ(check->blobs_checked, 3u);
  EXPECT_TRUE(check->problems.empty());
  // Tagging keeps skopeo's entry and writes a valid index.
  ASSERT_TRUE(s->tag(ref("busybox:mine"), *r).ok());
  auto idx = nlohmann::json::parse(slurp(dir / "index.json"));
  EXPECT_EQ(idx["manifests"].size(), 2u);
  EXPECT_EQ(idx["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "docker.io/library/busybox:1.36");
  EXPECT_EQ(idx["mediaType"], "application/vnd.oci.image.index.v1+json");
}
