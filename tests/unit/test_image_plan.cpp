#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "envsnap/image/glob.hpp"
#include "envsnap/image/plan.hpp"
#include "envsnap/image/secrets.hpp"

using namespace envsnap;
using namespace envsnap::image;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

class TempRoot {
public:
  TempRoot() {
    char tmpl[] = "/tmp/envsnap-plan-XXXXXX";
    m_path = ::mkdtemp(tmpl);
  }
  ~TempRoot() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  const fs::path& path() const { return m_path; }
  void write(const std::string& rel, const std::string& content = "x") const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
  }
  void symlink(const std::string& target, const std::string& rel) const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    fs::create_symlink(target, p);
  }
  void hardlink(const std::string& existing, const std::string& rel) const {
    auto p = m_path / rel;
    fs::create_directories(p.parent_path());
    fs::create_hard_link(m_path / existing, p);
  }
  void mkdir(const std::string& rel) const { fs::create_directories(m_path / rel); }

private:
  fs::path m_path;
};

Plan plan_of(const TempRoot& root, const json& lock, const PlanOptions& options, probe::Warnings& warnings) {
  auto fs = util::RootFs::open(root.path());
  EXPECT_TRUE(fs);
  auto plan = plan_layers(*fs, lock, options, warnings);
  EXPECT_TRUE(plan) << (plan ? "" : plan.message());
  return plan ? std::move(*plan) : Plan{};
}

Plan plan_of(const TempRoot& root, const json& lock = json::object(), const PlanOptions& options = {}) {
  probe::Warnings warnings;
  auto plan = plan_of(root, lock, options, warnings);
  EXPECT_EQ(warnings.items(), std::vector<std::string>{});
  return plan;
}

// Every entry path of the plan, with the layers it is in.
std::map<std::string, std::vector<std::string>> where(const Plan& plan) {
  std::map<std::string, std::vector<std::string>> out;
  for (const auto& l : plan.layers)
    for (const auto& e : l.entries) out[e.path].push_back(l.name);
  return out;
}

std::vector<std::string> layer_names(const Plan& plan) {
  std::vector<std::string> out;
  for (const auto& l : plan.layers) out.push_back(l.name);
  return out;
}

const PlannedLayer* layer(const Plan& plan, const std::string& name) {
  for (const auto& l : plan.layers)
    if (l.name == name) return &l;
  return nullptr;
}

const FileEntry* entry(const Plan& plan, const std::string& path) {
  for (const auto& l : plan.layers)
    for (const auto& e : l.entries)
      if (e.path == path) return &e;
  return nullptr;
}

std::vector<std::pair<std::string, std::string>> exclusions(const Plan& plan) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& e : plan.excluded) out.emplace_back(e.path, e.reason);
  return out;
}

using Pairs = std::vector<std::pair<std::string, std::string>>;

}  // namespace

TEST(ImageGlob, Matches) {
  EXPECT_TRUE(Glob("/var/log/**").matches("/var/log/a/b.log"));
  EXPECT_TRUE(Glob("/var/log/**").matches("/var/log"));
  EXPECT_FALSE(Glob("/var/log/*").matches("/var/log/a/b.log"));
  EXPECT_TRUE(Glob("var/log/*").matches("/var/log/a"));
  EXPECT_TRUE(Glob("**/*.pyc").matches("/usr/lib/x.pyc"));
  EXPECT_TRUE(Glob("**/*.pyc").matches("/x.pyc"));
  EXPECT_FALSE(Glob("**/*.pyc").matches("/usr/lib/x.py"));
  EXPECT_TRUE(Glob("/etc/ssh/ssh_host_?sa_key").matches("/etc/ssh/ssh_host_rsa_key"));
  EXPECT_TRUE(Glob("/a/[bc]at").matches("/a/cat"));
  EXPECT_FALSE(Glob("/a/[!bc]at").matches("/a/cat"));
  EXPECT_TRUE(Glob("/a/**/z").matches("/a/z"));
  EXPECT_TRUE(Glob("/a/**/z").matches("/a/b/c/z"));
  EXPECT_TRUE(Glob("/var/log/train/**").may_match_below("/var/log"));
  EXPECT_TRUE(Glob("/var/log/train/**").may_match_below("/var/log/train"));
  EXPECT_FALSE(Glob("/var/log/train/**").may_match_below("/var/lib"));
  EXPECT_FALSE(Glob("/var/log").may_match_below("/var/log"));
  EXPECT_TRUE(Glob("/root/.netrc").literal());
  EXPECT_FALSE(Glob("/root/*").literal());
  EXPECT_EQ(Glob("root/.ssh/").literal_path(), "/root/.ssh");
}

