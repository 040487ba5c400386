#pragma once
// A directory under /tmp for one test, removed with everything in it at scope exit.

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>

namespace envsnap::test {

class TempDir {
public:
  explicit TempDir(const std::string& prefix = "envsnap-test") {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp " + tmpl + " failed");
    m_path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(m_path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return m_path; }

private:
  std::filesystem::path m_path;
};

}  // namespace envsnap::test

// Host commands and tiny shared libraries for the tests that read real ELF files and
// ld.so.cache files written by the real ldconfig.
#include <gtest/gtest.h>

#include <chrono>
#include <fstream>
#include <vector>

#include "envsnap/util/process.hpp"

namespace envsnap::test {

// Runs ARGV and fails the test unless it exits 0.
inline void run_ok(const std::vector<std::string>& argv) {
  auto r = util::run_command(argv, std::chrono::seconds(60));
  ASSERT_TRUE(r.ok()) << r.message();
  ASSERT_EQ(r->exit_code, 0) << argv[0] << ": " << r->err;
}

// A shared library FILE built by gcc, with SONAME (none when empty).
inline void build_library(const std::filesystem::path& file, const std::string& soname) {
  std::filesystem::create_directories(file.parent_path());
  auto src = file.parent_path() / "lib.c";
  std::ofstream(src) << "int envsnap_test_symbol(void) { return 1; }\n";
  std::vector<std::string> argv = {"gcc", "-shared", "-fPIC", "-o", file.string(), src.string()};
  if (!soname.empty()) argv.push_back("-Wl,-soname," + soname);
  run_ok(argv);
  std::filesystem::remove(src);
}

}  // namespace envsnap::test
