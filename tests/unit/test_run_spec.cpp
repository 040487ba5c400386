#include <gtest/gtest.h>

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "envsnap/run/bundle.hpp"
#include "envsnap/run/checks.hpp"
#include "envsnap/run/spec.hpp"

namespace envsnap::run {
namespace {

TEST(RunSpec, VolumeForms) {
  auto v = parse_volume("/data:/workspace/data:ro", "/home/me");
  ASSERT_TRUE(v) << v.message();
  EXPECT_EQ(v->source, "/data");
  EXPECT_EQ(v->destination, "/workspace/data");
  EXPECT_TRUE(v->read_only);
  v = parse_volume("./ckpt/:/out/", "/home/me/yolo");
  ASSERT_TRUE(v) << v.message();
  EXPECT_EQ(v->source, "/home/me/yolo/ckpt");
  EXPECT_EQ(v->destination, "/out");
  EXPECT_FALSE(v->read_only);
  v = parse_volume("../x:/y:rw", "/a/b");
  ASSERT_TRUE(v);
  EXPECT_EQ(v->source, "/a/x");
}

TEST(RunSpec, VolumeErrorsNameTheFlag) {
  for (const char* bad : {"data", "named:/x", "/a:relative", "/a:/", "/a:/b:rx", "/a:/b:ro:x", ":/b", "/a:/b/../c",
                          "~/a:/b"}) {
    auto v = parse_volume(bad, "/");
    ASSERT_FALSE(v) << bad;
    EXPECT_NE(v.message().find(std::string("-v ") + bad), std::string::npos) << v.message();
  }
}

TEST(RunSpec, PortForms) {
  auto p = parse_port("6006");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->host_port, 6006);
  EXPECT_EQ(p->container_port, 6006);
  EXPECT_EQ(p->host_ip, "");
  p = parse_port("8080:80/tcp");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->host_port, 8080);
  EXPECT_EQ(p->container_port, 80);
  p = parse_port("127.0.0.1:16006:6006");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->host_ip, "127.0.0.1");
  EXPECT_EQ(p->host_port, 16006);
  p = parse_port("[::1]:9000:90");
  ASSERT_TRUE(p) << p.message();
  EXPECT_EQ(p->host_ip, "::1");
  EXPECT_EQ(p->container_port, 90);
}

TEST(RunSpec, PortErrors) {
  for (const char* bad : {"", "0", "65536", "80:http", "1:2:3:4", "80/udp", "80/xyz", "8000-8010:8000-8010", "[::1:80:80",
                          "a.b.c.d:1:2:3"}) {
    auto p = parse_port(bad);
    EXPECT_FALSE(p) << bad;
  }
}

TEST(RunSpec, Sizes) {
  EXPECT_EQ(*parse_size("64m", "--shm-size"), 64u << 20);
  EXPECT_EQ(*parse_size("8G", "--shm-size"), uint64_t{8} << 30);
  EXPECT_EQ(*parse_size("1.5g", "--shm-size"), uint64_t{3} << 29);
  EXPECT_EQ(*parse_size("4096", "--shm-size"), 4096u);
  EXPECT_EQ(*parse_size("512kb", "--shm-size"), 512u << 10);
  for (const char* bad : {"", "m", "-1g", "0", "lots", "1x", "nan", "1e400g"}) {
    auto r = parse_size(bad, "--shm-size");
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.message().find("--shm-size"), std::string::npos);
  }
}

TEST(RunSpec, Ulimits) {
  auto u = parse_ulimit("nofile=1024:2048");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->name, "RLIMIT_NOFILE");
  EXPECT_EQ(u->soft, 1024u);
  EXPECT_EQ(u->hard, 2048u);
  u = parse_ulimit("memlock=-1");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->soft, UINT64_MAX);
  EXPECT_EQ(u->hard, UINT64_MAX);
  u = parse_ulimit("STACK=67108864");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->name, "RLIMIT_STACK");
  for (const char* bad : {"nofile", "files=1", "nofile=2:1", "nofile=a", "nofile=1:2:3"}) EXPECT_FALSE(parse_ulimit(bad)) << bad;
}

TEST(RunSpec, Users) {
  auto u = parse_user("1000:100");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->user, "1000");
  EXPECT_EQ(u->group, "100");
  u = parse_user("trainer");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->group, "");
  for (const char* bad : {"", ":1", "1:", "a:b:c"}) EXPECT_FALSE(parse_user(bad)) << bad;
}

TEST(RunSpec, EnvironmentLayers) {
  std::vector<std::string> host = {"HOME=/root", "WANDB_MODE=offline"};
  auto e = parse_env("A=1=2", host);
  ASSERT_TRUE(e);
  EXPECT_EQ(**e, "A=1=2");
  e = parse_env("WANDB_MODE", host);
  ASSERT_TRUE(e);
  EXPECT_EQ(**e, "WANDB_MODE=offline");
  e = parse_env("ABSENT", host);
  ASSERT_TRUE(e);
  EXPECT_FALSE(e->has_value());
  EXPECT_FALSE(parse_env("=x", host));
  EXPECT_FALSE(parse_env("A B=x", host));

  std::vector<std::string> env = {"PATH=/usr/bin", "LR=0.1"};
  merge_env(env, {"LR=0.01", "EPOCHS=3"});
  EXPECT_EQ(env, (std::vector<std::string>{"PATH=/usr/bin", "LR=0.01", "EPOCHS=3"}));
  EXPECT_EQ(env_value(env, "LR"), "0.01");
  EXPECT_EQ(env_value(env, "L"), std::nullopt);
}