TEST(ImageSecrets, LockPasswordsExactly) {
  std::string shadow =
      "root:$6$salt$hash:19000:0:99999:7:::\n"
      "daemon:*:19000:0:99999:7:::\n"
      "me:!:19000:0:99999:7:::\n"
      "old:!!:19000::::::\n"
      "nopw::19000:0:99999:7:::\n"
      "lockedhash:!$y$j9T$abc:19000:0:99999:7:::\n";
  EXPECT_EQ(lock_passwords(shadow),
            "root:!:19000:0:99999:7:::\n"
            "daemon:*:19000:0:99999:7:::\n"
            "me:!:19000:0:99999:7:::\n"
            "old:!!:19000::::::\n"
            "nopw::19000:0:99999:7:::\n"
            "lockedhash:!:19000:0:99999:7:::\n");
  EXPECT_EQ(lock_passwords("sudo:$6$x$y:root:me"), "sudo:!:root:me");
}

TEST(ImageSecrets, RemoveUrlCredentials) {
  EXPECT_EQ(remove_url_credentials("[global]\nindex-url = https://user:s3cr3t@pypi.example.com/simple\n"
                                   "extra-index-url = https://pypi.org/simple https://tok@h.example/x\n"),
            "[global]\nindex-url = https://pypi.example.com/simple\n"
            "extra-index-url = https://pypi.org/simple https://h.example/x\n");
  EXPECT_EQ(remove_url_credentials("contact: me@example.com"), "contact: me@example.com");
}

TEST(ImagePlan, DefaultExclusions) {
  TempRoot r;
  r.write("proc/1/status");
  r.write("sys/kernel/x");
  r.write("dev/nvidia0");
  r.write("run/lock/x");
  r.write("tmp/x");
  r.write("var/tmp/x");
  r.write("var/cache/apt/archives/a.deb");
  r.write("var/cache/fontconfig/x");
  r.write("var/log/syslog");
  r.write("var/lib/docker/overlay2/x");
  r.write("var/lib/containers/storage/x");
  r.write("var/lib/keep/state");
  r.write("root/.cache/pip/x");
  r.write("home/me/.cache/torch/x");
  r.write("home/me/.local/share/envsnap/blobs/x");
  r.write("home/me/notes.txt");
  r.write("swapfile");
  r.write("srv/extra.swap");
  r.write("srv/store/blobs/x");
  r.write("srv/data/coco/x.jpg");
  r.write("srv/weights.pt");
  r.write("usr/lib/modules/6.1/x.ko");
  r.write("boot/vmlinuz");
  r.write("lost+found/x");
  r.write("etc/hostname");
  PlanOptions o;
  o.store_path = "/srv/store/";
  o.data_paths = {"/srv/data/coco", "srv/weights.pt"};
  auto plan = plan_of(r, json::object(), o);
  EXPECT_EQ(exclusions(plan), (Pairs{
                                  {"/boot", "kernel and boot loader"},
                                  {"/dev", "device files"},
                                  {"/home/me/.cache", "cache"},
                                  {"/home/me/.local/share/envsnap", "envsnap store"},
                                  {"/lost+found", "lost+found"},
                                  {"/proc", "pseudo-filesystem"},
                                  {"/root/.cache", "cache"},
                                  {"/run", "run-time state"},
                                  {"/srv/data/coco", "data: mounted at run time, digest in the lock"},
                                  {"/srv/extra.swap", "swap file"},
                                  {"/srv/store", "envsnap store"},
                                  {"/srv/weights.pt", "data: mounted at run time, digest in the lock"},
                                  {"/swapfile", "swap file"},
                                  {"/sys", "pseudo-filesystem"},
                                  {"/tmp", "temporary files"},
                                  {"/usr/lib/modules", "kernel modules"},
                                  {"/var/cache/apt", "cache"},
                                  {"/var/cache/fontconfig", "cache"},
                                  {"/var/lib/containers", "container storage"},
                                  {"/var/lib/docker", "container storage"},
                                  {"/var/log/syslog", "logs"},
                                  {"/var/tmp", "temporary files"},
                              }));
  auto w = where(plan);
  for (const char* kept : {"proc", "sys", "dev", "run", "tmp", "var/tmp", "boot", "var/cache", "var/log",
                           "etc/hostname", "home/me/notes.txt", "var/lib/keep/state", "srv/data"})
    EXPECT_TRUE(w.count(kept)) << kept;
  for (const auto& [path, layers] : w) {
    for (const char* gone : {"proc/", "sys/", "dev/", "run/", "tmp/", "var/tmp/", "boot/", "var/cache/", "var/log/",
                             "lost+found", "swapfile", "srv/store", "usr/lib/modules", "var/lib/docker"})
      EXPECT_FALSE(path.starts_with(gone)) << path;
  }
  EXPECT_EQ(layer_names(plan), std::vector<std::string>{"rest"});
}

