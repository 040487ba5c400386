#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "envsnap/probe/nvidia.hpp"

using namespace envsnap;
using namespace envsnap::probe;
namespace fs = std::filesystem;

namespace {

const std::string fake_nvml = std::string(ENVSNAP_TEST_FIXTURE_DIR) + "/fake-nvml/libnvidia-ml.so.1";

class TempRoot {
public:
  TempRoot() {
    char tmpl[] = "/tmp/envsnap-nvidia-XXXXXX";
    const char* dir = ::mkdtemp(tmpl);
    if (!dir) throw std::runtime_error("mkdtemp failed");
    m_path = dir;
  }
  ~TempRoot() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const { return m_path; }
  void write(const std::string& rel, const std::string& content) const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << content;
  }

private:
  fs::path m_path;
};

// Sets an environment variable for the lifetime of the object.
class ScopedEnv {
public:
  ScopedEnv(const char* name, const char* value) : m_name(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(m_name); }

private:
  const char* m_name;
};

struct Probed {
  NvidiaInfo info;
  std::vector<std::string> warnings;
};

Probed run_probe(const fs::path& root, Liveness liveness, NvmlOptions options) {
  auto rootfs = util::RootFs::open(root);
  EXPECT_TRUE(rootfs.ok());
  Warnings warnings;
  Context ctx{*rootfs, liveness, warnings};
  Probed out;
  out.info = probe_nvidia(ctx, options);
  out.warnings = warnings.items();
  return out;
}

bool any_contains(const std::vector<std::string>& items, const std::string& a, const std::string& b = "") {
  for (const auto& s : items)
    if (s.find(a) != std::string::npos && s.find(b) != std::string::npos) return true;
  return false;
}

const char* proc_text =
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
    "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n";

}  // namespace

TEST(ProbeNvidia, FakeNvmlGivesDriverAndTwoGpus) {
  TempRoot root;
  auto r = run_probe(root.path(), Liveness::live_system, {fake_nvml, std::chrono::milliseconds(10000)});
  EXPECT_TRUE(r.warnings.empty()) << (r.warnings.empty() ? "" : r.warnings.front());
  EXPECT_EQ(r.info.source, "nvml");
  EXPECT_EQ(r.info.driver, "535.104.05");
  EXPECT_EQ(r.info.cuda_driver, "12.2");
  ASSERT_EQ(r.info.gpus.size(), 2u);
  const char* bus[] = {"00000000:18:00.0", "00000000:2A:00.0"};
  const char* uuid[] = {"GPU-5f3a1c2e-0000-4000-8000-000000000000", "GPU-5f3a1c2e-0000-4000-8000-000000000001"};
  for (int i = 0; i < 2; ++i) {
    const auto& g = r.info.gpus[static_cast<size_t>(i)];
    EXPECT_EQ(g.index, i);
    EXPECT_EQ(g.name, "NVIDIA H100 80GB HBM3");
    EXPECT_EQ(g.uuid, uuid[i]);
    EXPECT_EQ(g.compute_capability, "9.0");
    EXPECT_EQ(g.memory_bytes, 85520809984u);
    EXPECT_EQ(g.mig_mode, "disabled");
    EXPECT_EQ(g.pci_bus_id, bus[i]);
  }
}

TEST(ProbeNvidia, ToJsonHasTheLockShape) {
  TempRoot root;
  auto r = run_probe(root.path(), Liveness::live_system, {fake_nvml, std::chrono::milliseconds(10000)});
  auto expected = nlohmann::json::parse(R"({
    "source": "nvml", "driver": "535.104.05", "cuda_driver": "12.2",
    "gpus": [
      { "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5f3a1c2e-0000-4000-8000-000000000000",
        "compute_capability": "9.0", "memory_bytes": 85520809984, "mig_mode": "disabled",
        "pci_bus_id": "00000000:18:00.0" },
      { "index": 1, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5f3a1c2e-0000-4000-8000-000000000001",
        "compute_capability": "9.0", "memory_bytes": 85520809984, "mig_mode": "disabled",
        "pci_bus_id": "00000000:2A:00.0" } ] })");
  EXPECT_EQ(to_json(r.info), expected);
  EXPECT_TRUE(to_json(r.info)["gpus"][0]["memory_bytes"].is_number_unsigned());
}

