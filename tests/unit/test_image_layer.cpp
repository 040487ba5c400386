#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "envsnap/image/layer.hpp"
#include "envsnap/util/sha256.hpp"

using namespace envsnap;
using image::Compression;
using image::FileEntry;
namespace fs = std::filesystem;

namespace {

class MemorySink : public image::Sink {
public:
  util::Result<void> write(const void* data, size_t size) override {
    bytes.append(static_cast<const char*>(data), size);
    return {};
  }
  std::string bytes;
};

// security.capability v2: cap_net_bind_service in the effective and permitted sets.
const std::string cap_blob("\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 20);
const std::string dir120 = std::string(120, 'D');
const std::string long_dir = "d/" + std::string(200, 'L');
const std::string long_path = long_dir + "/" + std::string(98, 'f');  // 300 bytes
const std::string mid_path = "d/" + dir120;                          // 122 bytes: over ustar's 100
const std::string latin1 = "d/caf\xe9";

void put(const fs::path& p, const std::string& content, mode_t mode) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0) << p;
  ASSERT_EQ(::write(fd, content.data(), content.size()), static_cast<ssize_t>(content.size()));
  ::close(fd);
  ASSERT_EQ(::chmod(p.c_str(), mode), 0);
}

void set_mtime(const fs::path& p, time_t sec, long nsec) {
  struct timespec ts[2] = {{1000, 0}, {sec, nsec}};
  ASSERT_EQ(::utimensat(AT_FDCWD, p.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << p;
}

std::string sparse_content() {
  std::string s(3u << 20, '\0');
  s.replace(1u << 20, 6, "middle");
  s.replace(s.size() - 3, 3, "end");
  return s;
}

struct Tree {
  fs::path root;
  bool xattrs_supported = true;

  Tree() {
    char tmpl[] = "/tmp/envsnap-layer-XXXXXX";
    root = ::mkdtemp(tmpl);
    auto r = root;
    fs::create_directories(r / "d");
    ::chmod((r / "d").c_str(), 0755);
    fs::create_directories(r / "tmp");
    ::chmod((r / "tmp").c_str(), 01777);
    put(r / "d/a.txt", "hello\n", 0644);
    put(r / "d/empty", "", 0600);
    {
      int fd = ::open((r / "d/sparse").c_str(), O_WRONLY | O_CREAT, 0644);
      EXPECT_EQ(::ftruncate(fd, 3 << 20), 0);
      EXPECT_EQ(::pwrite(fd, "middle", 6, 1 << 20), 6);
      EXPECT_EQ(::pwrite(fd, "end", 3, (3 << 20) - 3), 3);
      ::close(fd);
    }
    put(r / "d/suid", "#!/bin/sh\n", 04755);
    put(r / "d/hl1", "linked\n", 0640);
    EXPECT_EQ(::link((r / "d/hl1").c_str(), (r / "d/hl2").c_str()), 0);
    EXPECT_EQ(::symlink("a.txt", (r / "d/link").c_str()), 0);
    EXPECT_EQ(::mkfifo((r / "d/fifo").c_str(), 0620), 0);
    ::chmod((r / "d/fifo").c_str(), 0620);
    put(r / "d/owned", "x", 0644);
    EXPECT_EQ(::lchown((r / "d/owned").c_str(), 1234, 5678), 0);
    put(r / "d/shadow", "root:$6$secret:19000:0:99999:7:::\n", 0640);
    put(r / "d/xattr", "cap", 0755);
    if (::setxattr((r / "d/xattr").c_str(), "user.zeta", "last", 4, 0) != 0) xattrs_supported = false;
    ::setxattr((r / "d/xattr").c_str(), "user.alpha", "first\0bin", 9, 0);
    ::setxattr((r / "d/xattr").c_str(), "security.capability", cap_blob.data(), cap_blob.size(), 0);
    fs::create_directories(r / long_dir);
    put(r / long_path, "long", 0644);
    put(r / mid_path, "mid", 0644);
    put(r / latin1, "latin1", 0644);
    for (const auto& p : paths()) set_mtime(r / p, 1600000000 + static_cast<time_t>(p.size()), 123456789);
    set_mtime(r / "d/a.txt", 1700000000, 5);
  }
  ~Tree() { fs::remove_all(root); }

  static std::vector<std::string> paths() {
    return {"d",         "d/a.txt", "d/caf\xe9", "d/empty",  "d/fifo", "d/hl1", "d/hl2",    "d/link",  mid_path,
            long_dir,    long_path, "d/owned",  "d/shadow", "d/sparse", "d/suid", "d/xattr", "tmp"};
  }

  std::vector<FileEntry> entries(const fs::path& at) const {
    std::vector<FileEntry> out;
    for (const auto& p : paths()) {
      FileEntry e;
      e.path = p;
      EXPECT_EQ(::lstat((at / p).c_str(), &e.st), 0) << p;
      if (p == "d/link") e.link_target = "a.txt";
      if (p == "d/hl2") e.hardlink_to = "d/hl1";
      if (p == "d/shadow") e.content = "root:*:19000:0:99999:7:::\n";
      out.push_back(std::move(e));
    }
    return out;
  }
  std::vector<FileEntry> entries() const { return entries(root); }
};

struct Written {
  std::string blob;
  image::LayerStreamResult result;
};

Written write(const fs::path& root, const std::vector<FileEntry>& entries, image::LayerOptions options) {
  auto fs = util::RootFs::open(root);
  EXPECT_TRUE(fs.ok());
  MemorySink sink;
  auto r = image::write_layer_stream(*fs, entries, options, sink);
  EXPECT_TRUE(r.ok()) << (r ? "" : r.message());
  if (!r) return {};
  EXPECT_EQ(r->compressed_size, sink.bytes.size());
  return {sink.bytes, *r};
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  if (rc != 0) out += "exit status " + std::to_string(rc);
  return out;
}

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& bytes) {
    char tmpl[] = "/tmp/envsnap-blob-XXXXXX";
    int fd = ::mkstemp(tmpl);
    path = tmpl;
    EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    ::close(fd);
  }
  ~TempFile() { ::unlink(path.c_str()); }
};