TEST(RunSpec, EnvFile) {
  char dir[] = "/tmp/envsnap-envfile-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::filesystem::path f = std::filesystem::path(dir) / "train.env";
  std::ofstream(f) << "# comment\n\nA=1\r\n  B=spaced\nHOME\nBAD LINE=1\n";
  auto r = read_env_file(f, {"HOME=/home/me"});
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("line 6"), std::string::npos) << r.message();
  EXPECT_NE(r.message().find(f.string()), std::string::npos);
  std::ofstream(f) << "# comment\n\nA=1\r\nHOME\n";
  r = read_env_file(f, {"HOME=/home/me"});
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(*r, (std::vector<std::string>{"A=1", "HOME=/home/me"}));
  EXPECT_FALSE(read_env_file(std::filesystem::path(dir) / "missing.env", {}));
  std::filesystem::remove_all(dir);
}

TEST(RunBundle, ConfigFollowsTheSpec) {
  BundleSpec s;
  s.args = {"/dev/init", "--", "python3", "train.py"};
  s.env = {"PATH=/usr/bin"};
  s.cwd = "/work";
  s.uid = 1000;
  s.gid = 1000;
  s.hostname = "trainer";
  s.shm_bytes = 1 << 30;
  s.init_path = "/usr/bin/tini-static";
  s.volumes = {{"/data", "/data", true}};
  s.devices = {{"/dev/nvidia0", 'c', 195, 0, 0666, 0, 0}};
  s.device_mounts = {{"/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05", "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05", true}};
  s.create_container_hooks = {{"/sbin/ldconfig", {"ldconfig", "-r", "/b/rootfs"}}};
  auto c = bundle_config(s);
  EXPECT_EQ(c["ociVersion"], "1.0.2");
  EXPECT_EQ(c["process"]["user"]["uid"], 1000);
  EXPECT_EQ(c["process"]["cwd"], "/work");
  EXPECT_EQ(c["hostname"], "trainer");
  bool has_net = false, has_ipc = false;
  for (auto& ns : c["linux"]["namespaces"]) {
    has_net = has_net || ns["type"] == "network";
    has_ipc = has_ipc || ns["type"] == "ipc";
  }
  EXPECT_FALSE(has_net);  // the host's network by default
  EXPECT_TRUE(has_ipc);
  auto find = [&](const std::string& dst) {
    for (auto& m : c["mounts"])
      if (m["destination"] == dst) return m;
    return nlohmann::json();
  };
  EXPECT_EQ(find("/dev/shm")["options"].back(), "size=1073741824");
  EXPECT_EQ(find("/data")["options"], (nlohmann::json{"rbind", "rprivate", "ro", "nosuid", "nodev"}));
  EXPECT_EQ(find("/dev/init")["source"], "/usr/bin/tini-static");
  EXPECT_EQ(find("/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05")["options"][2], "ro");
  EXPECT_EQ(find("/sys")["type"], "sysfs");
  EXPECT_EQ(c["linux"]["devices"][0]["major"], 195);
  EXPECT_EQ(c["linux"]["resources"]["devices"][0]["allow"], false);
  EXPECT_EQ(c["linux"]["resources"]["devices"][1]["major"], 195);
  EXPECT_EQ(c["hooks"]["createContainer"][0]["path"], "/sbin/ldconfig");

  s.host_network = false;
  s.host_ipc = true;
  c = bundle_config(s);
  has_net = has_ipc = false;
  for (auto& ns : c["linux"]["namespaces"]) {
    has_net = has_net || ns["type"] == "network";
    has_ipc = has_ipc || ns["type"] == "ipc";
  }
  EXPECT_TRUE(has_net);
  EXPECT_FALSE(has_ipc);
  EXPECT_EQ(find("/sys")["type"], "sysfs");
  EXPECT_EQ(find("/dev/shm")["type"], "bind");
}

TEST(RunChecks, DriverVersusCuda) {
  EXPECT_LT(compare_versions("535.104.05", "580"), 0);
  EXPECT_EQ(compare_versions("580.0", "580"), 0);
  EXPECT_GT(compare_versions("525.60.13", "525.60.2"), 0);
  nlohmann::json lock = {{"torch", {{{"build", "cuda"}, {"cuda", "12.1"}}}},
                         {"cuda", {{"toolkits", {{{"version", "13.0.96"}}}}}},
                         {"nvidia", {{"gpus", {{{"index", 0}}}}}}};
  EXPECT_EQ(required_cuda(lock), (std::vector<std::string>{"12.1", "13.0"}));
  HostGpus host{true, "535.104.05", 2};
  auto f = check_host({lock, host, true, false});
  ASSERT_EQ(f.size(), 1u);  // 12.1 runs on 535 (minor-version compatibility), 13.0 does not
  EXPECT_TRUE(f[0].error);
  EXPECT_NE(f[0].message.find("CUDA 13.0"), std::string::npos);
  EXPECT_NE(f[0].message.find("580"), std::string::npos);
  host.driver_version = "580.65.06";
  EXPECT_TRUE(check_host({lock, host, true, false}).empty());
  HostGpus none;
  f = check_host({lock, none, false, false});
  ASSERT_EQ(f.size(), 1u);
  EXPECT_NE(f[0].message.find("captured with 1 GPU"), std::string::npos);
  EXPECT_TRUE(check_host({lock, none, false, true}).empty());  // --gpus none: accepted
  f = check_host({lock, none, true, false});
  EXPECT_EQ(f.size(), 2u);  // no driver, and no GPU
  EXPECT_TRUE(check_host({nlohmann::json::object(), none, false, false}).empty());
}

}  // namespace
}  // namespace envsnap::run
