#include <gtest/gtest.h>

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include "envsnap/probe/fatbin.hpp"
#include "envsnap/util/process.hpp"
#include "envsnap/util/rootfs.hpp"
#include "envsnap/util/strings.hpp"

using namespace envsnap;
using probe::CudaArchitectures;
using probe::read_fatbin_architectures;

namespace {

namespace fs = std::filesystem;

const fs::path k_kernels = fs::path(ENVSNAP_TEST_FIXTURE_DIR) / "cuda-kernels";

std::string read_host_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Bytes of an nvcc-built fixture; fails the test when the fixture was not built.
std::string fixture(const std::string& name) {
  auto p = k_kernels / name;
  if (!fs::is_regular_file(p)) {
    ADD_FAILURE() << p << " is missing: the CUDA kernel fixtures are built by `ninja -C build` with nvcc "
                  << "(/usr/local/cuda/bin/nvcc or nvcc on PATH at configure time)";
    return {};
  }
  return read_host_file(p);
}

class TempDir {
public:
  TempDir() {
    std::string tmpl = "/tmp/envsnap-fatbin-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    m_path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const { return m_path; }
  void write(const std::string& name, const std::string& bytes) const {
    std::ofstream(m_path / name, std::ios::binary) << bytes;
  }

private:
  fs::path m_path;
};

size_t find_magic(const std::string& bytes, size_t from = 0) {
  const char magic[] = {'\x50', '\xED', '\x55', '\xBA'};
  return bytes.find(std::string_view(magic, 4), from);
}

template <class T>
void poke(std::string& bytes, size_t offset, T value) {
  std::memcpy(bytes.data() + offset, &value, sizeof value);
}

std::set<std::string> nvcc_list(const char* flag) {
  auto r = util::run_command({"/usr/local/cuda/bin/nvcc", flag}, std::chrono::seconds(60));
  EXPECT_TRUE(r.ok()) << "running /usr/local/cuda/bin/nvcc " << flag << ": " << (r ? "" : r.message());
  std::set<std::string> out;
  if (!r) return out;
  EXPECT_EQ(r->exit_code, 0) << r->err;
  for (auto line : util::lines(r->out))
    if (!util::trim(line).empty()) out.emplace(util::trim(line));
  return out;
}

// "sm_90a" -> "sm_90", "compute_100f" -> "compute_100".
std::string without_suffix(std::string s) {
  while (!s.empty() && (s.back() == 'a' || s.back() == 'f')) s.pop_back();
  return s;
}

// The real file behind /usr/local/cuda/lib64/<prefix>*, or a test failure.
std::string cuda_library(const std::string& prefix) {
  fs::path dir = "/usr/local/cuda/lib64";
  std::string found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    auto name = e.path().filename().string();
    if (name.starts_with(prefix) && !fs::is_symlink(e.path()) && e.is_regular_file()) found = e.path().string();
  }
  if (found.empty()) ADD_FAILURE() << "no " << prefix << "* under " << dir << " (CUDA 13 toolkit expected)";
  return found;
}

unsigned arch_number(const std::string& name) {
  auto us = name.find('_');
  return static_cast<unsigned>(std::stoul(name.substr(us + 1)));
}

// Every SASS and PTX architecture of the library is one this toolkit's nvcc can
// target. With allow_legacy, SASS older than the oldest nvcc target (prebuilt cubins
// a vendor still ships) is also accepted, but nothing newer or unknown.
void expect_within_toolkit(const std::string& library, bool allow_legacy) {
  auto root = util::RootFs::open("/");
  ASSERT_TRUE(root.ok());
  auto r = read_fatbin_architectures(*root, library);
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_FALSE(r->sass.empty()) << library;
  auto codes = nvcc_list("--list-gpu-code");
  auto archs = nvcc_list("--list-gpu-arch");
  ASSERT_FALSE(codes.empty());
  ASSERT_FALSE(archs.empty());
  unsigned oldest = ~0u;
  for (const auto& c : codes)
    if (c.starts_with("sm_")) oldest = std::min(oldest, arch_number(c));
  for (const auto& sm : r->sass) {
    bool legacy = allow_legacy && arch_number(sm) < oldest;
    EXPECT_TRUE(codes.contains(without_suffix(sm)) || legacy) << library << ": " << sm;
  }
  for (const auto& ptx : r->ptx) EXPECT_TRUE(archs.contains(without_suffix(ptx))) << library << ": " << ptx;
}

}  // namespace