struct ReadEntry {
  std::string path, symlink, hardlink, data;
  mode_t mode = 0;
  int64_t uid = -1, gid = -1, size = -1, mtime = 0;
  long mtime_nsec = -1;
  bool uname = false, gname = false, atime = false, ctime = false, birthtime = false;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

// Decompresses BLOB with libarchive (checking the tar's SHA-256) and reads every entry.
std::vector<ReadEntry> read_back(const std::string& blob, std::string* tar_out = nullptr) {
  std::vector<ReadEntry> out;
  struct archive* a = archive_read_new();
  archive_read_support_filter_all(a);
  archive_read_support_format_raw(a);
  EXPECT_EQ(archive_read_open_memory(a, blob.data(), blob.size()), ARCHIVE_OK);
  struct archive_entry* e;
  std::string tar;
  if (archive_read_next_header(a, &e) == ARCHIVE_OK) {
    char buf[65536];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0) tar.append(buf, static_cast<size_t>(n));
  }
  archive_read_free(a);
  if (tar_out) *tar_out = tar;

  a = archive_read_new();
  archive_read_support_format_tar(a);
  EXPECT_EQ(archive_read_open_memory(a, tar.data(), tar.size()), ARCHIVE_OK);
  int rc;
  while ((rc = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
    ReadEntry r;
    r.path = archive_entry_pathname(e);
    if (auto* s = archive_entry_symlink(e)) r.symlink = s;
    if (auto* s = archive_entry_hardlink(e)) r.hardlink = s;
    r.mode = archive_entry_mode(e);
    r.uid = archive_entry_uid(e);
    r.gid = archive_entry_gid(e);
    r.size = archive_entry_size(e);
    r.mtime = archive_entry_mtime(e);
    r.mtime_nsec = archive_entry_mtime_nsec(e);
    r.uname = archive_entry_uname(e) != nullptr && *archive_entry_uname(e);
    r.gname = archive_entry_gname(e) != nullptr && *archive_entry_gname(e);
    r.atime = archive_entry_atime_is_set(e);
    r.ctime = archive_entry_ctime_is_set(e);
    r.birthtime = archive_entry_birthtime_is_set(e);
    archive_entry_xattr_reset(e);
    const char* name;
    const void* value;
    size_t size;
    while (archive_entry_xattr_next(e, &name, &value, &size) == ARCHIVE_OK)
      r.xattrs.emplace_back(name, std::string(static_cast<const char*>(value), size));
    char buf[65536];
    la_ssize_t n;
    while ((n = archive_read_data(a, buf, sizeof buf)) > 0) r.data.append(buf, static_cast<size_t>(n));
    out.push_back(std::move(r));
  }
  EXPECT_EQ(rc, ARCHIVE_EOF) << archive_error_string(a);
  archive_read_free(a);
  return out;
}

}  // namespace