TEST(ImagePlan, NvidiaDriverFilesLeftOutToolkitKept) {
  TempRoot r;
  const std::string lib = "usr/lib/x86_64-linux-gnu/";
  for (const char* f : {"libnvidia-ml.so.535.104.05", "libnvidia-ptxjitcompiler.so.1", "libcuda.so.535.104.05",
                        "libcudadebugger.so.1", "libnvcuvid.so.1", "libnvoptix.so.1", "libGLX_nvidia.so.0",
                        "libEGL_nvidia.so.0", "libGLESv2_nvidia.so.2", "libcudnn.so.8", "libnccl.so.2"})
    r.write(lib + f);
  r.symlink("libcuda.so.535.104.05", lib + "libcuda.so.1");
  r.write("usr/bin/nvidia-smi");
  r.write("usr/bin/nvidia-cuda-mps-control");
  r.write("usr/bin/nvidia-persistenced");
  r.write("usr/share/nvidia/nvidia-application-profiles-535-rc");
  r.write("etc/vulkan/icd.d/nvidia_icd.json");
  r.write("usr/share/glvnd/egl_vendor.d/10_nvidia.json");
  r.write("usr/share/glvnd/egl_vendor.d/50_mesa.json");
  r.write("usr/lib/firmware/nvidia/535/gsp.bin");
  r.write("usr/local/cuda-12.2/lib64/stubs/libcuda.so");
  r.write("usr/local/cuda-12.2/lib64/stubs/libnvidia-ml.so");
  r.write("usr/local/cuda-12.2/lib64/libcudart.so.12");
  r.write("usr/local/cuda-12.2/lib64/libcublas.so.12");
  auto plan = plan_of(r);
  const std::string why = "NVIDIA driver: injected at run time";
  EXPECT_EQ(exclusions(plan), (Pairs{
                                  {"/etc/vulkan/icd.d/nvidia_icd.json", why},
                                  {"/usr/bin/nvidia-cuda-mps-control", why},
                                  {"/usr/bin/nvidia-persistenced", why},
                                  {"/usr/bin/nvidia-smi", why},
                                  {"/usr/lib/firmware/nvidia", why},
                                  {"/usr/lib/x86_64-linux-gnu/libEGL_nvidia.so.0", why},
                                  {"/usr/lib/x86_64-linux-gnu/libGLESv2_nvidia.so.2", why},
                                  {"/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0", why},
                                  {"/usr/lib/x86_64-linux-gnu/libcuda.so.1", why},
                                  {"/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05", why},
                                  {"/usr/lib/x86_64-linux-gnu/libcudadebugger.so.1", why},
                                  {"/usr/lib/x86_64-linux-gnu/libnvcuvid.so.1", why},
                                  {"/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.104.05", why},
                                  {"/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1", why},
                                  {"/usr/lib/x86_64-linux-gnu/libnvoptix.so.1", why},
                                  {"/usr/share/glvnd/egl_vendor.d/10_nvidia.json", why},
                                  {"/usr/share/nvidia", why},
                              }));
  auto w = where(plan);
  for (const char* kept : {"usr/lib/x86_64-linux-gnu/libcudnn.so.8", "usr/lib/x86_64-linux-gnu/libnccl.so.2",
                           "usr/local/cuda-12.2/lib64/stubs/libcuda.so", "usr/local/cuda-12.2/lib64/stubs/libnvidia-ml.so",
                           "usr/local/cuda-12.2/lib64/libcudart.so.12", "usr/local/cuda-12.2/lib64/libcublas.so.12",
                           "usr/share/glvnd/egl_vendor.d/50_mesa.json"})
    EXPECT_TRUE(w.count(kept)) << kept;
}

