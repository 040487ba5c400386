#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "envsnap/image/archive.hpp"
#include "envsnap/image/restore.hpp"
#include "envsnap/oci/reference.hpp"
#include "envsnap/store/store.hpp"

namespace fs = std::filesystem;
using namespace envsnap;
using envsnap::image::FailureKind;
using nlohmann::json;

namespace {

la_ssize_t append_cb(struct archive*, void* client, const void* buf, size_t n) {
  static_cast<std::string*>(client)->append(static_cast<const char*>(buf), n);
  return static_cast<la_ssize_t>(n);
}

struct Member {
  Member(std::string p, std::string d, mode_t t = AE_IFREG, std::string l = "")
      : path(std::move(p)), data(std::move(d)), type(t), link(std::move(l)) {}
  std::string path;
  std::string data;
  mode_t type;
  std::string link;  // symlink target
};

enum class Filter { none, gzip, zstd };

std::string make_tar(const std::vector<Member>& members, Filter filter = Filter::none) {
  std::string out;
  struct archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (filter == Filter::gzip) archive_write_add_filter_gzip(a);
  if (filter == Filter::zstd) archive_write_add_filter_zstd(a);
  archive_write_set_bytes_in_last_block(a, 1);
  archive_write_open2(a, &out, nullptr, append_cb, nullptr, nullptr);
  for (auto& m : members) {
    struct archive_entry* e = archive_entry_new();
    archive_entry_copy_pathname(e, m.path.c_str());
    archive_entry_set_filetype(e, m.type);
    archive_entry_set_perm(e, m.type == AE_IFDIR ? 0755 : 0644);
    archive_entry_set_mtime(e, 1700000000, 0);
    if (m.type == AE_IFLNK) archive_entry_copy_symlink(e, m.link.c_str());
    archive_entry_set_size(e, m.type == AE_IFREG ? static_cast<la_int64_t>(m.data.size()) : 0);
    archive_write_header(a, e);
    if (!m.data.empty()) archive_write_data(a, m.data.data(), m.data.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

std::string compress(const std::string& bytes, Filter filter) {
  if (filter == Filter::none) return bytes;
  std::string out;
  struct archive* a = archive_write_new();
  archive_write_set_format_raw(a);
  if (filter == Filter::gzip) archive_write_add_filter_gzip(a);
  if (filter == Filter::zstd) archive_write_add_filter_zstd(a);
  archive_write_set_bytes_in_last_block(a, 1);
  archive_write_open2(a, &out, nullptr, append_cb, nullptr, nullptr);
  struct archive_entry* e = archive_entry_new();
  archive_entry_set_pathname(e, "data");
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_size(e, static_cast<la_int64_t>(bytes.size()));
  archive_write_header(a, e);
  archive_write_data(a, bytes.data(), bytes.size());
  archive_entry_free(e);
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

// {path: content} of a tar read with libarchive (directories map to "<dir>"), in archive order.
std::vector<std::pair<std::string, std::string>> read_tar(const fs::path& file) {
  std::vector<std::pair<std::string, std::string>> out;
  struct archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_tar(a);
  EXPECT_EQ(archive_read_open_filename(a, file.c_str(), 65536), ARCHIVE_OK);
  struct archive_entry* e = nullptr;
  while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    EXPECT_EQ(archive_entry_mtime(e), 0);
    EXPECT_EQ(archive_entry_uid(e), 0);
    EXPECT_EQ(archive_entry_gid(e), 0);
    std::string data;
    if (archive_entry_filetype(e) == AE_IFDIR) {
      EXPECT_EQ(archive_entry_perm(e), 0755);
      data = "<dir>";
    } else {
      EXPECT_EQ(archive_entry_perm(e), 0644);
      char buf[65536];
      la_ssize_t n;
      while ((n = archive_read_data(a, buf, sizeof buf)) > 0) data.append(buf, static_cast<size_t>(n));
    }
    out.emplace_back(archive_entry_pathname(e), data);
  }
  archive_read_free(a);
  return out;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

void write_file(const fs::path& p, const std::string& data) { std::ofstream(p, std::ios::binary | std::ios::trunc) << data; }

struct Layer {
  std::vector<Member> members;
  Filter filter = Filter::gzip;
};

const char* media_for(Filter f) {
  switch (f) {
    case Filter::gzip: return "application/vnd.oci.image.layer.v1.tar+gzip";
    case Filter::zstd: return "application/vnd.oci.image.layer.v1.tar+zstd";
    default: return "application/vnd.oci.image.layer.v1.tar";
  }
}

class Archive : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/envsnap-archive-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base = tmpl;
    auto s = store::Store::open(base / "store", store::OpenMode::create_if_missing);
    ASSERT_TRUE(s.ok()) << s.message();
    store.emplace(std::move(*s));
    auto s2 = store::Store::open(base / "store2", store::OpenMode::create_if_missing);
    ASSERT_TRUE(s2.ok()) << s2.message();
    store2.emplace(std::move(*s2));
    fs::create_directory(base / "out");
  }
  void TearDown() override { (void)image::remove_tree(base); }

  // Puts an image (layers, an OCI config with their diff_ids, a manifest) into the store and tags it.
  oci::Descriptor make_image(store::Store& s, const std::string& name, const std::vector<Layer>& layers) {
    json config = {{"architecture", "amd64"}, {"os", "linux"}, {"config", {{"Labels", {{"dev.envsnap.test", name}}}}},
                   {"rootfs", {{"type", "layers"}, {"diff_ids", json::array()}}}};
    json manifest = {{"schemaVersion", 2}, {"mediaType", oci::media_manifest}, {"layers", json::array()}};
    for (auto& l : layers) {
      std::string tar = make_tar(l.members);
      config["rootfs"]["diff_ids"].push_back(oci::Digest::of(tar).str());
      auto d = s.put_blob(compress(tar, l.filter), media_for(l.filter));
      EXPECT_TRUE(d.ok());
      manifest["layers"].push_back(d->to_json());
    }
    auto c = s.put_blob(config.dump(), std::string(oci::media_config));
    EXPECT_TRUE(c.ok());
    manifest["config"] = c->to_json();
    auto m = s.put_blob(manifest.dump(), std::string(oci::media_manifest));
    EXPECT_TRUE(m.ok());
    auto ref = oci::parse_reference(name);
    EXPECT_TRUE(ref.ok());
    EXPECT_TRUE(s.tag(*ref, *m).ok());
    return *m;
  }

  std::vector<Layer> sample_layers() {
    return {Layer{{{"etc", "", AE_IFDIR}, {"etc/os-release", "ID=debian\n"}, {"bin", "", AE_IFDIR},
                   {"bin/tool", std::string(200000, 't')}},
                  Filter::gzip},
            Layer{{{"srv", "", AE_IFDIR}, {"srv/hello.txt", "hello\n"}, {"etc", "", AE_IFDIR}, {"etc/.wh.os-release", ""}},
                  Filter::zstd}};
  }

  std::vector<std::string> tags(const store::Store& s) {
    std::vector<std::string> out;
    auto l = s.list();
    EXPECT_TRUE(l.ok());
    for (auto& t : *l) out.push_back(t.name + " " + t.manifest.digest.str());
    std::sort(out.begin(), out.end());
    return out;
  }

  fs::path base;
  std::optional<store::Store> store, store2;
};

TEST_F(Archive, ExportWritesDockerArchiveAndOciLayoutInOneSortedTar) {
  auto m = make_image(*store, "demo/app:v1", sample_layers());
  fs::path out = base / "out/app.tar";
  auto r = image::export_image(*store, "demo/app:v1", out, {});
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r->digest, m.digest);
  auto members = read_tar(out);
  auto manifest = json::parse(read_file(store->blob_path(m.digest)));
  std::string cfg = manifest["config"]["digest"].get<std::string>().substr(7);
  std::string l0 = manifest["layers"][0]["digest"].get<std::string>().substr(7);
  std::string l1 = manifest["layers"][1]["digest"].get<std::string>().substr(7);
  std::vector<std::string> blobs{cfg, l0, l1, m.digest.hex()};
  std::sort(blobs.begin(), blobs.end());
  std::vector<std::string> want{"blobs/", "blobs/sha256/"};
  for (auto& b : blobs) want.push_back("blobs/sha256/" + b);
  want.insert(want.end(), {"index.json", "manifest.json", "oci-layout"});
  std::vector<std::string> got;
  std::map<std::string, std::string> content;
  for (auto& [p, d] : members) {
    got.push_back(p);
    content[p] = d;
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(content["manifest.json"],
            fmt::format("[{{\"Config\":\"blobs/sha256/{}\",\"Layers\":[\"blobs/sha256/{}\",\"blobs/sha256/{}\"],"
                        "\"RepoTags\":[\"demo/app:v1\"]}}]",
                        cfg, l0, l1));
  EXPECT_EQ(content["oci-layout"], "{\"imageLayoutVersion\":\"1.0.0\"}");
  EXPECT_EQ(json::parse(content["index.json"]),
            json::parse(fmt::format(R"({{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
              "manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},
              "annotations":{{"org.opencontainers.image.ref.name":"demo/app:v1",
                             "io.containerd.image.name":"docker.io/demo/app:v1"}}}}]}})",
                                    m.digest.str(), m.size)));
  // Layers go in as stored: the compressed blob, byte for byte.
  EXPECT_EQ(content["blobs/sha256/" + l0], read_file(store->blob_path(oci::Digest::from_hex(l0))));
}

