#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "envsnap/image/unpack.hpp"
#include "envsnap/util/fd.hpp"
#include "envsnap/util/sha256.hpp"

namespace fs = std::filesystem;
using namespace envsnap;
using envsnap::image::FailureKind;

namespace {

struct TarEntry {
  std::string path;
  mode_t type = AE_IFREG;
  mode_t perm = 0644;
  std::string data;
  std::string symlink;
  std::string hardlink;
  int64_t mtime = 1700000000;
  int64_t uid = 0, gid = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

TarEntry file(std::string path, std::string data, mode_t perm = 0644) {
  TarEntry e;
  e.path = std::move(path);
  e.data = std::move(data);
  e.perm = perm;
  return e;
}
TarEntry dir(std::string path, mode_t perm = 0755) {
  TarEntry e;
  e.path = std::move(path);
  e.type = AE_IFDIR;
  e.perm = perm;
  return e;
}
TarEntry symlink(std::string path, std::string target) {
  TarEntry e;
  e.path = std::move(path);
  e.type = AE_IFLNK;
  e.perm = 0777;
  e.symlink = std::move(target);
  return e;
}
TarEntry hardlink(std::string path, std::string target) {
  TarEntry e;
  e.path = std::move(path);
  e.hardlink = std::move(target);
  return e;
}

la_ssize_t append_cb(struct archive*, void* client, const void* buf, size_t n) {
  static_cast<std::string*>(client)->append(static_cast<const char*>(buf), n);
  return static_cast<la_ssize_t>(n);
}

enum class Filter { none, gzip, zstd };

std::string make_tar(const std::vector<TarEntry>& entries, Filter filter = Filter::none) {
  std::string out;
  struct archive* a = archive_write_new();
  archive_write_set_format_pax(a);
  if (filter == Filter::gzip) archive_write_add_filter_gzip(a);
  if (filter == Filter::zstd) archive_write_add_filter_zstd(a);
  archive_write_set_bytes_in_last_block(a, 1);
  EXPECT_EQ(archive_write_open2(a, &out, nullptr, append_cb, nullptr, nullptr), ARCHIVE_OK);
  for (auto& t : entries) {
    struct archive_entry* e = archive_entry_new();
    archive_entry_copy_pathname(e, t.path.c_str());
    archive_entry_set_filetype(e, t.type);
    archive_entry_set_perm(e, t.perm);
    archive_entry_set_mtime(e, t.mtime, 0);
    archive_entry_set_uid(e, t.uid);
    archive_entry_set_gid(e, t.gid);
    if (!t.symlink.empty()) archive_entry_copy_symlink(e, t.symlink.c_str());
    if (!t.hardlink.empty()) archive_entry_copy_hardlink(e, t.hardlink.c_str());
    if (t.type == AE_IFCHR) archive_entry_set_rdev(e, makedev(1, 3));
    for (auto& [k, v] : t.xattrs) archive_entry_xattr_add_entry(e, k.c_str(), v.data(), v.size());
    archive_entry_set_size(e, t.type == AE_IFREG && t.hardlink.empty() ? static_cast<la_int64_t>(t.data.size()) : 0);
    EXPECT_EQ(archive_write_header(a, e), ARCHIVE_OK) << archive_error_string(a);
    if (!t.data.empty()) archive_write_data(a, t.data.data(), t.data.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  return out;
}

// One gzip member holding BYTES (libarchive's raw format).
std::string gzip_member(const std::string& bytes) {
  std::string out;
  struct archive* a = archive_write_new();
  archive_write_set_format_raw(a);
  archive_write_add_filter_gzip(a);
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

std::vector<std::string> list_dir(const fs::path& p) {
  std::vector<std::string> out;
  for (auto& d : fs::directory_iterator(p)) out.push_back(d.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class Unpack : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/envsnap-unpack-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    base = tmpl;
    target = base / "root";
    outside = base / "outside";
    fs::create_directory(target);
    fs::create_directory(outside);
  }
  void TearDown() override { (void)image::remove_tree(base); }

  util::Result<void> unpack(const std::string& blob, const image::UnpackOptions& options = {},
                            const oci::Digest* diff_id = nullptr, FailureKind* kind = nullptr,
                            const oci::Digest* blob_digest = nullptr) {
    fs::path layer = base / "layer";
    std::ofstream(layer, std::ios::binary | std::ios::trunc) << blob;
    util::UniqueFd fd(::open(layer.c_str(), O_RDONLY | O_CLOEXEC));
    image::LayerChecks checks;
    checks.diff_id = diff_id;
    checks.blob_digest = blob_digest;
    return image::unpack_layer_checked(fd.get(), target, options, checks, kind);
  }

  // Nothing but the target, the sentinel and the layer file next to the target, and the sentinel is empty.
  void expect_nothing_outside() {
    EXPECT_EQ(list_dir(base), (std::vector<std::string>{"layer", "outside", "root"}));
    EXPECT_TRUE(list_dir(outside).empty());
  }

  void expect_refused(const std::vector<TarEntry>& entries, const std::string& entry_name, const std::string& why) {
    FailureKind kind = FailureKind::corrupt;
    auto r = unpack(make_tar(entries), {}, nullptr, &kind);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.message().find("\"" + entry_name + "\""), std::string::npos) << r.message();
    EXPECT_NE(r.message().find(why), std::string::npos) << r.message();
    EXPECT_EQ(kind, FailureKind::other);
    expect_nothing_outside();
  }

  fs::path base, target, outside;
};

TEST_F(Unpack, RefusesDotDotEntry) {
  expect_refused({file("a", "ok"), file("../outside/x", "evil")}, "../outside/x", "has a \"..\" component");
  EXPECT_TRUE(fs::exists(target / "a"));
}

TEST_F(Unpack, RefusesDotDotInsideAPath) {
  expect_refused({dir("a"), file("a/../../outside/x", "evil")}, "a/../../outside/x", "has a \"..\" component");
}

TEST_F(Unpack, RefusesAbsolutePath) {
  std::string abs = (outside / "x").string();
  expect_refused({file(abs, "evil")}, abs, "is an absolute path");
}

TEST_F(Unpack, FileThroughSymlinkToOutsideStaysInside) {
  std::vector<TarEntry> entries{symlink("evil", outside.string()), file("evil/x", "evil")};
  auto r = unpack(make_tar(entries));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.message().find("\"evil/x\""), std::string::npos) << r.message();
  expect_nothing_outside();
  // The symlink itself is data and was created as it is.
  EXPECT_EQ(fs::read_symlink(target / "evil"), outside);
}

TEST_F(Unpack, SymlinkInsideTheRootResolvesInside) {
  // "lib -> /usr/lib" resolves to <target>/usr/lib, never the host's /usr/lib.
  auto r = unpack(make_tar({dir("usr"), dir("usr/lib"), symlink("lib", "/usr/lib"), file("lib/x.so", "so")}));
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_TRUE(fs::is_regular_file(target / "usr/lib/x.so"));
  EXPECT_FALSE(fs::exists("/usr/lib/x.so"));
}

TEST_F(Unpack, RefusesHardlinkToAbsolutePath) {
  expect_refused({hardlink("passwd", "/etc/passwd")}, "passwd", "the hard link target \"/etc/passwd\" is an absolute path");
}

TEST_F(Unpack, RefusesHardlinkWithDotDot) {
  expect_refused({hardlink("x", "../../x")}, "x", "the hard link target \"../../x\" has a \"..\" component");
}

TEST_F(Unpack, HardlinkThroughSymlinkCannotReachOutside) {
  {
    std::ofstream(outside / "secret") << "secret";
  }
  auto r = unpack(make_tar({symlink("esc", outside.string()), hardlink("h", "esc/secret")}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.message().find("\"h\""), std::string::npos) << r.message();
  EXPECT_FALSE(fs::exists(target / "h"));
  struct stat st {};
  ASSERT_EQ(::stat((outside / "secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 1u);
  fs::remove(outside / "secret");
  expect_nothing_outside();
}

TEST_F(Unpack, RefusesCharDevice) {
  TarEntry dev;
  dev.path = "dev/null";
  dev.type = AE_IFCHR;
  dev.perm = 0666;
  expect_refused({dir("dev"), dev}, "dev/null", "device nodes are not unpacked");
  EXPECT_FALSE(fs::exists(target / "dev/null"));
}

TEST_F(Unpack, RefusesWhiteoutOfDotDot) {
  {
    std::ofstream(base / "victim") << "keep";
  }
  auto r = unpack(make_tar({dir("a"), file("a/.wh...", "")}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.message().find("\"a/.wh...\""), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("names no entry"), std::string::npos) << r.message();
  EXPECT_TRUE(fs::exists(target / "a"));
  EXPECT_TRUE(fs::exists(base / "victim"));
  fs::remove(base / "victim");
  expect_nothing_outside();
}

TEST_F(Unpack, RefusesWhiteoutOutsideTheRoot) {
  {
    std::ofstream(base / "x") << "keep";
  }
  auto r = unpack(make_tar({file("../.wh.x", "")}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.message().find("\"../.wh.x\""), std::string::npos) << r.message();
  EXPECT_TRUE(fs::exists(base / "x"));
  fs::remove(base / "x");
  expect_nothing_outside();
}

TEST_F(Unpack, WhiteoutThroughSymlinkStaysInside) {
  {
    std::ofstream(outside / "x") << "keep";
  }
  auto r = unpack(make_tar({symlink("esc", outside.string()), file("esc/.wh.x", "")}));
  ASSERT_TRUE(r.ok()) << r.message();  // resolves to <target>/<outside>, which does not exist: nothing to hide
  EXPECT_TRUE(fs::exists(outside / "x"));
  fs::remove(outside / "x");
  expect_nothing_outside();
}

TEST_F(Unpack, RoundTripsEveryKindOfEntry) {
  TarEntry f = file("dir/file", "hello");
  f.uid = 1234;
  f.gid = 5678;
  f.mtime = 2000;
  TarEntry d = dir("dir");
  d.mtime = 1000;
  TarEntry setuid = file("dir/setuid", "x", 04755);
  setuid.uid = 1234;
  TarEntry fifo;
  fifo.path = "dir/fifo";
  fifo.type = AE_IFIFO;
  fifo.perm = 0640;
  TarEntry x = file("dir/xattr", "x", 0755);
  const std::string cap("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
  x.xattrs = {{"user.envsnap", "value"}, {"security.capability", cap}};
  TarEntry link = symlink("dir/link", "file");
  link.mtime = 3000;
  std::string big(3 << 20, 'z');
  for (size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + (i / 4096) % 26);

  auto tar = make_tar({d, f, setuid, link, hardlink("dir/hard", "dir/file"), fifo, x, file("big", big)}, Filter::gzip);
  auto r = unpack(tar);
  ASSERT_TRUE(r.ok()) << r.message();

  struct stat st {};
  ASSERT_EQ(::lstat((target / "dir/file").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 0644);
  EXPECT_EQ(st.st_mtime, 2000);
  EXPECT_EQ(st.st_nlink, 2u);
  if (::geteuid() == 0) {
    EXPECT_EQ(st.st_uid, 1234u);
    EXPECT_EQ(st.st_gid, 5678u);
  }
  ino_t ino = st.st_ino;
  ASSERT_EQ(::lstat((target / "dir/hard").c_str(), &st), 0);
  EXPECT_EQ(st.st_ino, ino);

  ASSERT_EQ(::lstat((target / "dir/setuid").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFREG | 04755);

  ASSERT_EQ(::lstat((target / "dir/link").c_str(), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(st.st_mtime, 3000);
  EXPECT_EQ(fs::read_symlink(target / "dir/link"), "file");

  ASSERT_EQ(::lstat((target / "dir/fifo").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFIFO | 0640);

  char buf[64];
  auto n = ::lgetxattr((target / "dir/xattr").c_str(), "user.envsnap", buf, sizeof buf);
  ASSERT_EQ(n, 5);
  EXPECT_EQ(std::string(buf, 5), "value");
  if (::geteuid() == 0) {
    n = ::lgetxattr((target / "dir/xattr").c_str(), "security.capability", buf, sizeof buf);
    ASSERT_EQ(n, 20);
    EXPECT_EQ(std::string(buf, 20), cap);
  }

  // The directory's mtime is set after its content was written.
  ASSERT_EQ(::lstat((target / "dir").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode, S_IFDIR | 0755);
  EXPECT_EQ(st.st_mtime, 1000);

  std::ifstream in(target / "big", std::ios::binary);
  std::string got((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(got, big);
  EXPECT_EQ(list_dir(target), (std::vector<std::string>{"big", "dir"}));
}

TEST_F(Unpack, WhiteoutsAndReplacementsAcrossLayers) {
  auto lower = make_tar({dir("a"), file("a/x", "x"), file("a/y", "y"), dir("b"), file("b/old", "old"), dir("b/sub"),
                         file("b/sub/deep", "deep"), file("c", "file c"), dir("d"), file("d/sub", "sub"), file("e", "e"),
                         symlink("f", "e")});
  ASSERT_TRUE(unpack(lower).ok());
  auto upper = make_tar({file("a/.wh.x", ""), dir("b"), file("b/new", "new"), file("b/.wh..wh..opq", ""), dir("c"),
                         file("c/inner", "inner"), file("d", "now a file"), file(".wh.e", ""), file("f", "not a link")});
  auto r = unpack(upper);
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_FALSE(fs::exists(target / "a/x"));
  EXPECT_TRUE(fs::exists(target / "a/y"));
  EXPECT_FALSE(fs::exists(target / "a/.wh.x"));
  EXPECT_EQ(list_dir(target / "b"), (std::vector<std::string>{"new"}));
  EXPECT_TRUE(fs::is_directory(target / "c"));
  EXPECT_TRUE(fs::is_regular_file(target / "c/inner"));
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(target / "d")));
  EXPECT_FALSE(fs::exists(fs::symlink_status(target / "e")));
  EXPECT_TRUE(fs::is_regular_file(fs::symlink_status(target / "f")));
  EXPECT_EQ(list_dir(target), (std::vector<std::string>{"a", "b", "c", "d", "f"}));
  expect_nothing_outside();
}

TEST_F(Unpack, WhiteoutsKeptAsFilesWhenAsked) {
  image::UnpackOptions options;
  options.whiteouts = image::Whiteouts::keep_as_files;
  auto r = unpack(make_tar({dir("a"), file("a/.wh.x", ""), file("a/.wh..wh..opq", "")}), options);
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(list_dir(target / "a"), (std::vector<std::string>{".wh..wh..opq", ".wh.x"}));
}

TEST_F(Unpack, ChecksDiffIdOfGzipZstdAndPlain) {
  std::vector<TarEntry> entries{dir("d"), file("d/f", std::string(100000, 'q'))};
  auto plain = make_tar(entries);
  auto diff_id = oci::Digest::of(plain);
  for (auto filter : {Filter::none, Filter::gzip, Filter::zstd}) {
    fs::remove_all(target);
    fs::create_directory(target);
    auto blob = make_tar(entries, filter);
    auto blob_digest = oci::Digest::of(blob);
    auto r = unpack(blob, {}, &diff_id, nullptr, &blob_digest);
    ASSERT_TRUE(r.ok()) << r.message();
    EXPECT_EQ(fs::file_size(target / "d/f"), 100000u);
  }
  auto wrong = oci::Digest::of("something else");
  FailureKind kind = FailureKind::other;
  auto r = unpack(make_tar(entries, Filter::zstd), {}, &wrong, &kind);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(kind, FailureKind::corrupt);
  EXPECT_NE(r.message().find("not its diff_id " + wrong.str()), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("layer " + wrong.str()), std::string::npos) << r.message();

  kind = FailureKind::other;
  r = unpack(make_tar(entries, Filter::gzip), {}, &diff_id, &kind, &wrong);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(kind, FailureKind::corrupt);
  EXPECT_NE(r.message().find("not " + wrong.str()), std::string::npos) << r.message();
}

TEST_F(Unpack, ReadsConcatenatedGzipMembers) {
  auto plain = make_tar({file("a", std::string(70000, 'a')), file("b", std::string(90000, 'b'))});
  auto diff_id = oci::Digest::of(plain);
  auto blob = gzip_member(plain.substr(0, 40000)) + gzip_member(plain.substr(40000));
  auto r = unpack(blob, {}, &diff_id);
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(fs::file_size(target / "b"), 90000u);
}

TEST_F(Unpack, FailsFastOnTruncatedStreams) {
  std::string data;
  for (int i = 0; i < 200000; ++i) data += static_cast<char>((i * 7919) % 251);
  std::vector<TarEntry> entries{file("a", data), file("b", data)};
  for (auto filter : {Filter::none, Filter::gzip, Filter::zstd}) {
    auto blob = make_tar(entries, filter);
    FailureKind kind = FailureKind::other;
    auto diff_id = oci::Digest::of(make_tar(entries));
    auto r = unpack(blob.substr(0, blob.size() / 2), {}, &diff_id, &kind);
    ASSERT_FALSE(r.ok()) << static_cast<int>(filter);
    EXPECT_EQ(kind, FailureKind::corrupt) << r.message();
    EXPECT_EQ(r.message().rfind("layer " + diff_id.str() + ": ", 0), 0u) << r.message();
    expect_nothing_outside();
  }
}

TEST_F(Unpack, FailsOnCorruptGzip) {
  auto blob = make_tar({file("a", std::string(50000, 'x'))}, Filter::gzip);
  blob[blob.size() / 2] ^= 0x55;
  blob[blob.size() / 2 + 1] ^= 0x55;
  FailureKind kind = FailureKind::other;
  auto r = unpack(blob, {}, nullptr, &kind);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(kind, FailureKind::corrupt) << r.message();
}

TEST_F(Unpack, RemoveTreeHandlesReadOnlyDirectories) {
  auto r = unpack(make_tar({dir("ro", 0555), file("ro/f", "f", 0444), dir("ro/inner", 0500)}));
  ASSERT_TRUE(r.ok()) << r.message();
  ASSERT_TRUE(image::remove_tree(target).ok());
  EXPECT_FALSE(fs::exists(target));
  EXPECT_TRUE(image::remove_tree(target).ok());
}

}  // namespace
