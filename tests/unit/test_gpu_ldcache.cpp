#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "envsnap/gpu/ldcache.hpp"
#include "envsnap/util/process.hpp"
#include "envsnap/util/strings.hpp"

using namespace envsnap;
using namespace envsnap::gpu;
namespace fs = std::filesystem;

namespace {

using envsnap::test::TempDir;
using envsnap::test::build_library;
void run(const std::vector<std::string>& argv) { envsnap::test::run_ok(argv); }

void write(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Row {
  std::string key, value;
  int32_t flags;
  bool operator==(const Row&) const = default;
};

std::ostream& operator<<(std::ostream& os, const Row& r) {
  return os << "{" << r.key << " => " << r.value << " flags " << std::hex << r.flags << std::dec << "}";
}

std::vector<Row> rows(const std::vector<LdCacheEntry>& entries) {
  std::vector<Row> out;
  for (const auto& e : entries) out.push_back({e.key, e.value, e.flags});
  return out;
}

// What `ldconfig -p -C FILE` prints, in its order: an independent reading of the file.
std::vector<Row> ldconfig_print(const fs::path& cache) {
  auto r = util::run_command({"ldconfig", "-p", "-C", cache.string()}, std::chrono::seconds(60));
  EXPECT_TRUE(r.ok());
  std::vector<Row> out;
  for (auto line : util::lines(r->out)) {
    if (line.empty() || line[0] != '\t') continue;
    auto open = line.find(" ("), arrow = line.find(") => ");
    auto abi = line.substr(open + 2, arrow - open - 2);
    int32_t flags = abi == "libc6,x86-64" ? 0x0303 : abi == "libc6" ? 0x0003 : -1;
    out.push_back({std::string(util::trim(line.substr(0, open))), std::string(line.substr(arrow + 5)), flags});
  }
  return out;
}

// A root with two libraries, one in a folder that only etc/ld.so.conf names, and its
// cache written by the real ldconfig in the given format.
class LdconfigRoot : public ::testing::Test {
protected:
  void SetUp() override {
    build_library(m_dir.path() / "usr/local/nvidia/lib64/libcuda.so.535.104.05", "libcuda.so.1");
    build_library(m_dir.path() / "usr/lib/x86_64-linux-gnu/libfoo.so.2.0", "libfoo.so.2");
    write(m_dir.path() / "etc/ld.so.conf", "/usr/local/nvidia/lib64\n");
  }
  fs::path cache(const std::string& format) {
    std::string name = "/etc/ld.so.cache." + format;
    run({"ldconfig", "-r", m_dir.path().string(), "-c", format, "-C", name});
    return m_dir.path() / name.substr(1);
  }
  const std::vector<Row> m_expected = {
      {"libfoo.so.2", "/usr/lib/x86_64-linux-gnu/libfoo.so.2", 0x0303},
      {"libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1", 0x0303},
  };
  TempDir m_dir;
};

TEST_F(LdconfigRoot, ReadsTheNewFormatAsLdconfigPrintsIt) {
  auto path = cache("new");
  auto bytes = read(path);
  ASSERT_TRUE(bytes.starts_with("glibc-ld.so.cache1.1"));
  auto entries = parse_ldcache(bytes, path.string());
  ASSERT_TRUE(entries.ok()) << entries.message();
  EXPECT_EQ(rows(*entries), m_expected);
  EXPECT_EQ(rows(*entries), ldconfig_print(path));
  for (const auto& e : *entries) {
    EXPECT_TRUE(e.is_native()) << e.key;
    EXPECT_EQ(e.hwcap, 0u);
  }
}

TEST_F(LdconfigRoot, ReadsTheOldFormat) {
  auto path = cache("old");
  auto bytes = read(path);
  ASSERT_TRUE(bytes.starts_with("ld.so-1.7.0"));
  ASSERT_EQ(bytes.find("glibc-ld.so.cache"), std::string::npos);
  auto entries = parse_ldcache(bytes, path.string());
  ASSERT_TRUE(entries.ok()) << entries.message();
  EXPECT_EQ(rows(*entries), m_expected);
}

TEST_F(LdconfigRoot, ReadsTheNewTableAfterTheOldOneInCompatFormat) {
  auto path = cache("compat");
  auto bytes = read(path);
  ASSERT_TRUE(bytes.starts_with("ld.so-1.7.0"));
  ASSERT_NE(bytes.find("glibc-ld.so.cache1.1"), std::string::npos);
  auto entries = parse_ldcache(bytes, path.string());
  ASSERT_TRUE(entries.ok()) << entries.message();
  EXPECT_EQ(rows(*entries), m_expected);
  EXPECT_EQ(rows(*entries), ldconfig_print(path));
}

// Every prefix of a real cache, and every byte of it set to 0x00, 0x7f, 0x80 and 0xff:
// the parser never reads outside the buffer (the bytes are copied to an exact-size heap
// block, so AddressSanitizer builds catch any overrun) and either fails naming the
// file or returns entries whose strings all come from the file.
TEST_F(LdconfigRoot, TruncatedAndCorruptedCachesFailByName) {
  for (const std::string format : {"new", "old", "compat"}) {
    auto bytes = read(cache(format));
    auto check = [&](const std::string& data, const std::string& what) {
      std::unique_ptr<char[]> exact(new char[data.size() ? data.size() : 1]);
      std::memcpy(exact.get(), data.data(), data.size());
      auto r = parse_ldcache(std::string_view(exact.get(), data.size()), "the-cache-file");
      if (!r.ok()) {
        EXPECT_NE(r.message().find("the-cache-file"), std::string::npos) << what << ": " << r.message();
        return;
      }
      for (const auto& e : *r) {
        EXPECT_NE(data.find(e.key), std::string::npos) << what;
        EXPECT_NE(data.find(e.value), std::string::npos) << what;
      }
    };
    size_t failures = 0;
    for (size_t n = 0; n < bytes.size(); ++n) {
      check(bytes.substr(0, n), format + " cut at " + std::to_string(n));
      failures += !parse_ldcache(bytes.substr(0, n), "x").ok();
    }
    // Cutting into the header, the entries or the strings fails.
    EXPECT_GT(failures, bytes.size() / 2) << format;
    for (size_t i = 0; i < bytes.size(); ++i) {
      for (unsigned char v : {0x00, 0x7f, 0x80, 0xff}) {
        auto copy = bytes;
        copy[i] = static_cast<char>(v);
        check(copy, format + " byte " + std::to_string(i) + " set to " + std::to_string(v));
      }
    }
  }
}

// A new-format header (48 bytes) for nlibs entries with the given byte-order flag.
std::string new_header(uint32_t nlibs, uint8_t order = 2) {
  std::string h = "glibc-ld.so.cache1.1";
  h.append(reinterpret_cast<const char*>(&nlibs), 4);
  h.append(4, '\0');  // len_strings
  h.push_back(static_cast<char>(order));
  h.append(3 + 4 + 12, '\0');
  return h;
}

std::string new_entry(int32_t flags, uint32_t key, uint32_t value) {
  std::string e(24, '\0');
  std::memcpy(e.data(), &flags, 4);
  std::memcpy(e.data() + 4, &key, 4);
  std::memcpy(e.data() + 8, &value, 4);
  return e;
}

TEST(LdCache, HandMadeNewFormat) {
  // Offsets count from the header; the key shares the value's tail, as ldconfig writes it.
  auto data = new_header(1) + new_entry(0x0303, 48 + 24 + 5, 48 + 24) + "/lib/libz.so.1";
  data.push_back('\0');
  auto r = parse_ldcache(data, "c");
  ASSERT_TRUE(r.ok()) << r.message();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].key, "libz.so.1");
  EXPECT_EQ((*r)[0].value, "/lib/libz.so.1");
}