TEST_F(Archive, OciFormatHasNoManifestJson) {
  make_image(*store, "demo/app:v1", sample_layers());
  fs::path out = base / "out/app-oci.tar";
  image::ExportOptions options;
  options.format = image::ArchiveFormat::oci;
  ASSERT_TRUE(image::export_image(*store, "demo/app:v1", out, options).ok());
  for (auto& [p, d] : read_tar(out)) {
    EXPECT_NE(p, "manifest.json");
    EXPECT_TRUE(p == "oci-layout" || p == "index.json" || p.rfind("blobs/", 0) == 0) << p;
  }
}

TEST_F(Archive, ExportIsDeterministicAndTarGzIsStoredGzip) {
  make_image(*store, "demo/app:v1", sample_layers());
  fs::path a = base / "out/a.tar", b = base / "out/b.tar", gz = base / "out/a.tar.gz", gz2 = base / "out/b.tgz";
  EXPECT_FALSE(image::wants_gzip(a));
  EXPECT_TRUE(image::wants_gzip(gz));
  EXPECT_TRUE(image::wants_gzip(gz2));
  image::ExportOptions zipped;
  zipped.gzip = true;
  ASSERT_TRUE(image::export_image(*store, "demo/app:v1", a, {}).ok());
  ASSERT_TRUE(image::export_image(*store, "demo/app:v1", b, {}).ok());
  ASSERT_TRUE(image::export_image(*store, "demo/app:v1", gz, zipped).ok());
  ASSERT_TRUE(image::export_image(*store, "demo/app:v1", gz2, zipped).ok());
  EXPECT_EQ(read_file(a), read_file(b));
  EXPECT_EQ(read_file(gz), read_file(gz2));
  std::string g = read_file(gz);
  ASSERT_GT(g.size(), 2u);
  EXPECT_EQ(g.substr(0, 2), "\x1f\x8b");
  EXPECT_GT(g.size(), read_file(a).size());  // stored blocks: no smaller than the tar
  EXPECT_EQ(read_tar(gz), read_tar(a));
  EXPECT_EQ(fs::status(a).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
  std::vector<std::string> names;
  for (auto& d : fs::directory_iterator(base / "out")) names.push_back(d.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"a.tar", "a.tar.gz", "b.tar", "b.tgz"}));
}