TEST(ImagePlan, SecretsLeftOut) {
  TempRoot r;
  for (const std::string home : {"root", "home/me"}) {
    r.write(home + "/.ssh/id_ed25519");
    r.write(home + "/.docker/config.json");
    r.write(home + "/.docker/buildx/current");
    r.write(home + "/.netrc");
    r.write(home + "/.git-credentials");
    r.write(home + "/.aws/credentials");
    r.write(home + "/.config/gcloud/credentials.db");
    r.write(home + "/.kube/config");
    r.write(home + "/.azure/msal_token_cache.json");
    r.write(home + "/.huggingface/token");
    r.write(home + "/.config/wandb/settings");
    r.write(home + "/.pypirc");
    r.write(home + "/.gnupg/private-keys-v1.d/x.key");
    r.write(home + "/.bashrc");
  }
  r.write("etc/ssh/ssh_host_ed25519_key");
  r.write("etc/ssh/ssh_host_ed25519_key.pub");
  r.write("etc/ssh/sshd_config");
  r.write("srv/repo/.git-credentials");
  auto plan = plan_of(r);
  Pairs expected = {{"/etc/ssh/ssh_host_ed25519_key", "secret: SSH host keys"}};
  for (const std::string home : {"/home/me", "/root"}) {
    for (const auto& p : Pairs{{"/.aws", "AWS credentials"},
                               {"/.azure", "Azure credentials"},
                               {"/.config/gcloud", "Google Cloud credentials"},
                               {"/.config/wandb", "Weights & Biases credentials"},
                               {"/.docker/config.json", "Docker credentials"},
                               {"/.git-credentials", "Git credentials"},
                               {"/.gnupg", "GnuPG keys"},
                               {"/.huggingface/token", "Hugging Face token"},
                               {"/.kube", "Kubernetes credentials"},
                               {"/.netrc", "netrc credentials"},
                               {"/.pypirc", "PyPI credentials"},
                               {"/.ssh", "SSH keys"}})
      expected.emplace_back(home + p.first, "secret: " + p.second);
  }
  expected.emplace_back("/srv/repo/.git-credentials", "secret: Git credentials");
  EXPECT_EQ(exclusions(plan), expected);
  auto w = where(plan);
  for (const char* kept : {"root/.bashrc", "home/me/.bashrc", "root/.docker/buildx/current",
                           "etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/sshd_config"})
    EXPECT_TRUE(w.count(kept)) << kept;
  for (const auto& [path, layers] : w)
    for (const char* gone : {".ssh", ".aws", ".kube", ".azure", ".gnupg", "gcloud", "wandb", "token", "config.json",
                             ".netrc", ".pypirc", "credentials", "_key"})
      EXPECT_TRUE(path.find(gone) == std::string::npos || path.ends_with(".pub")) << path;
}

TEST(ImagePlan, SecretsOnlyByExactInclude) {
  TempRoot r;
  r.write("root/.netrc", "machine h login u password p\n");
  r.write("root/.ssh/id_rsa");
  PlanOptions o;
  o.includes = {"/root/**", "/root/.netrc"};
  auto plan = plan_of(r, json::object(), o);
  EXPECT_EQ(exclusions(plan), (Pairs{{"/root/.ssh", "secret: SSH keys"}}));
  EXPECT_TRUE(entry(plan, "root/.netrc"));
}

