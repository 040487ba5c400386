#include <elf.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "temp_dir.hpp"
#include "envsnap/gpu/elf.hpp"
#include "envsnap/util/process.hpp"
#include "envsnap/util/rootfs.hpp"

using namespace envsnap;
using namespace envsnap::gpu;
namespace fs = std::filesystem;

namespace {

using envsnap::test::TempDir;

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Compiles `source` with gcc and `flags` into dir/name; returns its bytes.
std::string build(const TempDir& dir, const std::string& name, const std::string& source,
                  const std::vector<std::string>& flags) {
  auto src = dir.path() / (name + ".c");
  std::ofstream(src) << source;
  std::vector<std::string> argv = {"gcc", "-o", (dir.path() / name).string()};
  argv.insert(argv.end(), flags.begin(), flags.end());
  argv.push_back(src.string());
  auto r = util::run_command(argv, std::chrono::seconds(60));
  EXPECT_TRUE(r.ok() && r->exit_code == 0) << (r.ok() ? r->err : r.message());
  return read(dir.path() / name);
}

const std::string k_lib_source = "int envsnap_test_symbol(void) { return 1; }\n";

TEST(Elf, ReadsTheSonameOfASharedLibrary) {
  TempDir t;
  auto bytes = build(t, "libcuda.so.535.104.05", k_lib_source, {"-shared", "-fPIC", "-Wl,-soname,libcuda.so.1"});
  auto info = read_elf_info(bytes, "libcuda");
  ASSERT_TRUE(info.ok()) << info.message();
  EXPECT_EQ(info->soname, "libcuda.so.1");
  EXPECT_EQ(info->elf_class, ELFCLASS64);
  EXPECT_EQ(info->machine, native_machine());

  auto root = util::RootFs::open(t.path());
  ASSERT_TRUE(root.ok());
  auto from_file = read_elf_info(*root, "/libcuda.so.535.104.05");
  ASSERT_TRUE(from_file.ok()) << from_file.message();
  EXPECT_EQ(from_file->soname, "libcuda.so.1");
}

TEST(Elf, NoSonameIsEmpty) {
  TempDir t;
  auto lib = build(t, "libplain.so", k_lib_source, {"-shared", "-fPIC"});
  auto info = read_elf_info(lib, "libplain.so");
  ASSERT_TRUE(info.ok()) << info.message();
  EXPECT_EQ(info->soname, "");
  auto exe = build(t, "static-exe", "int main(void) { return 0; }\n", {"-static"});
  info = read_elf_info(exe, "static-exe");
  ASSERT_TRUE(info.ok()) << info.message();
  EXPECT_EQ(info->soname, "");
}

TEST(Elf, NotElfAndDirectoriesAreErrors) {
  auto r = read_elf_info(std::string_view("#!/bin/sh\necho hi\n"), "/x/nvidia-smi");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.message(), "/x/nvidia-smi: not an ELF file");
  TempDir t;
  fs::create_directories(t.path() / "d");
  auto root = util::RootFs::open(t.path());
  ASSERT_TRUE(root.ok());
  auto d = read_elf_info(*root, "/d");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.message(), (t.path() / "d").string() + ": not a regular file");
}

// Every prefix of a real library and every byte of its headers set to other values:
// an error naming the file, or a soname that is a string of the file; never a read
// outside the exact-size buffer.
TEST(Elf, TruncatedAndCorruptedLibrariesFailByName) {
  TempDir t;
  auto bytes = build(t, "libx.so.1.2", k_lib_source, {"-shared", "-fPIC", "-Wl,-soname,libx.so.1"});
  auto check = [&](const std::string& data, const std::string& what) {
    std::unique_ptr<char[]> exact(new char[data.size() ? data.size() : 1]);
    std::memcpy(exact.get(), data.data(), data.size());
    auto r = read_elf_info(std::string_view(exact.get(), data.size()), "the-lib");
    if (!r.ok()) {
      EXPECT_EQ(r.message().rfind("the-lib: ", 0), 0u) << what << ": " << r.message();
      return true;
    }
    if (!r->soname.empty()) {
      EXPECT_NE(data.find(r->soname), std::string::npos) << what;
    }
    return false;
  };
  size_t failures = 0, step = bytes.size() / 400 + 1;
  for (size_t n = 0; n < bytes.size(); n += step) failures += check(bytes.substr(0, n), "cut at " + std::to_string(n));
  EXPECT_GT(failures, 0u);
  // The headers, program headers and the dynamic segment of a small library lie in its first pages.
  for (size_t i = 0; i < std::min<size_t>(bytes.size(), 16384); ++i) {
    for (unsigned char v : {0x00, 0x7f, 0xff}) {
      auto copy = bytes;
      copy[i] = static_cast<char>(v);
      check(copy, "byte " + std::to_string(i) + " set to " + std::to_string(v));
    }
  }
}

TEST(Elf, SonameOffsetOutsideTheStringTableIsAnError) {
  TempDir t;
  auto bytes = build(t, "liby.so.1.0", k_lib_source, {"-shared", "-fPIC", "-Wl,-soname,liby.so.1"});
  Elf64_Ehdr eh;
  std::memcpy(&eh, bytes.data(), sizeof eh);
  bool patched = false;
  for (unsigned i = 0; i < eh.e_phnum && !patched; ++i) {
    Elf64_Phdr ph;
    std::memcpy(&ph, bytes.data() + eh.e_phoff + i * eh.e_phentsize, sizeof ph);
    if (ph.p_type != PT_DYNAMIC) continue;
    for (uint64_t at = ph.p_offset; at + sizeof(Elf64_Dyn) <= ph.p_offset + ph.p_filesz; at += sizeof(Elf64_Dyn)) {
      Elf64_Dyn d;
      std::memcpy(&d, bytes.data() + at, sizeof d);
      if (d.d_tag != DT_SONAME) continue;
      d.d_un.d_val = 0x7fffffff;
      std::memcpy(bytes.data() + at, &d, sizeof d);
      patched = true;
      break;
    }
  }
  ASSERT_TRUE(patched);
  auto r = read_elf_info(bytes, "liby");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.message(), "liby: ELF DT_SONAME lies outside the string table");
}

}  // namespace