TEST_F(Archive, ExportImportRoundTripKeepsManifestDigests) {
  auto m = make_image(*store, "demo/app:v1", sample_layers());
  for (auto [file, format] : {std::pair{"x.tar", image::ArchiveFormat::docker}, std::pair{"x.tar.gz", image::ArchiveFormat::docker},
                              std::pair{"x-oci.tar", image::ArchiveFormat::oci}}) {
    fs::path out = base / "out" / file;
    image::ExportOptions options;
    options.format = format;
    options.gzip = image::wants_gzip(out);
    ASSERT_TRUE(image::export_image(*store, "demo/app:v1", out, options).ok());
    auto dest = base / fmt::format("import-{}", file);
    auto s = store::Store::open(dest, store::OpenMode::create_if_missing);
    ASSERT_TRUE(s.ok());
    auto r = image::import_archive(*s, out, "");
    ASSERT_TRUE(r.ok()) << r.message();
    ASSERT_EQ(r->size(), 1u);
    EXPECT_EQ((*r)[0].name, "demo/app:v1");
    EXPECT_EQ((*r)[0].manifest.digest, m.digest);
    EXPECT_EQ(tags(*s), (std::vector<std::string>{"demo/app:v1 " + m.digest.str()}));
    auto check = s->check();
    ASSERT_TRUE(check.ok());
    EXPECT_TRUE(check->problems.empty());
    EXPECT_EQ(check->blobs_checked, 4u);
  }
}

