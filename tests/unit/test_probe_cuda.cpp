#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "envsnap/probe/cuda.hpp"

using namespace envsnap;
using namespace envsnap::probe;
namespace fs = std::filesystem;

namespace envsnap::probe {
void PrintTo(const ComponentVersion& c, std::ostream* os) {
  *os << "{" << c.path << ", " << c.version << ", " << c.source << ", " << c.kind << "}";
}
}  // namespace envsnap::probe

namespace {

class TempRoot {
public:
  TempRoot() {
    char tmpl[] = "/tmp/envsnap-cuda-XXXXXX";
    m_path = ::mkdtemp(tmpl);
  }
  ~TempRoot() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const { return m_path; }
  void write(const std::string& rel, const std::string& content = "") const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
  }
  void symlink(const std::string& target, const std::string& rel) const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    fs::create_symlink(target, p);
  }
  void mkdir(const std::string& rel) const { fs::create_directories(m_path / rel); }

private:
  fs::path m_path;
};

CudaStack probe_root(const fs::path& root_path, const std::vector<std::string>& sites, Warnings& warnings) {
  auto rootfs = util::RootFs::open(root_path);
  EXPECT_TRUE(rootfs);
  Context ctx{*rootfs, Liveness::other_root, warnings};
  return probe_cuda(ctx, sites);
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The first capture group of re in text, or nullopt.
std::optional<std::string> grab(const std::string& text, const std::string& re) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(re))) return std::nullopt;
  return m[1].str();
}

const ComponentVersion* find_path(const std::vector<ComponentVersion>& list, const std::string& path) {
  for (const auto& c : list)
    if (c.path == path) return &c;
  return nullptr;
}

}  // namespace

TEST(ProbeCuda, LocalToolkitsFromEachVersionSource) {
  TempRoot root;
  root.write("usr/local/cuda-12.2/version.json",
             R"({"cuda": {"name": "CUDA SDK", "version": "12.2.2"}, "cuda_cudart": {"version": "12.2.140"}})");
  root.symlink("/usr/local/cuda-12.2", "usr/local/cuda");
  root.symlink("cuda-12.2", "usr/local/cuda-12");
  root.write("usr/local/cuda-11.8/version.txt", "CUDA Version 11.8.89\n");
  root.write("usr/local/cuda-11.8/include/cuda_runtime_api.h", "#define CUDART_VERSION 11080\n");
  root.write("usr/local/cuda-10.2/include/cuda_runtime_api.h",
             "/* header */\n#ifndef X\n#  define CUDART_VERSION_X 1\n#define CUDART_VERSION  10020\n#endif\n");
  root.write("usr/local/cuda-9.0/lib64/libcudart.so.9.0.176");
  root.symlink("libcudart.so.9.0.176", "usr/local/cuda-9.0/lib64/libcudart.so.9.0");
  root.write("usr/local/cuda-13.0/dist-info/nvidia_cuda_runtime-13.0.96.dist-info/METADATA",
             "Metadata-Version: 2.4\nName: nvidia-cuda-runtime\nVersion: 13.0.96\n\nVersion: 1.0\n");
  root.write("usr/local/cuda-13.0/include/cuda_runtime_api.h", "#define CUDART_VERSION 13000\n");

  Warnings warnings;
  auto stack = probe_root(root.path(), {}, warnings);
  std::vector<ComponentVersion> want = {
      {"/usr/local/cuda-10.2", "10.2", "header", "local"},
      {"/usr/local/cuda-11.8", "11.8.89", "version.txt", "local"},
      {"/usr/local/cuda-12.2", "12.2.2", "version.json", "local"},
      {"/usr/local/cuda-13.0", "13.0.96", "dist-info", "local"},
      {"/usr/local/cuda-9.0", "9.0.176", "soname", "local"},
  };
  EXPECT_EQ(stack.toolkits, want);
  EXPECT_TRUE(stack.cudnn.empty());
  EXPECT_TRUE(warnings.items().empty());
}