TEST(ProbeFatbin, ListsExactlyWhatNvccWasAskedFor) {
  auto bytes = fixture("libkernels.so");
  ASSERT_FALSE(bytes.empty());
  auto r = read_fatbin_architectures(bytes, "libkernels.so");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r->sass, (std::vector<std::string>{"sm_75", "sm_80", "sm_90"}));
  EXPECT_EQ(r->ptx, (std::vector<std::string>{"compute_90"}));
}

TEST(ProbeFatbin, ArchAndFamilySpecificVariantsAndCompressedEntries) {
  auto bytes = fixture("libkernels_variants.so");
  ASSERT_FALSE(bytes.empty());
  auto r = read_fatbin_architectures(bytes, "libkernels_variants.so");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(r->sass, (std::vector<std::string>{"sm_90a", "sm_100f", "sm_120"}));
  EXPECT_EQ(r->ptx, (std::vector<std::string>{"compute_100f"}));
}

TEST(ProbeFatbin, ReadsExecutablesThroughRootFs) {
  ASSERT_FALSE(fixture("kernels_exe").empty());
  auto root = util::RootFs::open(ENVSNAP_TEST_FIXTURE_DIR);
  ASSERT_TRUE(root.ok()) << root.message();
  auto r = read_fatbin_architectures(*root, "/cuda-kernels/kernels_exe");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(*r, (CudaArchitectures{{"sm_86", "sm_89"}, {"compute_89"}}));
  auto lib = read_fatbin_architectures(*root, "cuda-kernels/libkernels.so");
  ASSERT_TRUE(lib.ok()) << lib.message();
  EXPECT_EQ(*lib, (CudaArchitectures{{"sm_75", "sm_80", "sm_90"}, {"compute_90"}}));
}

TEST(ProbeFatbin, JsonShape) {
  CudaArchitectures a{{"sm_80", "sm_90a"}, {"compute_90"}};
  EXPECT_EQ(probe::to_json(a).dump(), R"({"ptx":["compute_90"],"sass":["sm_80","sm_90a"]})");
  EXPECT_EQ(probe::to_json(CudaArchitectures{}).dump(), R"({"ptx":[],"sass":[]})");
}

TEST(ProbeFatbin, MergeSortsByNumberAndDeduplicates) {
  CudaArchitectures a{{"sm_90", "sm_100"}, {}};
  probe::merge_into(a, CudaArchitectures{{"sm_75", "sm_90", "sm_90a", "sm_120f"}, {"compute_120"}});
  EXPECT_EQ(a.sass, (std::vector<std::string>{"sm_75", "sm_90", "sm_90a", "sm_100", "sm_120f"}));
  EXPECT_EQ(a.ptx, (std::vector<std::string>{"compute_120"}));
}

TEST(ProbeFatbin, CublasLtIsWithinWhatThisToolkitSupports) {
  auto lib = cuda_library("libcublasLt.so.");
  ASSERT_FALSE(lib.empty());
  expect_within_toolkit(lib, false);
}

TEST(ProbeFatbin, CudnnEnginesAreWithinWhatThisToolkitSupports) {
  auto lib = cuda_library("libcudnn_engines_precompiled.so.");
  ASSERT_FALSE(lib.empty());
  // cuDNN 9.19 for CUDA 13 still carries two prebuilt sm_70 cubins (cubin ABI 1.7,
  // ELF e_flags SM70), which CUDA 13's nvcc no longer targets.
  expect_within_toolkit(lib, true);
}