TEST_F(Archive, ImportUnderAnotherTagAndByDigest) {
  auto m = make_image(*store, "demo/app:v1", sample_layers());
  fs::path out = base / "out/x.tar";
  ASSERT_TRUE(image::export_image(*store, m.digest.str().substr(7, 12), out, {}).ok());
  auto r = image::import_archive(*store2, out, "other/name:v2");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(tags(*store2), (std::vector<std::string>{"other/name:v2 " + m.digest.str()}));
  FailureKind kind = FailureKind::corrupt;
  auto bad = image::import_archive(*store2, out, "Bad Name", &kind);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(kind, FailureKind::other);
}

TEST_F(Archive, ImportsDocker24StyleArchive) {
  std::string layer1 = make_tar({{"etc", "", AE_IFDIR}, {"etc/os-release", "ID=debian\n"}});
  std::string layer2 = make_tar({{"srv", "", AE_IFDIR}, {"srv/hello.txt", "hello\n"}});
  json config = {{"architecture", "amd64"},
                 {"os", "linux"},
                 {"config", {{"Labels", {{"x", "y"}}}}},
                 {"rootfs",
                  {{"type", "layers"},
                   {"diff_ids", {oci::Digest::of(layer1).str(), oci::Digest::of(layer2).str(), oci::Digest::of(layer1).str()}}}}};
  std::string config_bytes = config.dump();
  std::string cfg_hex = oci::Digest::of(config_bytes).hex();
  json manifest = json::array({{{"Config", cfg_hex + ".json"},
                                {"RepoTags", {"docker.io/library/old-style:1"}},
                                {"Layers", {"aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"}}}});
  for (auto filter : {Filter::none, Filter::gzip, Filter::zstd}) {
    std::string tar = make_tar({{"aaa", "", AE_IFDIR},
                                {"aaa/VERSION", "1.0"},
                                {"aaa/json", "{}"},
                                {"aaa/layer.tar", layer1},
                                {"bbb", "", AE_IFDIR},
                                {"bbb/layer.tar", layer2},
                                {"ccc", "", AE_IFDIR},
                                {"ccc/layer.tar", "", AE_IFLNK, "../aaa/layer.tar"},
                                {cfg_hex + ".json", config_bytes},
                                {"manifest.json", manifest.dump()},
                                {"repositories", "{}"}},
                               filter);
    fs::path file = base / "out/docker24.tar";
    write_file(file, tar);
    auto r = image::import_archive(*store2, file, "");
    ASSERT_TRUE(r.ok()) << r.message();
    ASSERT_EQ(r->size(), 1u);
    EXPECT_EQ((*r)[0].name, "old-style:1");
    auto m = store2->read_manifest((*r)[0].manifest);
    ASSERT_TRUE(m.ok());
    EXPECT_EQ((*m)["mediaType"], oci::media_manifest);
    EXPECT_EQ((*m)["config"]["digest"], "sha256:" + cfg_hex);
    EXPECT_EQ((*m)["config"]["mediaType"], oci::media_config);
    ASSERT_EQ((*m)["layers"].size(), 3u);
    EXPECT_EQ((*m)["layers"][0]["mediaType"], oci::media_layer_tar);
    EXPECT_EQ((*m)["layers"][0]["digest"], oci::Digest::of(layer1).str());
    EXPECT_EQ((*m)["layers"][1]["digest"], oci::Digest::of(layer2).str());
    EXPECT_EQ((*m)["layers"][2]["digest"], oci::Digest::of(layer1).str());
    EXPECT_EQ(store2->read_blob(oci::Digest::from_hex(cfg_hex)).value(), config_bytes);
  }
  // The imported image restores.
  auto dir = base / "restored";
  auto r = image::restore_image(*store2, "old-style:1", dir, {});
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(read_file(dir / "srv/hello.txt"), "hello\n");
  EXPECT_EQ(read_file(dir / "etc/os-release"), "ID=debian\n");
}