TEST(ProbeCuda, LibraryHeadersAndSonames) {
  TempRoot root;
  root.write("usr/local/cuda-12.4/version.json", R"({"cuda": {"version": "12.4.1"}})");
  root.symlink("/usr/local/cuda-12.4", "usr/local/cuda");
  root.write("usr/local/cuda-12.4/include/cudnn_version.h",
             "#ifndef CUDNN_VERSION_H_\n#define CUDNN_MAJOR 8\n#define CUDNN_MINOR 9\n#define CUDNN_PATCHLEVEL 7\n"
             "#define CUDNN_VERSION (CUDNN_MAJOR * 1000 + CUDNN_MINOR * 100 + CUDNN_PATCHLEVEL)\n#endif\n");
  // The header wins over the library file names in the same toolkit.
  root.write("usr/local/cuda-12.4/lib64/libcudnn.so.8.9.6");
  root.write("usr/include/nccl.h",
             "#define NCCL_MAJOR 2\n#define NCCL_MINOR 18\n#define NCCL_PATCH 3\n#define NCCL_SUFFIX \"\"\n");
  root.write("usr/include/x86_64-linux-gnu/NvInferVersion.h",
             "#define TRT_MAJOR_ENTERPRISE 10\n#define TRT_MINOR_ENTERPRISE 3\n#define TRT_PATCH_ENTERPRISE 0\n"
             "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE //!< TensorRT major version.\n"
             "#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE //!< TensorRT minor version.\n"
             "#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE //!< TensorRT patch version.\n");
  // No system cuDNN header: the versioned file name speaks; /lib is the same directory.
  root.write("usr/lib/x86_64-linux-gnu/libcudnn.so.8.9.2");
  root.symlink("libcudnn.so.8.9.2", "usr/lib/x86_64-linux-gnu/libcudnn.so.8");
  root.write("usr/lib/x86_64-linux-gnu/libnccl.so.2.18.3");
  root.symlink("usr/lib", "lib");

  Warnings warnings;
  auto stack = probe_root(root.path(), {}, warnings);
  auto j = to_json(stack);
  auto want = nlohmann::json::parse(R"J({
    "toolkits": [ {"path": "/usr/local/cuda-12.4", "kind": "local", "version": "12.4.1", "source": "version.json"} ],
    "cudnn": [ {"path": "/usr/lib/x86_64-linux-gnu/libcudnn.so.8.9.2", "version": "8.9.2", "source": "soname"},
               {"path": "/usr/local/cuda-12.4/include/cudnn_version.h", "version": "8.9.7", "source": "header"} ],
    "nccl": [ {"path": "/usr/include/nccl.h", "version": "2.18.3", "source": "header"} ],
    "tensorrt": [ {"path": "/usr/include/x86_64-linux-gnu/NvInferVersion.h", "version": "10.3.0", "source": "header"} ]
  })J");
  EXPECT_EQ(j, want);
  EXPECT_TRUE(warnings.items().empty());
}

TEST(ProbeCuda, OlderTensorRtHeaderAndMissingDefines) {
  TempRoot root;
  root.write("usr/include/NvInferVersion.h",
             "#define NV_TENSORRT_MAJOR 8 //!< TensorRT major version.\n#define NV_TENSORRT_MINOR 6\n"
             "#define NV_TENSORRT_PATCH 1\n#define NV_TENSORRT_BUILD 6\n");
  root.write("usr/include/x86_64-linux-gnu/nccl.h", "#define NCCL_MAJOR 2\n/* no minor */\n");
  Warnings warnings;
  auto stack = probe_root(root.path(), {}, warnings);
  std::vector<ComponentVersion> trt = {{"/usr/include/NvInferVersion.h", "8.6.1", "header", ""}};
  EXPECT_EQ(stack.tensorrt, trt);
  EXPECT_TRUE(stack.nccl.empty());
  std::vector<std::string> want = {(root.path() / "usr/include/x86_64-linux-gnu/nccl.h").string() +
                                   ": no numeric NCCL_MAJOR/MINOR/PATCH in it"};
  EXPECT_EQ(warnings.items(), want);
}