TEST(ImageLayer, EntriesComeBackExactly) {
  Tree t;
  auto w = write(t.root, t.entries(), {Compression::gzip, 2, {}});
  std::string tar;
  auto got = read_back(w.blob, &tar);
  EXPECT_EQ(w.result.tar_size, tar.size());
  EXPECT_EQ(w.result.diff_id.hex(), util::sha256_hex(tar));
  EXPECT_EQ(tar.size() % 512, 0u);
  EXPECT_EQ(tar.find("GNU.sparse"), std::string::npos);
  EXPECT_EQ(tar.find("atime="), std::string::npos);
  EXPECT_EQ(tar.find("ctime="), std::string::npos);
  EXPECT_EQ(tar.find("secret"), std::string::npos);
  EXPECT_NE(tar.find("SCHILY.xattr.security.capability="), std::string::npos);

  std::map<std::string, ReadEntry> by;
  std::vector<std::string> order;
  for (auto& r : got) {
    order.push_back(r.path);
    by[r.path] = r;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"d/", "d/a.txt", latin1, "d/empty", "d/fifo", "d/hl1", "d/hl2", "d/link",
                                             mid_path, long_dir + "/", long_path, "d/owned", "d/shadow", "d/sparse",
                                             "d/suid", "d/xattr", "tmp/"}));
  bool root = ::geteuid() == 0;
  for (auto& r : got) {
    SCOPED_TRACE(r.path);
    EXPECT_FALSE(r.uname);
    EXPECT_FALSE(r.gname);
    EXPECT_FALSE(r.atime);
    EXPECT_FALSE(r.ctime);
    EXPECT_FALSE(r.birthtime);
    EXPECT_EQ(r.mtime_nsec, 0);
    std::string p = r.path.back() == '/' ? r.path.substr(0, r.path.size() - 1) : r.path;
    EXPECT_EQ(r.mtime, p == "d/a.txt" ? 1700000000 : 1600000000 + static_cast<int64_t>(p.size()));
    EXPECT_EQ(r.uid, p == "d/owned" && root ? 1234 : static_cast<int64_t>(::getuid()));
    EXPECT_EQ(r.gid, p == "d/owned" && root ? 5678 : static_cast<int64_t>(::getgid()));
    if (p != "d/xattr") {
      EXPECT_TRUE(r.xattrs.empty());
    }
  }
  EXPECT_EQ(by["d/"].mode, S_IFDIR | 0755);
  EXPECT_EQ(by["tmp/"].mode, S_IFDIR | 01777);
  EXPECT_EQ(by["d/a.txt"].mode, S_IFREG | 0644);
  EXPECT_EQ(by["d/a.txt"].data, "hello\n");
  EXPECT_EQ(by["d/empty"].mode, S_IFREG | 0600);
  EXPECT_EQ(by["d/empty"].size, 0);
  EXPECT_EQ(by["d/sparse"].size, 3 << 20);
  EXPECT_EQ(by["d/sparse"].data, sparse_content());
  EXPECT_EQ(by["d/suid"].mode, S_IFREG | 04755);
  EXPECT_EQ(by["d/suid"].data, "#!/bin/sh\n");
  EXPECT_EQ(by["d/hl1"].data, "linked\n");
  EXPECT_EQ(by["d/hl2"].hardlink, "d/hl1");
  EXPECT_EQ(by["d/hl2"].size, 0);
  EXPECT_EQ(by["d/hl2"].data, "");
  EXPECT_EQ(by["d/link"].mode, S_IFLNK | 0777);
  EXPECT_EQ(by["d/link"].symlink, "a.txt");
  EXPECT_EQ(by["d/fifo"].mode, S_IFIFO | 0620);
  EXPECT_EQ(by["d/shadow"].mode, S_IFREG | 0640);
  EXPECT_EQ(by["d/shadow"].data, "root:*:19000:0:99999:7:::\n");
  EXPECT_EQ(by[long_path].data, "long");
  EXPECT_EQ(by[mid_path].data, "mid");
  EXPECT_EQ(by[latin1].data, "latin1");
  ASSERT_TRUE(t.xattrs_supported) << "this test needs user xattrs on /tmp";
  {
    // libarchive 3.6 writes each xattr as LIBARCHIVE.xattr and SCHILY.xattr, and its
    // reader reports both: compare the distinct (name, value) pairs.
    auto xs = by["d/xattr"].xattrs;
    std::sort(xs.begin(), xs.end());
    xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
    EXPECT_EQ(xs, (std::vector<std::pair<std::string, std::string>>{
                                        {"security.capability", cap_blob},
                                        {"user.alpha", std::string("first\0bin", 9)},
                                        {"user.zeta", "last"}}));
  }
}