TEST_F(Archive, Docker24LayerNotMatchingDiffIdIsCorrupt) {
  std::string layer = make_tar({{"a", "a"}});
  json config = {{"rootfs", {{"type", "layers"}, {"diff_ids", {oci::Digest::of("other").str()}}}}};
  json manifest = json::array({{{"Config", "c.json"}, {"RepoTags", {"x:1"}}, {"Layers", {"l/layer.tar"}}}});
  fs::path file = base / "out/bad.tar";
  write_file(file, make_tar({{"c.json", config.dump()}, {"l/layer.tar", layer}, {"manifest.json", manifest.dump()}}));
  FailureKind kind = FailureKind::other;
  auto r = image::import_archive(*store2, file, "", &kind);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(kind, FailureKind::corrupt);
  EXPECT_NE(r.message().find("l/layer.tar"), std::string::npos) << r.message();
  EXPECT_TRUE(tags(*store2).empty());
}

TEST_F(Archive, ImportRefusesHostileMembers) {
  for (std::string path : {"../evil", "/abs/evil", "blobs/../../evil"}) {
    fs::path file = base / "out/hostile.tar";
    write_file(file, make_tar({{"oci-layout", "{}"}, {path, "x"}}));
    auto r = image::import_archive(*store2, file, "x:1");
    ASSERT_FALSE(r.ok()) << path;
    EXPECT_NE(r.message().find("refusing member \"" + path + "\""), std::string::npos) << r.message();
  }
  fs::path file = base / "out/hostile-link.tar";
  write_file(file, make_tar({{"a", "", AE_IFLNK, "../../etc/passwd"}}));
  auto r = image::import_archive(*store2, file, "x:1");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.message().find("leaves the archive"), std::string::npos) << r.message();
  EXPECT_TRUE(tags(*store2).empty());
  EXPECT_FALSE(fs::exists(base / "evil"));
}

TEST_F(Archive, TruncatedImportLeavesTheStoreAlone) {
  auto m = make_image(*store, "demo/app:v1", sample_layers());
  fs::path out = base / "out/x.tar";
  ASSERT_TRUE(image::export_image(*store, "demo/app:v1", out, {}).ok());
  make_image(*store2, "keep/me:1", {Layer{{{"k", "k"}}, Filter::gzip}});
  auto before = tags(*store2);
  std::string raw = read_file(out);
  for (size_t cut : {raw.size() / 4, raw.size() / 2, raw.size() * 3 / 4, raw.size() - 1100}) {
    write_file(base / "out/cut.tar", raw.substr(0, cut));
    auto r = image::import_archive(*store2, base / "out/cut.tar", "cut/x:1");
    ASSERT_FALSE(r.ok()) << cut;
    EXPECT_EQ(tags(*store2), before);
  }
}