TEST(ProbeFatbin, NonCudaElfGivesEmptyLists) {
  TempDir dir;
  dir.write("true", read_host_file("/bin/true"));
  auto root = util::RootFs::open(dir.path());
  ASSERT_TRUE(root.ok());
  auto r = read_fatbin_architectures(*root, "true");
  ASSERT_TRUE(r.ok()) << r.message();
  EXPECT_EQ(*r, CudaArchitectures{});
}

TEST(ProbeFatbin, GarbageAndTruncatedElfAreErrorsNamingTheFile) {
  auto bytes = fixture("libkernels.so");
  ASSERT_FALSE(bytes.empty());
  for (size_t cut : {size_t{0}, size_t{3}, size_t{40}, size_t{63}, bytes.size() / 2, bytes.size() - 1}) {
    auto r = read_fatbin_architectures(std::string_view(bytes).substr(0, cut), "cut.so");
    ASSERT_FALSE(r.ok()) << "cut at " << cut;
    EXPECT_TRUE(r.message().starts_with("cut.so: ")) << r.message();
  }
  std::string garbage(4096, '\0');
  std::mt19937 rng(7);
  for (auto& c : garbage) c = static_cast<char>(rng());
  auto g = read_fatbin_architectures(garbage, "garbage.so");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.message(), "garbage.so: not an ELF file");

  TempDir dir;
  dir.write("empty.so", "");
  dir.write("cut.so", bytes.substr(0, bytes.size() / 2));
  fs::create_directory(dir.path() / "dir.so");
  auto root = util::RootFs::open(dir.path());
  ASSERT_TRUE(root.ok());
  EXPECT_FALSE(read_fatbin_architectures(*root, "empty.so").ok());
  auto cut = read_fatbin_architectures(*root, "cut.so");
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(cut.message().find("cut.so: "), std::string::npos) << cut.message();
  EXPECT_FALSE(read_fatbin_architectures(*root, "dir.so").ok());
  EXPECT_FALSE(read_fatbin_architectures(*root, "missing.so").ok());
}

TEST(ProbeFatbin, TruncatedOrCorruptFatbinIsAnError) {
  auto bytes = fixture("libkernels.so");
  ASSERT_FALSE(bytes.empty());
  size_t magic = find_magic(bytes);
  ASSERT_NE(magic, std::string::npos);

  auto container_too_long = bytes;
  poke<uint64_t>(container_too_long, magic + 8, uint64_t{1} << 40);
  auto r1 = read_fatbin_architectures(container_too_long, "long.so");
  ASSERT_FALSE(r1.ok());
  EXPECT_TRUE(r1.message().starts_with("long.so: fatbinary at file offset")) << r1.message();

  auto entry_too_long = bytes;
  uint16_t header_size;
  std::memcpy(&header_size, bytes.data() + magic + 6, sizeof header_size);
  poke<uint64_t>(entry_too_long, magic + header_size + 8, ~uint64_t{0} - 16);
  auto r2 = read_fatbin_architectures(entry_too_long, "entry.so");
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.message().find("runs past its container"), std::string::npos) << r2.message();

  auto bad_magic = bytes;
  poke<uint32_t>(bad_magic, magic, 0xDEADBEEF);
  auto r3 = read_fatbin_architectures(bad_magic, "magic.so");
  ASSERT_FALSE(r3.ok());
  EXPECT_NE(r3.message().find("bad magic 0xdeadbeef"), std::string::npos) << r3.message();

  // Random damage inside the fatbinary: an answer or an error, never a crash.
  size_t second = find_magic(bytes, magic + 4);
  size_t span = (second == std::string::npos ? magic + 4096 : second + 4096) - magic;
  std::mt19937 rng(1234);
  for (int i = 0; i < 3000; ++i) {
    auto damaged = bytes;
    for (int k = 0; k < 4; ++k) damaged[magic + rng() % span] = static_cast<char>(rng());
    auto r = read_fatbin_architectures(damaged, "fuzz.so");
    if (!r.ok()) {
      EXPECT_TRUE(r.message().starts_with("fuzz.so: ")) << r.message();
    }
  }
}