TEST(LdCache, HostileFilesAreErrorsThatNameTheFile) {
  auto string_table = std::string("/lib/libz.so.1") + '\0';
  struct Case {
    std::string what, data, message;
  };
  std::vector<Case> cases = {
      {"empty", "", "unknown magic"},
      {"other magic", "\x7f" "ELF............................", "unknown magic"},
      {"header cut", new_header(0).substr(0, 47), "truncated header"},
      {"huge count", new_header(0xffffffffu), "4294967295 entries do not fit in 48 bytes"},
      {"count past the end", new_header(2) + new_entry(0x0303, 0, 0), "2 entries do not fit in 72 bytes"},
      {"big-endian", new_header(0, 3), "byte order 3"},
      {"key past the end", new_header(1) + new_entry(0x0303, 1000, 72) + string_table,
       "entry 0 points outside the file"},
      {"value past the end", new_header(1) + new_entry(0x0303, 72, 0xffffffffu) + string_table,
       "entry 0 points outside the file"},
      {"unterminated string", new_header(1) + new_entry(0x0303, 72, 72) + "/lib/libz.so.1",
       "entry 0 points outside the file"},
      {"old header cut", std::string("ld.so-1.7.0\0\2\0", 14), "truncated header"},
      {"old huge count", std::string("ld.so-1.7.0\0\xff\xff\xff\x7f", 16), "2147483647 entries do not fit"},
      {"old key past the end",
       std::string("ld.so-1.7.0\0\1\0\0\0", 16) + std::string("\3\3\0\0\x40\0\0\0\0\0\0\0", 12) + "a\0",
       "entry 0 points outside the file"},
      {"compat with a cut new table",
       std::string("ld.so-1.7.0\0\0\0\0\0", 16) + new_header(5).substr(0, 30), "truncated header"},
  };
  for (const auto& c : cases) {
    auto r = parse_ldcache(c.data, "/r/etc/ld.so.cache");
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_NE(r.message().find("/r/etc/ld.so.cache: not a valid ld.so.cache ("), std::string::npos)
        << c.what << ": " << r.message();
    EXPECT_NE(r.message().find(c.message), std::string::npos) << c.what << ": " << r.message();
  }
}

#if defined(__x86_64__)
TEST(LdCache, NativeFlagsAreGlibcOnThisMachine) {
  LdCacheEntry e;
  e.flags = 0x0303;
  EXPECT_TRUE(e.is_native());
  e.flags = 0x0003;  // i386 "libc6"
  EXPECT_FALSE(e.is_native());
  e.flags = 0x0803;  // x32
  EXPECT_FALSE(e.is_native());
}
#endif

}  // namespace
