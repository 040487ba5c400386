#include <gtest/gtest.h>

#include <thread>
#include <unistd.h>
#include <zstd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "envsnap/image/compress.hpp"
#include "envsnap/util/sha256.hpp"

using namespace envsnap;
using image::Compression;

namespace {

class MemorySink : public image::Sink {
public:
  util::Result<void> write(const void* data, size_t size) override {
    bytes.append(static_cast<const char*>(data), size);
    ++writes;
    return {};
  }
  std::string bytes;
  int writes = 0;
};

class FailingSink : public image::Sink {
public:
  util::Result<void> write(const void*, size_t) override { return util::Error{"disk full"}; }
};

std::string test_input(size_t size) {
  std::string s;
  s.reserve(size);
  uint32_t x = 12345;
  while (s.size() < size) {
    x = x * 1103515245u + 12345u;
    if ((x >> 20) % 3 == 0) s += "layer-" + std::to_string(x % 1000) + "\n";
    else s.push_back(static_cast<char>(x >> 24));
  }
  s.resize(size);
  return s;
}

std::string compress_all(Compression c, unsigned threads, const std::string& input, size_t chunk) {
  MemorySink sink;
  image::BlockCompressor comp(c, threads, sink);
  for (size_t pos = 0; pos < input.size(); pos += chunk) {
    auto r = comp.write(input.data() + pos, std::min(chunk, input.size() - pos));
    EXPECT_TRUE(r.ok());
  }
  auto r = comp.finish();
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(comp.compressed_size(), sink.bytes.size());
  return sink.bytes;
}

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = ::pclose(p);
  if (rc != 0) out = "exit status " + std::to_string(rc);
  return out;
}

struct TempFile {
  std::string path;
  explicit TempFile(const std::string& bytes) {
    char tmpl[] = "/tmp/envsnap-compress-XXXXXX";
    int fd = ::mkstemp(tmpl);
    path = tmpl;
    EXPECT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    ::close(fd);
  }
  ~TempFile() { ::unlink(path.c_str()); }
};

}  // namespace

TEST(ImageCompress, GzipMemberHeaderHasNoTimeOrName) {
  std::string out;
  ASSERT_TRUE(image::compress_block(Compression::gzip, "abc", 3, out).ok());
  ASSERT_GE(out.size(), 18u);
  // libdeflate's header: FLG 0, MTIME 0, XFL 4 ("fastest", RFC 1952, written for
  // levels 0 and 1), OS 255 ("unknown").
  EXPECT_EQ(out.substr(0, 10), std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff", 10));
  // Trailer: CRC-32 of "abc" (0x352441c2) and ISIZE 3, little-endian.
  EXPECT_EQ(out.substr(out.size() - 8), std::string("\xc2\x41\x24\x35\x03\x00\x00\x00", 8));
}

TEST(ImageCompress, ThreadCountDoesNotChangeBytes) {
  auto input = test_input(5 * image::compress_block_size + 4321);
  for (auto c : {Compression::gzip, Compression::zstd}) {
    auto one = compress_all(c, 1, input, 1000003);
    ASSERT_FALSE(one.empty());
    auto digest = util::sha256_hex(one);
    for (unsigned t : {2u, 4u, 8u}) EXPECT_EQ(util::sha256_hex(compress_all(c, t, input, 77777)), digest) << t;
    EXPECT_EQ(util::sha256_hex(compress_all(c, 0, input, input.size())), digest);
  }
}

TEST(ImageCompress, GzipMembersDecodeWithGzip) {
  auto input = test_input(3 * image::compress_block_size + 10);
  auto gz = compress_all(Compression::gzip, 3, input, 65536);
  TempFile f(gz);
  EXPECT_EQ(run_capture("gzip -t " + f.path + " 2>&1 && echo ok"), "ok\n");
  EXPECT_EQ(run_capture("gzip -dc " + f.path), input);
  // One member per block: four gzip headers, each at the start of a member.
  size_t members = 0;
  for (size_t pos = 0; (pos = gz.find(std::string("\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff", 10), pos)) !=
                       std::string::npos;
       ++pos)
    ++members;
  EXPECT_EQ(members, 4u);
}

TEST(ImageCompress, ZstdFramesOnePerBlock) {
  auto input = test_input(3 * image::compress_block_size + 10);
  auto zs = compress_all(Compression::zstd, 2, input, 65536);
  std::vector<unsigned long long> sizes;
  for (size_t pos = 0; pos < zs.size();) {
    size_t n = ZSTD_findFrameCompressedSize(zs.data() + pos, zs.size() - pos);
    ASSERT_FALSE(ZSTD_isError(n));
    sizes.push_back(ZSTD_getFrameContentSize(zs.data() + pos, n));
    pos += n;
  }
  EXPECT_EQ(sizes, (std::vector<unsigned long long>{image::compress_block_size, image::compress_block_size,
                                                    image::compress_block_size, 10}));
  std::string back(input.size(), '\0');
  size_t n = ZSTD_decompress(back.data(), back.size(), zs.data(), zs.size());
  ASSERT_FALSE(ZSTD_isError(n)) << ZSTD_getErrorName(n);
  EXPECT_EQ(n, input.size());
  EXPECT_EQ(back, input);
  if (std::system("command -v zstd >/dev/null 2>&1") == 0) {
    TempFile f(zs);
    EXPECT_EQ(run_capture("zstd -q -t " + f.path + " 2>&1 && echo ok"), "ok\n");
  }
}

TEST(ImageCompress, EmptyInputIsOneEmptyMember) {
  auto gz = compress_all(Compression::gzip, 2, "", 1);
  TempFile f(gz);
  EXPECT_EQ(run_capture("gzip -dc " + f.path + " | wc -c"), "0\n");
}

TEST(ImageCompress, SinkErrorIsReturned) {
  FailingSink sink;
  for (unsigned t : {1u, 4u}) {
    image::BlockCompressor comp(Compression::gzip, t, sink);
    auto input = test_input(2 * image::compress_block_size);
    auto r = comp.write(input.data(), input.size());
    if (r) r = comp.finish();
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.message(), "disk full");
    EXPECT_FALSE(comp.write("x", 1).ok());
  }
}