TEST(ImagePlan, Sanitised) {
  TempRoot r;
  r.write("etc/shadow", "root:$y$j9T$abc$def:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n");
  r.write("etc/gshadow", "root:*::\nsudo:$6$x$y::me\n");
  r.write("etc/shadow-", "root:$6$old$hash:18000:0:99999:7:::\n");
  r.write("etc/machine-id", "0123456789abcdef0123456789abcdef\n");
  r.write("var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n");
  r.write("etc/pip.conf", "[global]\nindex-url = https://u:p@pypi.example.com/simple\n");
  r.write("root/.config/pip/pip.conf", "[global]\nindex-url = https://pypi.org/simple\n");
  r.write("opt/conda/.condarc", "channels:\n  - https://tok:en@conda.example.com/main\n");
  auto plan = plan_of(r);
  EXPECT_EQ(plan.excluded.size(), 0u);
  std::vector<std::pair<std::string, std::string>> got;
  for (const auto& s : plan.sanitised) got.emplace_back(s.path, s.what);
  EXPECT_EQ(got, (Pairs{{"/etc/gshadow", "passwords locked"},
                        {"/etc/machine-id", "emptied"},
                        {"/etc/pip.conf", "URL credentials removed"},
                        {"/etc/shadow", "passwords locked"},
                        {"/etc/shadow-", "passwords locked"},
                        {"/opt/conda/.condarc", "URL credentials removed"},
                        {"/var/lib/dbus/machine-id", "emptied"}}));
  EXPECT_EQ(entry(plan, "etc/shadow")->content, "root:!:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n");
  EXPECT_EQ(entry(plan, "etc/gshadow")->content, "root:*::\nsudo:!::me\n");
  EXPECT_EQ(entry(plan, "etc/shadow-")->content, "root:!:18000:0:99999:7:::\n");
  EXPECT_EQ(entry(plan, "etc/machine-id")->content, "");
  EXPECT_EQ(entry(plan, "var/lib/dbus/machine-id")->content, "");
  EXPECT_EQ(entry(plan, "etc/pip.conf")->content, "[global]\nindex-url = https://pypi.example.com/simple\n");
  EXPECT_EQ(entry(plan, "opt/conda/.condarc")->content, "channels:\n  - https://conda.example.com/main\n");
  EXPECT_FALSE(entry(plan, "root/.config/pip/pip.conf")->content);
  // Sizes come from the sanitised content.
  uint64_t expected = std::string("root:!:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n").size() +
                      std::string("root:*::\nsudo:!::me\n").size() +
                      std::string("root:!:18000:0:99999:7:::\n").size() +
                      std::string("[global]\nindex-url = https://pypi.example.com/simple\n").size() +
                      std::string("[global]\nindex-url = https://pypi.org/simple\n").size() +
                      std::string("channels:\n  - https://conda.example.com/main\n").size();
  EXPECT_EQ(layer(plan, "rest")->bytes, expected);
}

TEST(ImagePlan, IncludeExcludeAndIgnoreFiles) {
  TempRoot r;
  r.write("var/log/train/run1.log");
  r.write("var/log/syslog");
  r.write("opt/big/a.bin");
  r.write("opt/big/keep.txt");
  r.write("opt/small/a.txt");
  r.write("srv/scratch/junk");
  r.write("srv/scratch/keep.txt");
  r.write("usr/lib/x.pyc");
  r.write("usr/lib/x.py");
  r.write("home/me/proj/build/out.o");
  r.write("home/me/proj/main.py");
  r.write(".envsnapignore", "# scratch space\nsrv/scratch\n!srv/scratch/keep.txt\n**/*.pyc\n");
  r.write("home/me/proj/.envsnapignore", "build\n");
  PlanOptions o;
  o.includes = {"/var/log/train/**", "/opt/big/keep.txt"};
  o.excludes = {"/opt/big/**"};
  o.project_path = "/home/me/proj";
  auto plan = plan_of(r, json::object(), o);
  EXPECT_EQ(exclusions(plan), (Pairs{
                                  {"/home/me/proj/build", "excluded by /home/me/proj/.envsnapignore:1"},
                                  {"/opt/big/a.bin", "excluded by --exclude /opt/big/**"},
                                  {"/srv/scratch/junk", "excluded by .envsnapignore:2"},
                                  {"/usr/lib/x.pyc", "excluded by .envsnapignore:4"},
                                  {"/var/log/syslog", "logs"},
                              }));
  auto w = where(plan);
  for (const char* kept : {"var/log/train/run1.log", "opt/big/keep.txt", "opt/small/a.txt", "srv/scratch/keep.txt",
                           "usr/lib/x.py", "home/me/proj/main.py", ".envsnapignore"})
    EXPECT_TRUE(w.count(kept)) << kept;
  EXPECT_EQ(w["home/me/proj/main.py"], std::vector<std::string>{"project"});
  // Directories of excluded trees appear only as parents of what was included.
  EXPECT_TRUE(w.count("var/log/train"));
  EXPECT_TRUE(w.count("opt/big"));
}