TEST(ProbeNvidia, ToJsonWithoutNvmlHasNoGpus) {
  NvidiaInfo info;
  info.source = "soname";
  info.driver = "535.104.05";
  EXPECT_EQ(to_json(info), nlohmann::json::parse(R"({"source":"soname","driver":"535.104.05"})"));
  EXPECT_EQ(to_json(NvidiaInfo{}), nlohmann::json::parse(R"({"source":"none"})"));
}

TEST(ProbeNvidia, GpuCountFromEnvironment) {
  TempRoot root;
  ScopedEnv gpus("FAKE_NVML_GPUS", "3");
  auto r = run_probe(root.path(), Liveness::live_system, {fake_nvml, std::chrono::milliseconds(10000)});
  EXPECT_EQ(r.info.source, "nvml");
  ASSERT_EQ(r.info.gpus.size(), 3u);
  EXPECT_EQ(r.info.gpus[2].index, 2);
  EXPECT_EQ(r.info.gpus[2].pci_bus_id, "00000000:3A:00.0");
}

TEST(ProbeNvidia, NoGpusStillListsAnEmptyArray) {
  TempRoot root;
  ScopedEnv gpus("FAKE_NVML_GPUS", "0");
  auto r = run_probe(root.path(), Liveness::live_system, {fake_nvml, std::chrono::milliseconds(10000)});
  EXPECT_EQ(r.info.source, "nvml");
  EXPECT_EQ(to_json(r.info), nlohmann::json::parse(
                                 R"({"source":"nvml","driver":"535.104.05","cuda_driver":"12.2","gpus":[]})"));
}

TEST(ProbeNvidia, LibraryFromEnvironmentWhenOptionIsEmpty) {
  TempRoot root;
  ScopedEnv lib("ENVSNAP_NVML_LIBRARY", fake_nvml.c_str());
  auto r = run_probe(root.path(), Liveness::live_system, {"", std::chrono::milliseconds(10000)});
  EXPECT_EQ(r.info.source, "nvml");
  EXPECT_EQ(r.info.gpus.size(), 2u);
}

TEST(ProbeNvidia, HangingNvmlTimesOutAndFallsBackToProc) {
  TempRoot root;
  root.write("proc/driver/nvidia/version", proc_text);
  ScopedEnv hang("FAKE_NVML_HANG", "1");
  auto start = std::chrono::steady_clock::now();
  auto r = run_probe(root.path(), Liveness::live_system, {fake_nvml, std::chrono::milliseconds(500)});
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, std::chrono::seconds(2));
  EXPECT_GE(took, std::chrono::milliseconds(490));  // run_in_child truncates its deadline to whole ms
  EXPECT_EQ(r.info.source, "proc");
  EXPECT_EQ(r.info.driver, "535.104.05");
  EXPECT_EQ(r.info.cuda_driver, "");
  EXPECT_TRUE(r.info.gpus.empty());
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_TRUE(any_contains(r.warnings, fake_nvml, "timed out after 500 ms")) << r.warnings[0];
}

TEST(ProbeNvidia, FailingInitWarnsNamingTheLibraryAndFallsBackToSoname) {
  TempRoot root;
  root.write("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.14", "");
  ScopedEnv fail("FAKE_NVML_FAIL", "1");
  auto r = run_probe(root.path(), Liveness::live_system, {fake_nvml, std::chrono::milliseconds(10000)});
  EXPECT_EQ(r.info.source, "soname");
  EXPECT_EQ(r.info.driver, "550.54.14");
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_TRUE(any_contains(r.warnings, fake_nvml, "nvmlInit_v2 failed: Driver Not Loaded (error 9)"))
      << r.warnings[0];
}

TEST(ProbeNvidia, CrashingNvmlWarnsAndFallsBack) {
  TempRoot root;
  root.write("proc/driver/nvidia/version", proc_text);
  ScopedEnv crash("FAKE_NVML_CRASH", "1");
  auto r = run_probe(root.path(), Liveness::live_system, {fake_nvml, std::chrono::milliseconds(10000)});
  EXPECT_EQ(r.info.source, "proc");
  EXPECT_EQ(r.info.driver, "535.104.05");
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_TRUE(any_contains(r.warnings, fake_nvml, "the child died of signal 11")) << r.warnings[0];
}

