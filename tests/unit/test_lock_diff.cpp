#include <gtest/gtest.h>

#include "envsnap/lock/diff.hpp"

using namespace envsnap;
using nlohmann::json;

static json base() {
  return json::parse(R"({
    "nvidia": {"source": "nvml", "driver": "535.104.05", "gpus": []},
    "cuda": {"toolkits": [{"path": "/usr/local/cuda-12.1", "kind": "local", "version": "12.1.105", "source": "version.json"}],
             "cudnn": [], "nccl": [], "tensorrt": []},
    "torch": [],
    "python": {"environments": [{"path": "/usr/lib/python3/dist-packages", "kind": "system", "python": "3.11",
      "distributions": [{"name": "numpy", "version": "1.24.2"}, {"name": "requests", "version": "2.28.1"},
                        {"name": "torch", "version": "1.13.1"}]}]},
    "system": {"os": {"id": "debian", "version_id": "12"}, "arch": "x86_64", "glibc": "2.36",
               "packages": {"dpkg": [{"name": "bash", "version": "5.2.15-2+b2", "arch": "amd64"}]}},
    "env": {},
    "data": [{"path": "/srv/data", "role": "data", "files": 2, "bytes": 10, "digest": "sha256:aa"}]
  })");
}

TEST(Diff, EqualLocksHaveNoChanges) { EXPECT_TRUE(lock::diff_locks(base(), base()).empty()); }

TEST(Diff, ChangesAreRankedByRisk) {
  auto a = base();
  auto b = base();
  b["data"][0]["digest"] = "sha256:bb";
  b["system"]["packages"]["dpkg"][0]["version"] = "5.2.15-2+b3";
  b["python"]["environments"][0]["distributions"][1]["version"] = "2.31.0";
  b["python"]["environments"][0]["distributions"][0]["version"] = "1.26.4";
  b["cuda"]["toolkits"][0]["version"] = "12.1.106";
  b["env"]["CUDA_VISIBLE_DEVICES"] = "0";
  auto changes = lock::diff_locks(a, b);
  ASSERT_EQ(changes.size(), 6u);
  EXPECT_EQ(changes[0].section, "cuda");
  EXPECT_EQ(changes[0].rank, 1);
  EXPECT_EQ(changes[0].where, "/usr/local/cuda-12.1");
  EXPECT_EQ(changes[1].section, "env");
  EXPECT_EQ(changes[1].change, "added");
  EXPECT_EQ(changes[2].name, "numpy");
  EXPECT_EQ(changes[2].rank, 2);
  EXPECT_EQ(*changes[2].old_value, "1.24.2");
  EXPECT_EQ(*changes[2].new_value, "1.26.4");
  EXPECT_EQ(changes[3].name, "requests");
  EXPECT_EQ(changes[3].rank, 3);
  EXPECT_EQ(changes[4].section, "dpkg");
  EXPECT_EQ(changes[4].name, "bash");
  EXPECT_EQ(changes[4].rank, 4);
  EXPECT_EQ(changes[5].section, "data");
  EXPECT_EQ(changes[5].rank, 6);
  EXPECT_EQ(*changes[5].new_value, "sha256:bb");
}

TEST(Diff, AddedAndRemovedDistributions) {
  auto a = base();
  auto b = base();
  b["python"]["environments"][0]["distributions"].erase(2);
  b["python"]["environments"][0]["distributions"].push_back({{"name", "Opencv_Python"}, {"version", "4.8.0"}});
  auto changes = lock::diff_locks(a, b);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].name, "torch");
  EXPECT_EQ(changes[0].change, "removed");
  EXPECT_FALSE(changes[0].new_value.has_value());
  EXPECT_EQ(changes[1].name, "opencv-python");
  EXPECT_EQ(changes[1].rank, 2);
  EXPECT_EQ(changes[1].change, "added");
  auto text = lock::format_changes(changes);
  EXPECT_NE(text.find("[1 gpu] python torch (/usr/lib/python3/dist-packages): 1.13.1 -> (absent)"), std::string::npos)
      << text;
}

TEST(Diff, DriverAndRecordOnlyChanges) {
  auto a = base();
  auto b = base();
  b["nvidia"]["driver"] = "550.54.15";
  b["python"]["environments"][0]["distributions"][1]["record_digest"] = "sha256:0123456789abcdef";
  auto changes = lock::diff_locks(a, b);
  ASSERT_EQ(changes.size(), 2u);
  EXPECT_EQ(changes[0].name, "driver");
  EXPECT_EQ(changes[1].name, "requests");
  EXPECT_EQ(*changes[1].new_value, "2.28.1 [RECORD 0123456789ab]");
}