TEST(ImageLayer, XattrRecordsAreSortedSchily) {
  Tree t;
  ASSERT_TRUE(t.xattrs_supported) << "this test needs user xattrs on /tmp";
  auto w = write(t.root, t.entries(), {Compression::gzip, 1, {}});
  std::string tar;
  read_back(w.blob, &tar);
  // The whole pax extended header of d/xattr, records in name order.
  const std::string records = "21 hdrcharset=BINARY\n"
                              "68 LIBARCHIVE.xattr.security.capability=AQAAAgAEAAAAAAAAAAAAAAAAAAA\n"
                              "57 SCHILY.xattr.security.capability=" + cap_blob + "\n"
                              "44 LIBARCHIVE.xattr.user.alpha=Zmlyc3QAYmlu\n"
                              "37 SCHILY.xattr.user.alpha=" + std::string("first\0bin", 9) + "\n"
                              "37 LIBARCHIVE.xattr.user.zeta=bGFzdA\n"
                              "31 SCHILY.xattr.user.zeta=last\n";
  auto at = tar.find(records);
  ASSERT_NE(at, std::string::npos);
  EXPECT_EQ(tar.substr(at - 512, 17), "d/PaxHeader/xattr");
  EXPECT_EQ(tar[at + records.size()], '\0');
}

TEST(ImageLayer, SameTreeSameBytes) {
  Tree t;
  auto entries = t.entries();
  auto first = write(t.root, entries, {Compression::gzip, 2, {}});
  // Reading changes atimes; ctimes change with a chmod back and forth.
  for (const auto& p : Tree::paths()) {
    if (p == "d/link") continue;
    struct timespec ts[2] = {{2000000000, 0}, {0, UTIME_OMIT}};
    ::utimensat(AT_FDCWD, (t.root / p).c_str(), ts, 0);
  }
  ::chmod((t.root / "d/a.txt").c_str(), 0600);
  ::chmod((t.root / "d/a.txt").c_str(), 0644);
  auto again = write(t.root, t.entries(), {Compression::gzip, 2, {}});
  EXPECT_EQ(util::sha256_hex(again.blob), util::sha256_hex(first.blob));
  EXPECT_EQ(again.result.diff_id, first.result.diff_id);

  char tmpl[] = "/tmp/envsnap-layer-copy-XXXXXX";
  fs::path copy = ::mkdtemp(tmpl);
  ASSERT_EQ(std::system(("cp -a " + t.root.string() + "/. " + copy.string() + "/").c_str()), 0);
  auto copied = write(copy, t.entries(copy), {Compression::gzip, 2, {}});
  fs::remove_all(copy);
  EXPECT_EQ(util::sha256_hex(copied.blob), util::sha256_hex(first.blob));
}

TEST(ImageLayer, ThreadsDoNotChangeBytes) {
  Tree t;
  auto entries = t.entries();
  for (auto c : {Compression::gzip, Compression::zstd}) {
    auto one = write(t.root, entries, {c, 1, {}});
    for (unsigned n : {2u, 4u}) {
      auto w = write(t.root, entries, {c, n, {}});
      EXPECT_EQ(util::sha256_hex(w.blob), util::sha256_hex(one.blob)) << n;
      EXPECT_EQ(w.result.diff_id, one.result.diff_id);
    }
  }
}