TEST(ProbeCuda, PipWheels) {
  TempRoot root;
  const std::string site = "usr/local/lib/python3.11/dist-packages";
  root.mkdir(site + "/nvidia/cuda_runtime/lib");
  root.write(site + "/nvidia_cuda_runtime_cu12-12.1.105.dist-info/METADATA",
             "Metadata-Version: 2.1\nName: nvidia-cuda-runtime-cu12\nVersion: 12.1.105\n");
  root.write(site + "/nvidia_cudnn_cu12-8.9.2.26.dist-info/METADATA",
             "Metadata-Version: 2.1\nName: nvidia-cudnn-cu12\nVersion: 8.9.2.26\n");
  root.write(site + "/nvidia_nccl_cu12-2.18.1.dist-info/RECORD");
  root.write(site + "/tensorrt-10.0.1.dist-info/METADATA", "Name: tensorrt\nVersion: 10.0.1\n");
  root.write(site + "/tensorrt_libs-10.0.1.dist-info/METADATA", "Name: tensorrt-libs\nVersion: 10.0.1\n");
  root.write(site + "/numpy-1.26.4.dist-info/METADATA", "Name: numpy\nVersion: 1.26.4\n");
  // A second site with a CUDA 13 wheel, whose files live in nvidia/cu13.
  const std::string venv = "opt/venv/lib/python3.12/site-packages";
  root.mkdir(venv + "/nvidia/cu13/lib");
  root.write(venv + "/nvidia_cuda_runtime-13.0.96.dist-info/METADATA", "Name: nvidia-cuda-runtime\nVersion: 13.0.96\n");

  Warnings warnings;
  auto stack = probe_root(root.path(), {"/" + site, "/" + venv, "/" + site, "/does/not/exist"}, warnings);
  std::vector<ComponentVersion> toolkits = {
      {"/opt/venv/lib/python3.12/site-packages/nvidia/cu13", "13.0.96", "dist-info", "pip"},
      {"/usr/local/lib/python3.11/dist-packages/nvidia/cuda_runtime", "12.1.105", "dist-info", "pip"},
  };
  EXPECT_EQ(stack.toolkits, toolkits);
  std::vector<ComponentVersion> cudnn = {
      {"/" + site + "/nvidia_cudnn_cu12-8.9.2.26.dist-info/METADATA", "8.9.2.26", "dist-info", ""}};
  EXPECT_EQ(stack.cudnn, cudnn);
  std::vector<ComponentVersion> nccl = {{"/" + site + "/nvidia_nccl_cu12-2.18.1.dist-info", "2.18.1", "dist-info", ""}};
  EXPECT_EQ(stack.nccl, nccl);
  std::vector<ComponentVersion> trt = {{"/" + site + "/tensorrt-10.0.1.dist-info/METADATA", "10.0.1", "dist-info", ""}};
  EXPECT_EQ(stack.tensorrt, trt);
  EXPECT_TRUE(warnings.items().empty());
}

TEST(ProbeCuda, CondaEnvironments) {
  TempRoot root;
  root.write("opt/conda/conda-meta/cuda-cudart-12.1.105-0.json", R"({"name": "cuda-cudart", "version": "12.1.105"})");
  root.write("opt/conda/conda-meta/cuda-cudart-dev-12.1.999-0.json", R"({"name": "cuda-cudart-dev", "version": "12.1.999"})");
  root.write("opt/conda/conda-meta/python-3.11.8-hab00c5b_0_cpython.json", R"({"version": "3.11.8"})");
  root.write("opt/conda/envs/train/conda-meta/cudatoolkit-11.8.0-h6a678d5_0.json", R"({"version": "11.8.0"})");
  root.write("opt/conda/envs/train/lib/libnccl.so.2.19.3");
  root.write("opt/conda/envs/train/include/cudnn_version.h",
             "#define CUDNN_MAJOR 8\n#define CUDNN_MINOR 7\n#define CUDNN_PATCHLEVEL 0\n");
  root.write("opt/conda/envs/empty/conda-meta/history");

  Warnings warnings;
  auto stack = probe_root(root.path(), {}, warnings);
  std::vector<ComponentVersion> toolkits = {
      {"/opt/conda", "12.1.105", "conda-meta", "conda"},
      {"/opt/conda/envs/train", "11.8.0", "conda-meta", "conda"},
  };
  EXPECT_EQ(stack.toolkits, toolkits);
  std::vector<ComponentVersion> nccl = {{"/opt/conda/envs/train/lib/libnccl.so.2.19.3", "2.19.3", "soname", ""}};
  EXPECT_EQ(stack.nccl, nccl);
  std::vector<ComponentVersion> cudnn = {{"/opt/conda/envs/train/include/cudnn_version.h", "8.7.0", "header", ""}};
  EXPECT_EQ(stack.cudnn, cudnn);
  EXPECT_TRUE(warnings.items().empty());
}

