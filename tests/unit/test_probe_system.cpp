#include <gnu/libc-version.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "envsnap/probe/system.hpp"

using namespace envsnap;
using namespace envsnap::probe;
namespace fs = std::filesystem;

namespace {

class TempRoot {
public:
  TempRoot() {
    char tmpl[] = "/tmp/envsnap-system-XXXXXX";
    m_path = ::mkdtemp(tmpl);
  }
  ~TempRoot() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const { return m_path; }
  void write(const std::string& rel, const std::string& content) const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
  }
  void symlink(const std::string& target, const std::string& rel) const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    fs::create_symlink(target, p);
  }

private:
  fs::path m_path;
};

const char* const status_text =
    "Package: zlib1g\n"
    "Status: install ok installed\n"
    "Priority: optional\n"
    "Architecture: amd64\n"
    "Multi-Arch: same\n"
    "Version: 1:1.2.13.dfsg-1\n"
    "Description: compression library - runtime\n"
    " zlib is a library implementing the deflate compression method found\n"
    " .\n"
    " in gzip and PKZIP.\n"
    "\n"
    "Package: libc6\n"
    "Status: install ok installed\n"
    "Architecture: i386\n"
    "Version: 2.36-9+deb12u10\n"
    "\n"
    "Package: libc6\n"
    "Status: install ok installed\n"
    "Architecture: amd64\n"
    "Version: 2.36-9+deb12u10\n"
    "Conffiles:\n"
    " /etc/ld.so.conf.d/x86_64-linux-gnu.conf d4e4d0ad1fb46d7e3b6e1d6d3c2c5ac4\n"
    "\n"
    "Package: old-tool\n"
    "Status: deinstall ok config-files\n"
    "Architecture: amd64\n"
    "Version: 0.9-1\n"
    "\n"
    "Package: broken-upgrade\n"
    "Status: install ok half-installed\n"
    "Architecture: amd64\n"
    "Version: 3.0-1\n"
    "\n"
    "Package: unpacked-only\n"
    "Status: install ok unpacked\n"
    "Architecture: all\n"
    "Version: 1.0\n"
    "\n"
    "Package: gone\n"
    "Status: purge ok not-installed\n"
    "Architecture: amd64\n"
    "\n"
    "Package: held\n"
    "Status: hold ok installed\n"
    "Architecture: all\n"
    "Version: 5.2\n"
    "\n";

}  // namespace

namespace envsnap::probe {
void PrintTo(const Package& p, std::ostream* os) { *os << p.name << ' ' << p.version << ' ' << p.arch; }
}  // namespace envsnap::probe

TEST(ProbeSystem, DpkgStatusListsOnlyInstalledPackages) {
  Warnings warnings;
  auto pkgs = parse_dpkg_status(status_text, "/r/var/lib/dpkg/status", warnings);
  std::vector<Package> want = {{"held", "5.2", "all"},
                               {"libc6", "2.36-9+deb12u10", "amd64"},
                               {"libc6", "2.36-9+deb12u10", "i386"},
                               {"zlib1g", "1:1.2.13.dfsg-1", "amd64"}};
  EXPECT_EQ(pkgs, want);
  EXPECT_TRUE(warnings.items().empty());
}

TEST(ProbeSystem, DpkgStatusTruncatedKeepsGoodStanzas) {
  std::string text = std::string(status_text) +
                     "Package: python3\n"
                     "Status: install ok installed\n"
                     "Architecture: amd64\n"
                     "Vers";
  Warnings warnings;
  auto pkgs = parse_dpkg_status(text, "/r/var/lib/dpkg/status", warnings);
  ASSERT_EQ(pkgs.size(), 4u);
  EXPECT_EQ(pkgs[0].name, "held");
  EXPECT_EQ(pkgs[3].name, "zlib1g");
  std::vector<std::string> want = {
      "/r/var/lib/dpkg/status: line 51: the file ends in the middle of a line (truncated) (package 'python3'); "
      "stanza skipped"};
  EXPECT_EQ(warnings.items(), want);
}