TEST(ImageLayer, SourceDateEpochClampsNewerMtimes) {
  Tree t;
  auto w = write(t.root, t.entries(), {Compression::gzip, 2, int64_t{1600000010}});
  for (auto& r : read_back(w.blob)) {
    std::string p = r.path.back() == '/' ? r.path.substr(0, r.path.size() - 1) : r.path;
    int64_t orig = p == "d/a.txt" ? 1700000000 : 1600000000 + static_cast<int64_t>(p.size());
    EXPECT_EQ(r.mtime, std::min<int64_t>(orig, 1600000010)) << p;
  }
}

TEST(ImageLayer, OutputPassesGzipAndZstdTools) {
  Tree t;
  auto gz = write(t.root, t.entries(), {Compression::gzip, 2, {}});
  TempFile g(gz.blob);
  EXPECT_EQ(run_capture("gzip -t " + g.path + " 2>&1 && echo ok"), "ok\n");
  EXPECT_EQ(run_capture("gzip -dc " + g.path + " | sha256sum"), gz.result.diff_id.hex() + "  -\n");
  auto zs = write(t.root, t.entries(), {Compression::zstd, 2, {}});
  EXPECT_EQ(zs.result.diff_id, gz.result.diff_id);
  EXPECT_EQ(read_back(zs.blob).size(), Tree::paths().size());
  if (std::system("command -v zstd >/dev/null 2>&1") == 0) {
    TempFile z(zs.blob);
    EXPECT_EQ(run_capture("zstd -q -t " + z.path + " 2>&1 && echo ok"), "ok\n");
  }
}

TEST(ImageLayer, PythonTarfileReadsRawNames) {
  Tree t;
  auto gz = write(t.root, t.entries(), {Compression::gzip, 2, {}});
  TempFile g(gz.blob);
  auto out = run_capture(
      "python3 -c \"import tarfile,sys\n"
      "t = tarfile.open(sys.argv[1], encoding='utf-8', errors='surrogateescape')\n"
      "for m in t: print(m.name.encode('utf-8', 'surrogateescape').hex(), m.type.decode(), m.linkname)\" " +
      g.path);
  std::string expected;
  for (const auto& p : Tree::paths()) {
    std::string h;
    for (unsigned char c : p) {
      char b[3];
      std::snprintf(b, sizeof b, "%02x", c);
      h += b;
    }
    std::string type = p == "d" || p == "tmp" || p == long_dir ? "5"
                       : p == "d/hl2"                         ? "1"
                       : p == "d/link"                        ? "2"
                       : p == "d/fifo"                        ? "6"
                                                              : "0";
    std::string link = p == "d/hl2" ? "d/hl1" : p == "d/link" ? "a.txt" : "";
    expected += h + " " + type + " " + link + "\n";
  }
  EXPECT_EQ(out, expected);
}

TEST(ImageLayer, FileThatChangedSizeIsNamed) {
  Tree t;
  auto entries = t.entries();
  for (auto& e : entries) {
    if (e.path == "d/a.txt") e.st.st_size = 100;
  }
  auto fs = util::RootFs::open(t.root);
  ASSERT_TRUE(fs.ok());
  MemorySink sink;
  auto r = image::write_layer_stream(*fs, entries, {Compression::gzip, 2, {}}, sink);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.message(), (t.root / "d/a.txt").string() +
                             ": changed while being captured; capture again when it is not being written");
}

TEST(ImageLayer, SymlinkInPlaceOfFileIsRefused) {
  Tree t;
  auto entries = t.entries();
  fs::remove(t.root / "d/a.txt");
  ASSERT_EQ(::symlink("/etc/passwd", (t.root / "d/a.txt").c_str()), 0);
  auto fs = util::RootFs::open(t.root);
  MemorySink sink;
  auto r = image::write_layer_stream(*fs, entries, {Compression::gzip, 1, {}}, sink);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.message().find((t.root / "d/a.txt").string()), std::string::npos) << r.message();
}

TEST(ImageLayer, MediaTypes) {
  EXPECT_STREQ(image::media_type(Compression::gzip), "application/vnd.oci.image.layer.v1.tar+gzip");
  EXPECT_STREQ(image::media_type(Compression::zstd), "application/vnd.oci.image.layer.v1.tar+zstd");
}