TEST(ImagePlan, LayerAssignment) {
  TempRoot r;
  r.symlink("usr/bin", "bin");
  r.write("usr/bin/ls", std::string(100, 'l'));
  r.write("var/lib/dpkg/info/coreutils.list", "/.\n/bin\n/bin/ls\n/usr\n/usr/bin\n");
  r.write("usr/lib/x86_64-linux-gnu/libcudnn.so.8", std::string(200, 'c'));
  r.write("var/lib/dpkg/info/libcudnn8:amd64.list", "/.\n/usr\n/usr/lib\n/usr/lib/x86_64-linux-gnu/libcudnn.so.8\n");
  r.write("usr/local/cuda-12.2/lib64/libcudart.so.12", std::string(300, 'r'));
  const std::string site = "usr/local/lib/python3.11/dist-packages/";
  r.write(site + "bigpkg/__init__.py", std::string(2000, 'b'));
  r.write(site + "bigpkg/core.so", std::string(3000, 'b'));
  r.write(site + "bigpkg-1.0.dist-info/METADATA", "Name: bigpkg\n");
  const std::string record =
      "bigpkg/__init__.py,sha256=x,2000\nbigpkg/core.so,sha256=y,3000\n"
      "bigpkg-1.0.dist-info/METADATA,,\nbigpkg-1.0.dist-info/RECORD,,\n../../../bin/bigtool,sha256=z,10\n";
  r.write(site + "bigpkg-1.0.dist-info/RECORD", record);
  r.write("usr/local/bin/bigtool", "#!/bin/sh\n");
  r.write(site + "small/__init__.py", "s");
  r.write(site + "small-0.1.egg-info/top_level.txt", "small\n");
  r.write(site + "loose.py", "l");
  const std::string deb = "usr/lib/python3/dist-packages/";
  r.write(deb + "debpkg/__init__.py", std::string(4000, 'd'));
  r.write(deb + "debpkg-2.0.egg-info/PKG-INFO", "Name: debpkg\n");
  r.write(deb + "debpkg-2.0.egg-info/top_level.txt", "debpkg\n");
  r.write("usr/bin/debtool", "#!/usr/bin/python3\n");
  r.write("usr/share/debpkg/data.txt", "d");
  r.write("var/lib/dpkg/info/python3-debpkg.list",
          "/.\n/usr\n/usr/bin\n/usr/bin/debtool\n/usr/share\n/usr/share/debpkg\n/usr/share/debpkg/data.txt\n"
          "/usr/lib/python3/dist-packages/debpkg-2.0.egg-info\n"
          "/usr/lib/python3/dist-packages/debpkg-2.0.egg-info/PKG-INFO\n"
          "/usr/lib/python3/dist-packages/debpkg/__init__.py\n");
  r.write("usr/lib/x86_64-linux-gnu/libdebpkg.so.1", std::string(100, 'x'));
  r.write("var/lib/dpkg/info/libdebpkg1:amd64.list", "/.\n/usr\n/usr/lib/x86_64-linux-gnu/libdebpkg.so.1\n");
  r.write("var/lib/dpkg/status",
          "Package: coreutils\nStatus: install ok installed\nVersion: 9.1-1\n\n"
          "Package: libdebpkg1\nStatus: install ok installed\nSource: debsrc (2.0-1)\nVersion: 2.0-1+b1\n\n"
          "Package: python3-debpkg\nStatus: install ok installed\nSource: debsrc\nVersion: 2.0-1\n");
  r.write(deb + "single-1.0.egg-info", "Name: single\n");
  r.write(deb + "single/__init__.py", "1");
  r.write("home/me/proj/train.py", "p");
  r.write("opt/other/tool", "o");
  json lock = {
      {"python",
       {{"environments",
         {{{"path", "/usr/lib/python3/dist-packages"},
           {"distributions", {{{"name", "debpkg"}, {"version", "2.0"}}}}},
          {{"path", "/usr/local/lib/python3.11/dist-packages"},
           {"distributions", {{{"name", "bigpkg"}, {"version", "1.0"}}, {{"name", "small"}, {"version", "0.1"}}}}}}}}},
      {"cuda", {{"toolkits", {{{"path", "/usr/local/cuda-12.2"}, {"kind", "local"}, {"version", "12.2.140"}}}}}}};
  PlanOptions o;
  o.project_path = "/home/me/proj";
  o.size_threshold = 4000;
  auto plan = plan_of(r, lock, o);
  EXPECT_EQ(layer_names(plan),
            (std::vector<std::string>{"base-os", "gpu", "python-bigpkg", "python-debpkg", "python", "project", "rest"}));
  auto w = where(plan);
  auto in = [&](const std::string& path) { return w[path]; };
  using L = std::vector<std::string>;
  EXPECT_EQ(in("usr/bin/ls"), L{"base-os"});
  EXPECT_EQ(in("usr/lib/x86_64-linux-gnu/libcudnn.so.8"), L{"gpu"});
  EXPECT_EQ(in("usr/local/cuda-12.2/lib64/libcudart.so.12"), L{"gpu"});
  EXPECT_EQ(in(site + "bigpkg/__init__.py"), L{"python-bigpkg"});
  EXPECT_EQ(in(site + "bigpkg-1.0.dist-info/RECORD"), L{"python-bigpkg"});
  EXPECT_EQ(in("usr/local/bin/bigtool"), L{"python-bigpkg"});
  EXPECT_EQ(in(deb + "debpkg/__init__.py"), L{"python-debpkg"});
  EXPECT_EQ(in("usr/bin/debtool"), L{"python-debpkg"});
  EXPECT_EQ(in("usr/share/debpkg"), L{"python-debpkg"});
  EXPECT_EQ(in("usr/bin"), (L{"base-os", "python-debpkg"}));
  EXPECT_EQ(in("usr/lib/x86_64-linux-gnu/libdebpkg.so.1"), L{"python-debpkg"});
  EXPECT_EQ(in(deb + "single-1.0.egg-info"), L{"python"});
  EXPECT_EQ(in(deb + "single/__init__.py"), L{"python"});
  EXPECT_EQ(in(site + "small/__init__.py"), L{"python"});
  EXPECT_EQ(in(site + "small-0.1.egg-info/top_level.txt"), L{"python"});
  EXPECT_EQ(in(site + "loose.py"), L{"python"});
  EXPECT_EQ(in("home/me/proj/train.py"), L{"project"});
  EXPECT_EQ(in("opt/other/tool"), L{"rest"});
  EXPECT_EQ(in("bin"), L{"base-os"});
  EXPECT_EQ(layer(plan, "python-bigpkg")->bytes, 2000u + 3000 + 13 + record.size() + 10);
  EXPECT_EQ(layer(plan, "python-debpkg")->bytes, 4000u + 19 + 13 + 7 + 100 + 1);
  EXPECT_EQ(layer(plan, "gpu")->bytes, 500u);

  // Every layer holds the parents of its entries, and is in path order with '/' lowest.
  for (const auto& l : plan.layers) {
    std::set<std::string> seen;
    for (size_t i = 0; i < l.entries.size(); ++i) {
      const auto& p = l.entries[i].path;
      if (auto slash = p.rfind('/'); slash != std::string::npos) {
        EXPECT_TRUE(seen.count(p.substr(0, slash))) << l.name << ": " << p;
      }
      if (i > 0) {
        auto a = l.entries[i - 1].path, b = p;
        std::replace(a.begin(), a.end(), '/', '\x01');
        std::replace(b.begin(), b.end(), '/', '\x01');
        EXPECT_LT(a, b) << l.name;
      }
      seen.insert(p);
    }
  }
  auto* big = layer(plan, "python-bigpkg");
  std::vector<std::string> paths;
  for (const auto& e : big->entries) paths.push_back(e.path);
  EXPECT_EQ(paths, (std::vector<std::string>{"usr", "usr/local", "usr/local/bin", "usr/local/bin/bigtool",
                                             "usr/local/lib", "usr/local/lib/python3.11",
                                             "usr/local/lib/python3.11/dist-packages",
                                             "usr/local/lib/python3.11/dist-packages/bigpkg",
                                             "usr/local/lib/python3.11/dist-packages/bigpkg/__init__.py",
                                             "usr/local/lib/python3.11/dist-packages/bigpkg/core.so",
                                             "usr/local/lib/python3.11/dist-packages/bigpkg-1.0.dist-info",
                                             "usr/local/lib/python3.11/dist-packages/bigpkg-1.0.dist-info/METADATA",
                                             "usr/local/lib/python3.11/dist-packages/bigpkg-1.0.dist-info/RECORD"}));
}

