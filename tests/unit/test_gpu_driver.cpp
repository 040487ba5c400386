#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "envsnap/gpu/cdi.hpp"
#include "envsnap/gpu/driver.hpp"
#include "envsnap/util/process.hpp"

using namespace envsnap;
using namespace envsnap::gpu;
namespace fs = std::filesystem;

namespace {

const std::string k_version = "535.104.05";
const std::string k_fake_nvml = std::string(ENVSNAP_TEST_FIXTURE_DIR) + "/fake-nvml/libnvidia-ml.so.1";

using envsnap::test::TempDir;
using envsnap::test::build_library;
void run(const std::vector<std::string>& argv) { envsnap::test::run_ok(argv); }

void write(const fs::path& p, const std::string& bytes, fs::perms perms = fs::perms::owner_read | fs::perms::owner_write) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << bytes;
  fs::permissions(p, perms);
}

// mknod needs CAP_MKNOD: the tests run as root, as the e2e engine tests do.
void node(const fs::path& p, mode_t type, unsigned maj, unsigned min, mode_t mode = 0666) {
  fs::create_directories(p.parent_path());
  ASSERT_EQ(::mknod(p.c_str(), type | mode, makedev(maj, min)), 0)
      << p << ": " << std::strerror(errno) << " (the GPU discovery tests create device nodes: run them as root)";
  ASSERT_EQ(::chmod(p.c_str(), mode), 0);
}

