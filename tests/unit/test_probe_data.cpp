#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "envsnap/probe/data.hpp"
#include "envsnap/util/sha256.hpp"

using namespace envsnap;
namespace fs = std::filesystem;

namespace {
struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/envsnap-data-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};
void write(const fs::path& p, const std::string& s) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << s;
}
}  // namespace

TEST(Data, MerkleDigestMatchesTheDocumentedConstruction) {
  TempDir t;
  write(t.path / "a.txt", "alpha");
  write(t.path / "sub/b.bin", "beta");
  fs::create_symlink("a.txt", t.path / "link");
  probe::Warnings w;
  auto info = probe::probe_data(t.path.string(), "/srv/data", "data", w, 4);
  ASSERT_TRUE(info.ok()) << info.message();
  auto h = [](const std::string& s) { return util::sha256_hex(s); };
  std::string sub = h("f b.bin " + h("beta") + "\n");
  std::string top = h("f a.txt " + h("alpha") + "\nl link " + h("a.txt") + "\nd sub " + sub + "\n");
  EXPECT_EQ(info->digest, "sha256:" + top);
  EXPECT_EQ(info->files, 2u);
  EXPECT_EQ(info->bytes, 9u);
  EXPECT_EQ(info->path, "/srv/data");
  EXPECT_TRUE(w.items().empty());
}

TEST(Data, OneChangedByteChangesTheDigestAndThreadsDoNot) {
  TempDir t;
  for (int i = 0; i < 50; ++i) write(t.path / ("d" + std::to_string(i % 5)) / ("f" + std::to_string(i)), std::to_string(i));
  probe::Warnings w;
  auto one = probe::probe_data(t.path.string(), "x", "data", w, 1);
  auto four = probe::probe_data(t.path.string(), "x", "data", w, 4);
  EXPECT_EQ(one->digest, four->digest);
  write(t.path / "d3/f13", "14");
  auto changed = probe::probe_data(t.path.string(), "x", "data", w, 4);
  EXPECT_NE(changed->digest, one->digest);
}

TEST(Data, SingleFileAndMissingPath) {
  TempDir t;
  write(t.path / "w.pt", "weights");
  probe::Warnings w;
  auto info = probe::probe_data((t.path / "w.pt").string(), "/w.pt", "weights", w);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->digest, "sha256:" + util::sha256_hex("weights"));
  auto missing = probe::probe_data((t.path / "nope").string(), "/nope", "data", w);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("nope"), std::string::npos);
}