TEST(ImagePlan, HardLinkGroupStaysInOneLayer) {
  TempRoot r;
  const std::string site = "usr/lib/python3/dist-packages/";
  r.write(site + "pkg/data.bin", std::string(50, 'h'));
  r.hardlink(site + "pkg/data.bin", "opt/copy.bin");
  r.hardlink(site + "pkg/data.bin", "usr/share/copy.bin");
  json lock = {{"python", {{"environments", {{{"path", "/usr/lib/python3/dist-packages"}}}}}}};
  auto plan = plan_of(r, lock);
  // The site directory itself is an entry of the python layer; the linked file is not.
  EXPECT_EQ(layer_names(plan), (std::vector<std::string>{"python", "rest"}));
  auto w = where(plan);
  EXPECT_EQ(w[site + "pkg/data.bin"], std::vector<std::string>{"rest"});
  EXPECT_EQ(entry(plan, "opt/copy.bin")->hardlink_to, "");
  EXPECT_EQ(entry(plan, site + "pkg/data.bin")->hardlink_to, "opt/copy.bin");
  EXPECT_EQ(entry(plan, "usr/share/copy.bin")->hardlink_to, "opt/copy.bin");
  EXPECT_EQ(layer(plan, "rest")->bytes, 50u);
}

TEST(ImagePlan, UnreadableDirectoryIsAWarning) {
  TempRoot r;
  r.write("srv/locked/x");
  fs::permissions(r.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                fs::perms::others_read | fs::perms::others_exec);
  fs::permissions(r.path() / "srv/locked", fs::perms::none);
  // Root reads every directory: the plan runs in a child as an unprivileged user.
  auto body = [&] {
    if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) std::_Exit(3);
    probe::Warnings warnings;
    auto plan = plan_of(r, json::object(), PlanOptions{}, warnings);
    bool ok = warnings.items().size() == 1 && warnings.items()[0].find("/srv/locked") != std::string::npos &&
              entry(plan, "srv/locked") && !entry(plan, "srv/locked/x");
    for (const auto& w : warnings.items()) std::fprintf(stderr, "warning: %s\n", w.c_str());
    std::_Exit(ok ? 0 : 1);
  };
  EXPECT_EXIT(body(), ::testing::ExitedWithCode(0), "");
  fs::permissions(r.path() / "srv/locked", fs::perms::owner_all);
}