// A listening Unix socket at p (closed at once; the socket file stays).
void unix_socket(const fs::path& p) {
  fs::create_directories(p.parent_path());
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(p.string().size(), sizeof addr.sun_path);
  std::strcpy(addr.sun_path, p.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  ::close(fd);
}

std::string str(const DeviceNode& n) {
  return n.path + " " + n.host_path + " " + n.type + " " + std::to_string(n.major) + ":" + std::to_string(n.minor) +
         " " + std::to_string(n.mode) + " " + std::to_string(n.uid) + ":" + std::to_string(n.gid);
}

std::vector<std::string> strs(const std::vector<DeviceNode>& nodes) {
  std::vector<std::string> out;
  for (const auto& n : nodes) out.push_back(str(n));
  return out;
}

std::vector<std::string> strs(const std::vector<Mount>& mounts) {
  std::vector<std::string> out;
  for (const auto& m : mounts) {
    std::string s = m.container_path + " <- " + m.host_path + " [";
    for (const auto& o : m.options) s += o + (&o == &m.options.back() ? "" : ",");
    out.push_back(s + "]");
  }
  return out;
}

std::vector<std::string> strs(const std::vector<SonameLink>& links) {
  std::vector<std::string> out;
  for (const auto& l : links) out.push_back(l.container_dir + "/" + l.name + " -> " + l.target);
  return out;
}

// A driver root the way Kubernetes' driver containers lay it out: the libraries in
// /usr/local/nvidia/lib64, which only etc/ld.so.conf names, one library in the Debian
// multiarch folder, 32-bit copies that must be ignored, the utilities, the firmware,
// the persistenced socket and the device nodes.
class DriverRoot : public ::testing::Test {
protected:
  void SetUp() override {
    auto r = m_dir.path();
    auto lib64 = r / "usr/local/nvidia/lib64";
    build_library(lib64 / ("libcuda.so." + k_version), "libcuda.so.1");
    build_library(lib64 / ("libnvidia-ml.so." + k_version), "libnvidia-ml.so.1");
    build_library(lib64 / ("libnvidia-ptxjitcompiler.so." + k_version), "libnvidia-ptxjitcompiler.so.1");
    build_library(lib64 / ("libnvidia-nvvm.so." + k_version), "libnvidia-nvvm.so.4");
    // Carries the version but is no known library: taken because it sits beside libcuda.
    build_library(lib64 / ("libnvidia-tls.so." + k_version), "");
    // Neither carries the version nor is known: left out.
    build_library(lib64 / "libnvidia-egl-wayland.so.1.1.10", "libnvidia-egl-wayland.so.1");
    build_library(r / "usr/lib/x86_64-linux-gnu" / ("libnvidia-cfg.so." + k_version), "libnvidia-cfg.so.1");
    // An absolute symlink: it must resolve inside the root, never on the host.
    build_library(r / "opt/driver" / ("libnvidia-opencl.so." + k_version), "libnvidia-opencl.so.1");
    fs::create_symlink("/opt/driver/libnvidia-opencl.so." + k_version,
                       r / "usr/lib/x86_64-linux-gnu" / ("libnvidia-opencl.so." + k_version));
    // A 32-bit driver library in the Kubernetes "lib" folder: not this machine's ABI.
    write(r / "usr/local/nvidia/lib" / ("libcuda.so." + k_version), elf32_stub());
    write(r / "etc/ld.so.conf", "/usr/local/nvidia/lib64\n/opt/driver\n");
    run({"ldconfig", "-r", r.string()});

    auto exec = fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec;
    write(r / "usr/bin/nvidia-smi", "#!/bin/sh\n", exec);
    write(r / "usr/local/nvidia/bin/nvidia-debugdump", "#!/bin/sh\n", exec);
    write(r / "usr/local/nvidia/bin/nvidia-smi", "#!/bin/sh\n", exec);  // /usr/bin comes first
    write(r / "lib/firmware/nvidia" / k_version / "gsp_ga10x.bin", "fw");
    write(r / "lib/firmware/nvidia" / k_version / "gsp_tu10x.bin", "fw");
    write(r / "lib/firmware/nvidia" / k_version / "README", "not firmware");
    write(r / "lib/firmware/nvidia/470.1.2/gsp.bin", "another driver's firmware");
    // /var/run is the usual symlink to /run.
    unix_socket(r / "run/nvidia-persistenced/socket");
    fs::create_directories(r / "var");
    fs::create_symlink("/run", r / "var/run");

    node(r / "dev/nvidiactl", S_IFCHR, 195, 255);
    node(r / "dev/nvidia0", S_IFCHR, 195, 0);
    node(r / "dev/nvidia1", S_IFCHR, 195, 1);
    node(r / "dev/nvidia-uvm", S_IFCHR, 508, 0);
    node(r / "dev/nvidia-uvm-tools", S_IFCHR, 508, 1, 0600);
    node(r / "dev/nvidia-caps/nvidia-cap1", S_IFCHR, 236, 1, 0400);
    node(r / "dev/nvidia-caps/nvidia-cap2", S_IFCHR, 236, 2, 0444);
    node(r / "dev/infiniband/uverbs0", S_IFCHR, 231, 192);
    write(r / "dev/nvidia2", "a regular file where a node should be");
    fs::create_symlink("nvidia1", r / "dev/nvidia3");
  }

  // The first bytes of a 32-bit little-endian x86 ELF file with no program headers.
  static std::string elf32_stub() {
    std::string b(52, '\0');
    b[0] = 0x7f, b[1] = 'E', b[2] = 'L', b[3] = 'F', b[4] = 1, b[5] = 1, b[6] = 1;
    b[18] = 3;  // EM_386
    return b;
  }

  std::string root() const { return m_dir.path().string(); }
  std::string host(const std::string& path) const { return root() + path; }

  std::vector<std::string> expected_mounts() const {
    const std::string ro = "[ro,nosuid,nodev,bind]";
    const std::string lib64 = "/usr/local/nvidia/lib64/";
    const std::string multiarch = "/usr/lib/x86_64-linux-gnu/";
    std::vector<std::string> m;
    for (auto f : {"gsp_ga10x.bin", "gsp_tu10x.bin"}) {
      auto p = "/lib/firmware/nvidia/" + k_version + "/" + f;
      m.push_back(p + " <- " + host(p) + " " + ro);
    }
    auto opencl = "/opt/driver/libnvidia-opencl.so." + k_version;
    m.push_back(opencl + " <- " + host(opencl) + " " + ro);
    m.push_back("/usr/bin/nvidia-smi <- " + host("/usr/bin/nvidia-smi") + " " + ro);
    auto cfg = multiarch + "libnvidia-cfg.so." + k_version;
    m.push_back(cfg + " <- " + host(cfg) + " " + ro);
    m.push_back("/usr/local/nvidia/bin/nvidia-debugdump <- " + host("/usr/local/nvidia/bin/nvidia-debugdump") + " " + ro);
    for (auto l : {"libcuda", "libnvidia-ml", "libnvidia-nvvm", "libnvidia-ptxjitcompiler", "libnvidia-tls"}) {
      auto p = lib64 + l + ".so." + k_version;
      m.push_back(p + " <- " + host(p) + " " + ro);
    }
    m.push_back("/var/run/nvidia-persistenced/socket <- " + host("/run/nvidia-persistenced/socket") +
                " [ro,nosuid,nodev,bind,noexec]");
    return m;
  }

  TempDir m_dir;
};

TEST_F(DriverRoot, FindsExactlyTheDriverFilesAndNodes) {
  DiscoverOptions o;
  o.driver_root = root();
  auto d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d->driver_root, root());
  EXPECT_EQ(d->dev_root, root());
  EXPECT_EQ(d->driver_version, k_version);
  EXPECT_EQ(d->found_by, "ld.so.cache");
  EXPECT_EQ(strs(d->mounts), expected_mounts());
  EXPECT_EQ(strs(d->links), (std::vector<std::string>{
                                "/opt/driver/libnvidia-opencl.so.1 -> libnvidia-opencl.so." + k_version,
                                "/usr/lib/x86_64-linux-gnu/libnvidia-cfg.so.1 -> libnvidia-cfg.so." + k_version,
                                "/usr/local/nvidia/lib64/libcuda.so.1 -> libcuda.so." + k_version,
                                "/usr/local/nvidia/lib64/libnvidia-ml.so.1 -> libnvidia-ml.so." + k_version,
                                "/usr/local/nvidia/lib64/libnvidia-nvvm.so.4 -> libnvidia-nvvm.so." + k_version,
                                "/usr/local/nvidia/lib64/libnvidia-ptxjitcompiler.so.1 -> libnvidia-ptxjitcompiler.so." +
                                    k_version,
                            }));
  EXPECT_EQ(d->library_dirs,
            (std::vector<std::string>{"/opt/driver", "/usr/lib/x86_64-linux-gnu", "/usr/local/nvidia/lib64"}));
  EXPECT_EQ(strs(d->control_nodes), (std::vector<std::string>{
                                        "/dev/nvidiactl " + host("/dev/nvidiactl") + " c 195:255 438 0:0",
                                        "/dev/nvidia-uvm " + host("/dev/nvidia-uvm") + " c 508:0 438 0:0",
                                        "/dev/nvidia-uvm-tools " + host("/dev/nvidia-uvm-tools") + " c 508:1 384 0:0",
                                        "/dev/nvidia-caps/nvidia-cap1 " + host("/dev/nvidia-caps/nvidia-cap1") +
                                            " c 236:1 256 0:0",
                                        "/dev/nvidia-caps/nvidia-cap2 " + host("/dev/nvidia-caps/nvidia-cap2") +
                                            " c 236:2 292 0:0",
                                        "/dev/infiniband/uverbs0 " + host("/dev/infiniband/uverbs0") +
                                            " c 231:192 438 0:0",
                                    }));
  ASSERT_EQ(d->gpus.size(), 2u);
  EXPECT_EQ(d->gpus[0].index, 0);
  EXPECT_EQ(d->gpus[0].uuid, "");
  EXPECT_EQ(str(d->gpus[0].node), "/dev/nvidia0 " + host("/dev/nvidia0") + " c 195:0 438 0:0");
  EXPECT_EQ(d->gpus[1].index, 1);
  EXPECT_EQ(str(d->gpus[1].node), "/dev/nvidia1 " + host("/dev/nvidia1") + " c 195:1 438 0:0");
  EXPECT_EQ(d->warnings, (std::vector<std::string>{host("/dev/nvidia2") + " is not a device node; left out",
                                                   host("/dev/nvidia3") + " is not a device node; left out"}));
}