TEST(ProbeNvidia, MissingLibraryFallsBack) {
  TempRoot root;
  root.write("proc/driver/nvidia/version", proc_text);
  std::string missing = (root.path() / "no-such-libnvidia-ml.so.1").string();
  auto r = run_probe(root.path(), Liveness::live_system, {missing, std::chrono::milliseconds(10000)});
  EXPECT_EQ(r.info.source, "proc");
  EXPECT_EQ(r.info.driver, "535.104.05");
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_TRUE(any_contains(r.warnings, missing, "cannot load it")) << r.warnings[0];
}

TEST(ProbeNvidia, ProcParser) {
  EXPECT_EQ(parse_proc_driver_version(proc_text), "535.104.05");
  EXPECT_EQ(parse_proc_driver_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.14  "
                                      "Release Build  (dvs-builder@U16-I3-B03-4-3)  Thu Feb 22 01:25:25 UTC 2024\n"),
            "550.54.14");
  EXPECT_EQ(parse_proc_driver_version("NVRM version: NVIDIA UNIX aarch64 Kernel Module  535.161.08  Tue Mar\n"),
            "535.161.08");
  EXPECT_EQ(parse_proc_driver_version("GCC version:  gcc version 12.2.0\n"), "");
  EXPECT_EQ(parse_proc_driver_version(""), "");
}

TEST(ProbeNvidia, SonameParser) {
  EXPECT_EQ(parse_driver_soname("libnvidia-ml.so.535.104.05"), "535.104.05");
  EXPECT_EQ(parse_driver_soname("libcuda.so.550.54.14"), "550.54.14");
  EXPECT_EQ(parse_driver_soname("libnvidia-ml.so.1"), "");
  EXPECT_EQ(parse_driver_soname("libcuda.so.1"), "");
  EXPECT_EQ(parse_driver_soname("libcuda.so"), "");
  EXPECT_EQ(parse_driver_soname("libcudart.so.12.2.140"), "");
  EXPECT_EQ(parse_driver_soname("libnvidia-ml.so.535..05"), "");
}

TEST(ProbeNvidia, OtherRootUsesSonamesOnly) {
  TempRoot root;
  root.write("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.104.05", "");
  root.write("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "");
  root.write("proc/driver/nvidia/version",
             "NVRM version: NVIDIA UNIX x86_64 Kernel Module  999.1.1  Sat Aug 19 01:15:15 UTC 2023\n");
  ScopedEnv lib("ENVSNAP_NVML_LIBRARY", fake_nvml.c_str());
  auto r = run_probe(root.path(), Liveness::other_root, {fake_nvml, std::chrono::milliseconds(10000)});
  EXPECT_EQ(r.info.source, "soname");
  EXPECT_EQ(r.info.driver, "535.104.05");
  EXPECT_EQ(r.info.cuda_driver, "");
  EXPECT_TRUE(r.info.gpus.empty());
  EXPECT_TRUE(r.warnings.empty());
}

TEST(ProbeNvidia, SonamesOfSeveralVersionsWarnAndTakeTheNewest) {
  TempRoot root;
  root.write("usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05", "");
  root.write("usr/lib64/libnvidia-ml.so.535.54.03", "");
  auto r = run_probe(root.path(), Liveness::other_root, {});
  EXPECT_EQ(r.info.source, "soname");
  EXPECT_EQ(r.info.driver, "535.104.05");
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_TRUE(any_contains(r.warnings, "/usr/lib64/libnvidia-ml.so.535.54.03",
                           "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05"))
      << r.warnings[0];
}

TEST(ProbeNvidia, EmptyRootGivesNone) {
  TempRoot root;
  auto other = run_probe(root.path(), Liveness::other_root, {});
  EXPECT_EQ(other.info.source, "none");
  EXPECT_EQ(other.info.driver, "");
  EXPECT_TRUE(other.warnings.empty());
  EXPECT_EQ(to_json(other.info), nlohmann::json::parse(R"({"source":"none"})"));

  std::string missing = (root.path() / "libnvidia-ml.so.1").string();
  auto live = run_probe(root.path(), Liveness::live_system, {missing, std::chrono::milliseconds(10000)});
  EXPECT_EQ(live.info.source, "none");
  EXPECT_EQ(live.warnings.size(), 1u);
}