TEST_F(Archive, CorruptBlobRefusesExportAndLeavesNoFile) {
  auto m = make_image(*store, "demo/app:v1", sample_layers());
  auto manifest = json::parse(read_file(store->blob_path(m.digest)));
  auto layer = oci::Digest::parse(manifest["layers"][0]["digest"].get<std::string>()).value();
  fs::path blob = store->blob_path(layer);
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  std::string data = read_file(blob);
  data[data.size() / 2] ^= 1;
  write_file(blob, data);
  for (auto name : {"c.tar", "c.tar.gz"}) {
    FailureKind kind = FailureKind::other;
    image::ExportOptions options;
    options.gzip = image::wants_gzip(name);
    auto r = image::export_image(*store, "demo/app:v1", base / "out" / name, options, &kind);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(kind, FailureKind::corrupt);
    EXPECT_NE(r.message().find(layer.str()), std::string::npos) << r.message();
    EXPECT_NE(r.message().find("run envsnap check"), std::string::npos) << r.message();
  }
  EXPECT_TRUE(fs::is_empty(base / "out"));
}

TEST_F(Archive, RestoreUnpacksLayersInOrder) {
  auto m = make_image(*store, "demo/app:v1", sample_layers());
  auto dir = base / "restored";
  auto r = image::restore_image(*store, "demo/app:v1", dir, {});
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r->digest, m.digest);
  EXPECT_EQ(read_file(dir / "srv/hello.txt"), "hello\n");
  EXPECT_EQ(fs::file_size(dir / "bin/tool"), 200000u);
  EXPECT_FALSE(fs::exists(dir / "etc/os-release"));  // whited out by the second layer
  EXPECT_TRUE(fs::is_directory(dir / "etc"));
  EXPECT_EQ(fs::status(dir).permissions() & fs::perms::all, static_cast<fs::perms>(0755));
  std::vector<std::string> names;
  for (auto& d : fs::directory_iterator(base)) names.push_back(d.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"out", "restored", "store", "store2"}));

  // An empty directory is fine; a non-empty one is refused.
  fs::create_directory(base / "empty");
  ASSERT_TRUE(image::restore_image(*store, "demo/app:v1", base / "empty", {}).ok());
  FailureKind kind = FailureKind::corrupt;
  auto again = image::restore_image(*store, "demo/app:v1", dir, {}, &kind);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(kind, FailureKind::other);
  EXPECT_NE(again.message().find("is not empty"), std::string::npos) << again.message();

  auto missing = image::restore_image(*store, "no/such:tag", base / "x", {}, &kind);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(kind, FailureKind::other);
  EXPECT_FALSE(fs::exists(base / "x"));
}

TEST_F(Archive, RestoreOfCorruptLayerLeavesNothing) {
  auto m = make_image(*store, "demo/app:v1", sample_layers());
  auto manifest = json::parse(read_file(store->blob_path(m.digest)));
  auto layer = oci::Digest::parse(manifest["layers"][1]["digest"].get<std::string>()).value();
  fs::path blob = store->blob_path(layer);
  fs::permissions(blob, fs::perms::owner_write, fs::perm_options::add);
  std::string data = read_file(blob);
  data[data.size() / 2] ^= 0x20;
  write_file(blob, data);
  FailureKind kind = FailureKind::other;
  auto r = image::restore_image(*store, "demo/app:v1", base / "restored", {}, &kind);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(kind, FailureKind::corrupt);
  EXPECT_NE(r.message().find(layer.str()), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("run envsnap check"), std::string::npos) << r.message();
  std::vector<std::string> names;
  for (auto& d : fs::directory_iterator(base)) names.push_back(d.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"out", "store", "store2"}));
}

}  // namespace