TEST_F(DriverRoot, WithoutTheCacheScansTheUsualFolders) {
  fs::remove(m_dir.path() / "etc/ld.so.cache");
  DiscoverOptions o;
  o.driver_root = root();
  auto d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d->found_by, "directory scan");
  EXPECT_EQ(d->driver_version, k_version);
  // /opt/driver is no usual folder, but its library is linked from one.
  EXPECT_EQ(strs(d->mounts), expected_mounts());
}

TEST_F(DriverRoot, AGarbageCacheIsAWarningAndTheScanFindsTheDriver) {
  write(m_dir.path() / "etc/ld.so.cache", std::string("glibc-ld.so.cache1.1\xff\xff\xff\xff", 24));
  DiscoverOptions o;
  o.driver_root = root();
  auto d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d->found_by, "directory scan");
  ASSERT_FALSE(d->warnings.empty());
  EXPECT_EQ(d->warnings[0], host("/etc/ld.so.cache") +
                                ": not a valid ld.so.cache (truncated header); regenerate it with ldconfig");
}

TEST_F(DriverRoot, DeviceNodesComeFromTheDevRoot) {
  TempDir dev;
  node(dev.path() / "dev/nvidiactl", S_IFCHR, 195, 255);
  node(dev.path() / "dev/nvidia7", S_IFCHR, 195, 7);
  DiscoverOptions o;
  o.driver_root = root();
  o.dev_root = dev.path().string();
  auto d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d->dev_root, dev.path().string());
  EXPECT_EQ(strs(d->control_nodes),
            (std::vector<std::string>{"/dev/nvidiactl " + dev.path().string() + "/dev/nvidiactl c 195:255 438 0:0"}));
  ASSERT_EQ(d->gpus.size(), 1u);
  EXPECT_EQ(d->gpus[0].index, 7);
  EXPECT_EQ(d->gpus[0].node.host_path, dev.path().string() + "/dev/nvidia7");
  EXPECT_TRUE(d->warnings.empty());
}