TEST(ProbeSystem, DpkgStatusGarbageAndMissingVersionWarnOncePerProblem) {
  std::string text =
      "Package: good-one\n"
      "Status: install ok installed\n"
      "Architecture: amd64\n"
      "Version: 1.0\n"
      "\n"
      "Package: no-version\n"
      "Status: install ok installed\n"
      "Architecture: amd64\n"
      "\n"
      "Package: mangled\n"
      "Status: install ok installed\n"
      "\x01\xff\xfe garbage \x02 more\n"
      "\x7f\x45\x4c\x46 still garbage\n"
      "Version: 2.0\n"
      "\n"
      "\xde\xad\xbe\xef\n"
      "\n"
      "Package: good-two\n"
      "Status: install ok installed\n"
      "Architecture: arm64\n"
      "Version: 2.0-1\n";
  Warnings warnings;
  auto pkgs = parse_dpkg_status(text, "/r/status", warnings);
  std::vector<Package> want = {{"good-one", "1.0", "amd64"}, {"good-two", "2.0-1", "arm64"}};
  EXPECT_EQ(pkgs, want);
  std::vector<std::string> want_warnings = {
      "/r/status: line 6: package 'no-version' has no Version; skipped",
      "/r/status: line 12: not a 'Field: value' line (package 'mangled'); stanza skipped",
      "/r/status: line 16: not a 'Field: value' line; stanza skipped",
  };
  EXPECT_EQ(warnings.items(), want_warnings);
}

TEST(ProbeSystem, DpkgStatusWithEmbeddedNulIsOneProblem) {
  static const char raw[] = "Package: a\nStatus: install ok installed\nVersion: 1\n\n\0\0\0\0\nPackage: b\n";
  std::string text(raw, sizeof raw - 1);
  Warnings warnings;
  auto pkgs = parse_dpkg_status(text, "/s", warnings);
  std::vector<Package> want = {{"a", "1", ""}};
  EXPECT_EQ(pkgs, want);
  std::vector<std::string> want_warnings = {"/s: line 5: not a 'Field: value' line (package 'b'); stanza skipped"};
  EXPECT_EQ(warnings.items(), want_warnings);
}

TEST(ProbeSystem, OsReleaseFollowsShellQuoting) {
  auto os = parse_os_release(
      "# comment\n"
      "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"
      "NAME=\"Debian GNU/Linux\"\n"
      "VERSION_ID='12'\n"
      "VERSION_CODENAME=book\\ worm\n"
      "ID=\"deb\\\"ian\\\\x\"'$raw'\n"
      "HOME_URL=\"https://www.debian.org/\"\n");
  std::map<std::string, std::string> want = {{"id", "deb\"ian\\x$raw"},
                                             {"pretty_name", "Debian GNU/Linux 12 (bookworm)"},
                                             {"version_codename", "book worm"},
                                             {"version_id", "12"}};
  EXPECT_EQ(os, want);
}

TEST(ProbeSystem, ApkInstalledDatabase) {
  auto pkgs = parse_apk_installed(
      "C:Q1abc=\n"
      "P:musl\n"
      "V:1.2.4-r2\n"
      "A:x86_64\n"
      "S:383152\n"
      "\n"
      "C:Q1def=\n"
      "P:busybox\n"
      "V:1.36.1-r5\n"
      "A:x86_64\n"
      "T:Size optimized toolbox\n");
  std::vector<Package> want = {{"busybox", "1.36.1-r5", "x86_64"}, {"musl", "1.2.4-r2", "x86_64"}};
  EXPECT_EQ(pkgs, want);
}

TEST(ProbeSystem, ProbeOfAnotherRoot) {
  TempRoot root;
  root.write("usr/lib/os-release", "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n");
  root.symlink("../usr/lib/os-release", "etc/os-release");
  root.write("var/lib/dpkg/status", status_text);
  fs::create_directories(root.path() / "lib64");
  fs::copy_file("/bin/true", root.path() / "lib64/ld-linux-x86-64.so.2");
  root.write("lib/x86_64-linux-gnu/libc.so.6",
             std::string("\x7f" "ELF junk\0\0GNU C Library (Debian GLIBC 2.36-9+deb12u10) stable release version "
                         "2.36.\nCopyright",
                         98));
  struct utsname u;
  ASSERT_EQ(::uname(&u), 0);

  auto rootfs = util::RootFs::open(root.path());
  ASSERT_TRUE(rootfs);
  Warnings warnings;
  Context ctx{*rootfs, Liveness::other_root, warnings};
  auto info = probe_system(ctx);
  EXPECT_EQ(info.arch, std::string(u.machine));
  EXPECT_EQ(info.glibc, "2.36");
  EXPECT_FALSE(info.host.has_value());
  EXPECT_TRUE(warnings.items().empty());

  auto j = to_json(info);
  auto want = nlohmann::json::parse(R"J({
    "os": {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
    "glibc": "2.36",
    "packages": {
      "dpkg": [ {"name": "held", "version": "5.2", "arch": "all"},
                {"name": "libc6", "version": "2.36-9+deb12u10", "arch": "amd64"},
                {"name": "libc6", "version": "2.36-9+deb12u10", "arch": "i386"},
                {"name": "zlib1g", "version": "1:1.2.13.dfsg-1", "arch": "amd64"} ],
      "apk": []
    }
  })J");
  want["arch"] = u.machine;
  EXPECT_EQ(j, want);
}