TEST(ImagePlan, AtMostSixtyLayers) {
  TempRoot r;
  const std::string site = "opt/venv/lib/python3.11/site-packages/";
  json dists = json::array();
  for (int i = 1; i <= 58; ++i) {
    auto name = fmt::format("p{:02}", i);
    r.write(site + name + ".py", std::string(static_cast<size_t>(i) * 10, 'x'));
    r.write(site + name + "-1.0.dist-info/RECORD", name + ".py,,\n");
    dists.push_back({{"name", name}, {"version", "1.0"}});
  }
  json lock = {{"python", {{"environments", {{{"path", "/" + site}, {"distributions", dists}}}}}}};
  PlanOptions o;
  o.size_threshold = 1;
  auto plan = plan_of(r, lock, o);
  std::vector<std::string> expected;
  for (int i = 4; i <= 58; ++i) expected.push_back(fmt::format("python-p{:02}", i));
  expected.push_back("python");
  EXPECT_EQ(layer_names(plan), expected);
  EXPECT_EQ(where(plan)[site + "p01.py"], std::vector<std::string>{"python"});
  EXPECT_EQ(where(plan)[site + "p04.py"], std::vector<std::string>{"python-p04"});
}

TEST(ImagePlan, ProjectInsideADefaultExclusionIsPacked) {
  TempRoot r;
  r.write("tmp/work/proj/train.py", "p");
  r.write("tmp/work/proj/build/x.o", "o");
  r.write("tmp/work/other.txt", "t");
  r.write("tmp/work/proj/.envsnapignore", "build\n");
  PlanOptions o;
  o.project_path = "/tmp/work/proj";
  auto plan = plan_of(r, json::object(), o);
  EXPECT_EQ(exclusions(plan), (Pairs{{"/tmp/work/other.txt", "temporary files"},
                                     {"/tmp/work/proj/build", "excluded by /tmp/work/proj/.envsnapignore:1"}}));
  EXPECT_EQ(layer_names(plan), (std::vector<std::string>{"project"}));
  EXPECT_EQ(where(plan)["tmp/work/proj/train.py"], std::vector<std::string>{"project"});
  EXPECT_EQ(where(plan)["tmp/work"], std::vector<std::string>{"project"});
}