TEST_F(DriverRoot, UuidsComeFromNvmlWhenAsked) {
  DiscoverOptions o;
  o.driver_root = root();
  o.uuids = UuidSource::nvml;
  o.nvml.library = k_fake_nvml;
  auto d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  ASSERT_EQ(d->gpus.size(), 2u);
  ASSERT_TRUE(d->warnings.size() == 2) << "warnings: " << d->warnings.back();  // the two non-nodes only
  EXPECT_EQ(d->gpus[0].uuid, "GPU-5f3a1c2e-0000-4000-8000-000000000000");
  EXPECT_EQ(d->gpus[1].uuid, "GPU-5f3a1c2e-0000-4000-8000-000000000001");

  // Another root is not the running system: no NVML unless asked.
  o.uuids = UuidSource::nvml_for_live_root;
  d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d->gpus[0].uuid, "");
}

TEST_F(DriverRoot, TheSpecOfThisRootIsCdi050WithLinksAsMounts) {
  DiscoverOptions o;
  o.driver_root = root();
  auto d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  auto spec = cdi_spec(*d);
  ASSERT_TRUE(spec.ok()) << spec.message();
  EXPECT_EQ((*spec)["cdiVersion"], "0.5.0");
  EXPECT_EQ((*spec)["containerEdits"]["mounts"].size(), d->mounts.size() + d->links.size());
  auto& mounts = (*spec)["containerEdits"]["mounts"];
  auto link = std::find_if(mounts.begin(), mounts.end(), [](const nlohmann::json& m) {
    return m["containerPath"] == "/usr/local/nvidia/lib64/libcuda.so.1";
  });
  ASSERT_NE(link, mounts.end());
  EXPECT_EQ((*link)["hostPath"], host("/usr/local/nvidia/lib64/libcuda.so." + k_version));
}

TEST(Driver, NoDriverIsAnErrorThatSaysWhereItLooked) {
  TempDir t;
  fs::create_directories(t.path() / "usr/lib/x86_64-linux-gnu");
  DiscoverOptions o;
  o.driver_root = t.path().string();
  auto d = discover_driver(o);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.message().rfind("no NVIDIA driver found under " + t.path().string() +
                                  " (looked for libcuda.so.<version> in " + t.path().string() +
                                  "/etc/ld.so.cache and in /usr/lib/x86_64-linux-gnu, ",
                              0),
            0u)
      << d.message();
  o.driver_root = (t.path() / "missing").string();
  d = discover_driver(o);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.message(), "driver root: cannot open root directory " + o.driver_root + ": No such file or directory");
}

TEST(Driver, TwoVersionsInAScanTakeTheNewestWithAWarning) {
  TempDir t;
  auto dir = t.path() / "usr/lib/x86_64-linux-gnu";
  build_library(dir / "libcuda.so.470.199.02", "libcuda.so.1");
  build_library(dir / "libcuda.so.535.104.05", "libcuda.so.1");
  build_library(dir / "libnvidia-ml.so.470.199.02", "libnvidia-ml.so.1");
  DiscoverOptions o;
  o.driver_root = t.path().string();
  auto d = discover_driver(o);
  ASSERT_TRUE(d.ok()) << d.message();
  EXPECT_EQ(d->driver_version, "535.104.05");
  EXPECT_EQ(strs(d->mounts), (std::vector<std::string>{"/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05 <- " +
                                                       t.path().string() +
                                                       "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05 "
                                                       "[ro,nosuid,nodev,bind]"}));
  EXPECT_EQ(d->warnings,
            (std::vector<std::string>{"libcuda of 2 driver versions under " + t.path().string() + ": " +
                                      t.path().string() + "/usr/lib/x86_64-linux-gnu/libcuda.so.470.199.02, " +
                                      t.path().string() + "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05; " +
                                      "using the newest, 535.104.05"}));
  EXPECT_TRUE(d->gpus.empty());
  auto spec = cdi_spec(*d);
  ASSERT_FALSE(spec.ok());
  EXPECT_EQ(spec.message().rfind("no GPU device nodes (/dev/nvidia<N>) under " + t.path().string() + ": ", 0), 0u);
}

}  // namespace
