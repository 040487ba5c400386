#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "envsnap/gpu/cdi.hpp"

using namespace envsnap;
using namespace envsnap::gpu;
using nlohmann::json;

namespace {

DeviceNode dev(const std::string& path, int64_t maj, int64_t min, uint32_t mode = 0666) {
  return {path, "/host" + path, 'c', maj, min, mode, 0, 0};
}

// Two GPUs, one control node, one library with its soname link and one binary.
DriverDiscovery sample(bool uuids) {
  DriverDiscovery d;
  d.driver_root = "/";
  d.dev_root = "/host";
  d.driver_version = "535.104.05";
  d.gpus = {{0, uuids ? "GPU-aaaa" : "", dev("/dev/nvidia0", 195, 0)},
            {1, uuids ? "GPU-bbbb" : "", dev("/dev/nvidia1", 195, 1)}};
  d.control_nodes = {dev("/dev/nvidiactl", 195, 255)};
  d.mounts = {{"/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi", k_file_mount_options},
              {"/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05", "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05",
               k_file_mount_options}};
  d.links = {{"/usr/lib/x86_64-linux-gnu", "libcuda.so.1", "libcuda.so.535.104.05"}};
  d.library_dirs = {"/usr/lib/x86_64-linux-gnu"};
  return d;
}

json node_json(const std::string& path, int maj, int min) {
  return {{"path", path}, {"hostPath", "/host" + path}, {"type", "c"}, {"major", maj}, {"minor", min},
          {"fileMode", 438}, {"uid", 0}, {"gid", 0}};
}

json mount_json(const std::string& container, const std::string& host) {
  return {{"hostPath", host}, {"containerPath", container}, {"options", {"ro", "nosuid", "nodev", "bind"}},
          {"type", "bind"}};
}

TEST(Cdi, SpecListsEveryGpuByIndexAndAll) {
  auto spec = cdi_spec(sample(false));
  ASSERT_TRUE(spec.ok()) << spec.message();
  const std::string lib = "/usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05";
  json expected = {
      {"cdiVersion", "0.5.0"},
      {"kind", "nvidia.com/gpu"},
      {"devices",
       {{{"name", "0"}, {"containerEdits", {{"deviceNodes", {node_json("/dev/nvidia0", 195, 0)}}}}},
        {{"name", "1"}, {"containerEdits", {{"deviceNodes", {node_json("/dev/nvidia1", 195, 1)}}}}},
        {{"name", "all"},
         {"containerEdits",
          {{"deviceNodes", {node_json("/dev/nvidia0", 195, 0), node_json("/dev/nvidia1", 195, 1)}}}}}}},
      {"containerEdits",
       {{"env", {"NVIDIA_VISIBLE_DEVICES=void"}},
        {"deviceNodes", {node_json("/dev/nvidiactl", 195, 255)}},
        {"mounts",
         {mount_json("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"),
          mount_json("/usr/lib/x86_64-linux-gnu/libcuda.so.1", lib), mount_json(lib, lib)}}}},
  };
  EXPECT_EQ(*spec, expected) << spec->dump(2);
}

TEST(Cdi, UuidsAddDevicesNamedByUuid) {
  auto spec = cdi_spec(sample(true));
  ASSERT_TRUE(spec.ok()) << spec.message();
  std::vector<std::string> names;
  for (const auto& d : (*spec)["devices"]) names.push_back(d["name"]);
  EXPECT_EQ(names, (std::vector<std::string>{"0", "1", "GPU-aaaa", "GPU-bbbb", "all"}));
  EXPECT_EQ((*spec)["devices"][2]["containerEdits"]["deviceNodes"][0]["path"], "/dev/nvidia0");
  EXPECT_EQ((*spec)["devices"][3]["containerEdits"]["deviceNodes"][0]["path"], "/dev/nvidia1");
}

TEST(Cdi, MinimumVersionFollowsTheSpecChangelog) {
  json base = {{"kind", "vendor.com/dev"},
               {"devices", {{{"name", "a"}, {"containerEdits", {{"env", {"X=1"}}}}}}}};
  EXPECT_EQ(minimum_cdi_version(base), "0.3.0");
  auto v = base;
  v["containerEdits"]["mounts"] = {{{"hostPath", "/a"}, {"containerPath", "/a"}, {"type", "bind"}}};
  EXPECT_EQ(minimum_cdi_version(v), "0.4.0");
  v = base;
  v["devices"][0]["name"] = "0";
  EXPECT_EQ(minimum_cdi_version(v), "0.5.0");
  v = base;
  v["devices"][0]["containerEdits"]["deviceNodes"] = {{{"path", "/dev/x"}, {"hostPath", "/h/dev/x"}}};
  EXPECT_EQ(minimum_cdi_version(v), "0.5.0");
  v = base;
  v["containerEdits"]["deviceNodes"] = {{{"path", "/dev/x"}, {"fileMode", 438}}};
  EXPECT_EQ(minimum_cdi_version(v), "0.3.0");
  v = base;
  v["annotations"] = {{"a", "b"}};
  EXPECT_EQ(minimum_cdi_version(v), "0.6.0");
  v = base;
  v["devices"][0]["annotations"] = {{"a", "b"}};
  EXPECT_EQ(minimum_cdi_version(v), "0.6.0");
  v = base;
  v["kind"] = "vendor.com/dev.class";
  EXPECT_EQ(minimum_cdi_version(v), "0.6.0");
  v = base;
  v["containerEdits"]["additionalGids"] = {44};
  EXPECT_EQ(minimum_cdi_version(v), "0.7.0");
  v = base;
  v["devices"][0]["containerEdits"]["intelRdt"] = {{"closID", "x"}};
  EXPECT_EQ(minimum_cdi_version(v), "0.7.0");
}

std::vector<int> indices(const Selection& s) {
  std::vector<int> out;
  for (const auto& g : s.gpus) out.push_back(g.index);
  return out;
}

std::vector<std::string> node_paths(const Selection& s) {
  std::vector<std::string> out;
  for (const auto& n : s.edits.device_nodes) out.push_back(n.path);
  return out;
}

TEST(Cdi, SelectGpusLikeDocker) {
  auto d = sample(true);
  struct Case {
    std::string flag;
    std::vector<int> gpus;
  };
  for (const auto& c : std::vector<Case>{{"all", {0, 1}},
                                         {"none", {}},
                                         {"1", {0}},
                                         {"2", {0, 1}},
                                         {"device=1", {1}},
                                         {"device=1,0", {1, 0}},
                                         {"\"device=0,1\"", {0, 1}},
                                         {"device=GPU-bbbb", {1}},
                                         {"device=0,GPU-aaaa", {0}}}) {
    auto s = select_gpus(d, c.flag);
    ASSERT_TRUE(s.ok()) << c.flag << ": " << s.message();
    EXPECT_EQ(indices(*s), c.gpus) << c.flag;
    std::vector<std::string> nodes = {"/dev/nvidiactl"};
    for (int i : c.gpus) nodes.push_back("/dev/nvidia" + std::to_string(i));
    EXPECT_EQ(node_paths(*s), nodes) << c.flag;
    EXPECT_EQ(s->edits.env, (std::vector<std::string>{"NVIDIA_VISIBLE_DEVICES=void"}));
    EXPECT_EQ(s->edits.mounts.size(), 2u) << c.flag;
    ASSERT_EQ(s->edits.links.size(), 1u) << c.flag;
    EXPECT_EQ(s->edits.links[0].name, "libcuda.so.1");
  }
}

TEST(Cdi, SelectGpusNamesWhatIsMissing) {
  auto d = sample(true);
  struct Case {
    std::string flag, message;
  };
  const std::string have = " (this host's GPUs: 0 (GPU-aaaa), 1 (GPU-bbbb))";
  for (const auto& c : std::vector<Case>{
           {"3", "--gpus 3: asks for 3 GPUs" + have},
           {"0", "--gpus 0: ask for at least one GPU, or for none" + have},
           {"device=2", "--gpus device=2: no GPU 2" + have},
           {"device=GPU-cccc", "--gpus device=GPU-cccc: no GPU GPU-cccc" + have},
           {"device=", "--gpus device=: no device listed" + have},
           {"device=0,,1", "--gpus device=0,,1: no GPU \"\"" + have},
           {"count=2", "--gpus count=2: expected all, none, a count or device=INDEX|UUID[,...]"},
       }) {
    auto s = select_gpus(d, c.flag);
    ASSERT_FALSE(s.ok()) << c.flag;
    EXPECT_EQ(s.message(), c.message);
  }
  d.gpus.clear();
  auto s = select_gpus(d, "all");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "--gpus all: no /dev/nvidia<N> device nodes under /host (this host's GPUs: none)");
  s = select_gpus(d, "none");
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(node_paths(*s), (std::vector<std::string>{"/dev/nvidiactl"}));
}

TEST(Cdi, YamlIsBlockStyleWithQuotedStrings) {
  json doc = {{"a", "x: y"},
              {"list", {"one", 2, true}},
              {"objs", {{{"k", "v"}, {"n", {1, 2}}}, {{"k", "w"}}}},
              {"empty", json::array()},
              {"nested", {{1, 2}, {3}}},
              {"odd key", "line\nbreak \"quoted\""}};
  EXPECT_EQ(to_yaml(doc),
            "a: \"x: y\"\n"
            "empty: []\n"
            "list:\n"
            "- \"one\"\n"
            "- 2\n"
            "- true\n"
            "nested:\n"
            "-\n"
            "  - 1\n"
            "  - 2\n"
            "-\n"
            "  - 3\n"
            "objs:\n"
            "- k: \"v\"\n"
            "  n:\n"
            "  - 1\n"
            "  - 2\n"
            "- k: \"w\"\n"
            "\"odd key\": \"line\\nbreak \\\"quoted\\\"\"\n");
}

}  // namespace