TEST(ProbeCuda, UnreadableVersionFilesWarnWithPath) {
  TempRoot root;
  root.write("usr/local/cuda-12.0/version.json", "{not json");
  Warnings warnings;
  auto stack = probe_root(root.path(), {}, warnings);
  EXPECT_TRUE(stack.toolkits.empty());
  auto dir = (root.path() / "usr/local/cuda-12.0").string();
  std::vector<std::string> want = {
      dir + "/version.json: no \"cuda\": {\"version\": ...} in it",
      dir + ": no CUDA version found (version.json, version.txt, dist-info, cuda_runtime_api.h, libcudart.so.N)"};
  EXPECT_EQ(warnings.items(), want);
  EXPECT_EQ(to_json(stack).dump(), R"({"cudnn":[],"nccl":[],"tensorrt":[],"toolkits":[]})");
}

// The machine's own /usr/local/cuda: expected versions read here, independently.
TEST(ProbeCuda, RealLocalToolkit) {
  std::error_code ec;
  auto real = fs::canonical("/usr/local/cuda", ec);
  ASSERT_TRUE(!ec && fs::is_directory(real)) << "no /usr/local/cuda: this test needs the machine's CUDA toolkit";

  std::string want_version, want_source;
  if (fs::exists(real / "version.json")) {
    want_version = grab(slurp(real / "version.json"), R"re("cuda"\s*:\s*\{[^}]*"version"\s*:\s*"([^"]+)")re").value_or("");
    want_source = "version.json";
  } else if (fs::exists(real / "version.txt")) {
    want_version = grab(slurp(real / "version.txt"), R"(CUDA Version ([0-9.]+))").value_or("");
    want_source = "version.txt";
  } else {
    if (fs::is_directory(real / "dist-info")) {
      for (const auto& e : fs::directory_iterator(real / "dist-info")) {
        if (!std::regex_match(e.path().filename().string(), std::regex(R"(nvidia_cuda_runtime(_cu\d+)?-.*\.dist-info)")))
          continue;
        want_version = grab(slurp(e.path() / "METADATA"), R"((?:^|\n)Version: ([^\r\n]+))").value_or("");
        want_source = "dist-info";
      }
    }
    if (want_version.empty()) {
      auto v = grab(slurp(real / "include/cuda_runtime_api.h"), R"(#define\s+CUDART_VERSION\s+(\d+))");
      ASSERT_TRUE(v);
      int n = std::stoi(*v);
      want_version = std::to_string(n / 1000) + "." + std::to_string(n % 1000 / 10);
      want_source = "header";
    }
  }
  ASSERT_FALSE(want_version.empty());

  Warnings warnings;
  auto stack = probe_root("/", {}, warnings);
  auto* tk = find_path(stack.toolkits, real.string());
  ASSERT_NE(tk, nullptr);
  EXPECT_EQ(*tk, (ComponentVersion{real.string(), want_version, want_source, "local"}));

  auto cudnn_h = real / "include/cudnn_version.h";
  if (fs::exists(cudnn_h)) {
    auto text = slurp(cudnn_h);
    auto v = grab(text, R"(#define\s+CUDNN_MAJOR\s+(\d+))").value() + "." +
             grab(text, R"(#define\s+CUDNN_MINOR\s+(\d+))").value() + "." +
             grab(text, R"(#define\s+CUDNN_PATCHLEVEL\s+(\d+))").value();
    auto* c = find_path(stack.cudnn, cudnn_h.string());
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(*c, (ComponentVersion{cudnn_h.string(), v, "header", ""}));
  }
  auto nccl_h = real / "include/nccl.h";
  if (fs::exists(nccl_h)) {
    auto text = slurp(nccl_h);
    auto v = grab(text, R"(#define\s+NCCL_MAJOR\s+(\d+))").value() + "." +
             grab(text, R"(#define\s+NCCL_MINOR\s+(\d+))").value() + "." +
             grab(text, R"(#define\s+NCCL_PATCH\s+(\d+))").value();
    auto* c = find_path(stack.nccl, nccl_h.string());
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(*c, (ComponentVersion{nccl_h.string(), v, "header", ""}));
  }
  EXPECT_EQ(std::count_if(stack.toolkits.begin(), stack.toolkits.end(),
                          [&](const ComponentVersion& c) { return c.path == real.string(); }),
            1);
}