TEST(ImageCompress, NoCpuCaveat) { EXPECT_EQ(image::gzip_cpu_caveat(), ""); }

// Each thread reuses one libdeflate compressor, whose hash tables keep the positions
// of the earlier block: they must not change the bytes of a later one.
TEST(ImageCompress, BlockBytesDoNotDependOnEarlierBlocksOfTheThread) {
  auto make = [](unsigned seed) {
    std::string s;
    uint32_t x = seed;
    for (size_t i = 0; i < image::compress_block_size; ++i) {
      x = x * 1103515245u + 12345u;
      // Text-like with long repeats, so the hash table fills with many positions.
      s += static_cast<char>('a' + ((x >> 16) % 7));
    }
    return s;
  };
  auto a = make(1), b = make(2);
  std::string first, other, again;
  ASSERT_TRUE(image::compress_block(image::Compression::gzip, a.data(), a.size(), first).ok());
  ASSERT_TRUE(image::compress_block(image::Compression::gzip, b.data(), b.size(), other).ok());
  ASSERT_TRUE(image::compress_block(image::Compression::gzip, a.data(), a.size(), again).ok());
  EXPECT_EQ(first, again);
  std::string fresh;
  std::thread([&] { (void)image::compress_block(image::Compression::gzip, a.data(), a.size(), fresh); }).join();
  EXPECT_EQ(first, fresh);
}

namespace {

// A block of SIZE bytes cycling through the first K byte values: entropy log2(K) bits.
std::string uniform_over(unsigned k, size_t size) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>(i % k);
  return s;
}

}  // namespace

TEST(Compress, IncompressibleBlocksAreRecognisedByEntropy) {
  const size_t n = size_t{1} << 20;
  // log2(K) around the 7.97-bit threshold: 250 values 7.966, 252 values 7.977.
  EXPECT_FALSE(envsnap::image::looks_incompressible(uniform_over(128, n).data(), n));
  EXPECT_FALSE(envsnap::image::looks_incompressible(uniform_over(240, n).data(), n));
  EXPECT_FALSE(envsnap::image::looks_incompressible(uniform_over(250, n).data(), n));
  EXPECT_TRUE(envsnap::image::looks_incompressible(uniform_over(252, n).data(), n));
  EXPECT_TRUE(envsnap::image::looks_incompressible(uniform_over(256, n).data(), n));
  std::string random(n, '\0');
  uint64_t x = 88172645463325252ull;
  for (auto& c : random) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x >> 56);
  }
  EXPECT_TRUE(envsnap::image::looks_incompressible(random.data(), n));
  std::string text;
  while (text.size() < n) text += "import torch\nmodel = torch.nn.Linear(16, 32)\n";
  EXPECT_FALSE(envsnap::image::looks_incompressible(text.data(), n));
  EXPECT_FALSE(envsnap::image::looks_incompressible(random.data(), 4096));  // too small to judge
  // A random block is stored: the member is the input plus headers, and it inflates back.
  std::string out;
  ASSERT_TRUE(envsnap::image::compress_block(envsnap::image::Compression::gzip, random.data(), n, out));
  EXPECT_GT(out.size(), n);
  EXPECT_LT(out.size(), n + 1024);
}