TEST(ProbeSystem, MultiarchRootPrefersTheNativeLoader) {
  TempRoot root;
  root.write("var/lib/dpkg/status",
             "Package: dpkg\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1.21.22\n\n");
  std::string elf_head(64, '\0');
  elf_head.replace(0, 4, "\x7f" "ELF");
  elf_head[4] = 2;  // 64-bit
  elf_head[5] = 1;  // little-endian
  auto with_machine = [&](unsigned char m) { auto h = elf_head; h[18] = static_cast<char>(m); return h; };
  root.write("lib64/ld-linux-x86-64.so.2", with_machine(62));
  root.write("lib/ld-linux-aarch64.so.1", with_machine(183));
  auto rootfs = util::RootFs::open(root.path());
  ASSERT_TRUE(rootfs);
  Warnings warnings;
  Context ctx{*rootfs, Liveness::other_root, warnings};
  EXPECT_EQ(probe_system(ctx).arch, "aarch64");
}

TEST(ProbeSystem, FallsBackToDpkgForArchAndGlibc) {
  TempRoot root;
  root.write("var/lib/dpkg/status",
             "Package: libc6\nStatus: install ok installed\nArchitecture: arm64\nVersion: 2.31-13+deb11u5\n\n");
  root.write("var/lib/dpkg/status-old", "");
  auto rootfs = util::RootFs::open(root.path());
  ASSERT_TRUE(rootfs);
  Warnings warnings;
  Context ctx{*rootfs, Liveness::other_root, warnings};
  auto info = probe_system(ctx);
  EXPECT_EQ(info.arch, "aarch64");
  EXPECT_EQ(info.glibc, "2.31");
  EXPECT_TRUE(info.os.empty());
  EXPECT_FALSE(to_json(info).contains("os"));
}

TEST(ProbeSystem, TruncatedStatusWarningNamesHostPath) {
  TempRoot root;
  root.write("var/lib/dpkg/status", "Package: a\nStatus: install ok installed\nVersion: 1\n\nPackage: b\nStat");
  auto rootfs = util::RootFs::open(root.path());
  ASSERT_TRUE(rootfs);
  Warnings warnings;
  Context ctx{*rootfs, Liveness::other_root, warnings};
  auto info = probe_system(ctx);
  std::vector<Package> want = {{"a", "1", ""}};
  EXPECT_EQ(info.dpkg, want);
  std::vector<std::string> want_warnings = {
      (root.path() / "var/lib/dpkg/status").string() +
      ": line 6: the file ends in the middle of a line (truncated) (package 'b'); stanza skipped"};
  EXPECT_EQ(warnings.items(), want_warnings);
}

TEST(ProbeSystem, LiveSystemHasHostFacts) {
  auto rootfs = util::RootFs::open("/");
  ASSERT_TRUE(rootfs);
  Warnings warnings;
  Context ctx{*rootfs, Liveness::live_system, warnings};
  auto info = probe_system(ctx);
  struct utsname u;
  ASSERT_EQ(::uname(&u), 0);
  EXPECT_EQ(info.arch, std::string(u.machine));
  EXPECT_EQ(info.glibc, std::string(gnu_get_libc_version()));
  ASSERT_TRUE(info.host.has_value());
  EXPECT_EQ(info.host->kernel, std::string(u.release));
  EXPECT_EQ(info.host->cpus, static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN)));
  EXPECT_EQ(info.host->memory_bytes,
            static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)));
  auto j = to_json(info);
  EXPECT_EQ(j["host"]["kernel"], std::string(u.release));
}
