#include "envsnap/run/checks.hpp"

#include <charconv>
#include <functional>

#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::run {

using nlohmann::json;

int compare_versions(const std::string& a, const std::string& b) {
  auto pa = util::split(a, '.'), pb = util::split(b, '.');
  for (size_t i = 0; i < std::max(pa.size(), pb.size()); ++i) {
    unsigned long va = 0, vb = 0;
    if (i < pa.size()) std::from_chars(pa[i].data(), pa[i].data() + pa[i].size(), va);
    if (i < pb.size()) std::from_chars(pb[i].data(), pb[i].data() + pb[i].size(), vb);
    if (va != vb) return va < vb ? -1 : 1;
  }
  return 0;
}

std::string minimum_driver_for_cuda(int major) {
  switch (major) {
    case 13: return "580";
    case 12: return "525.60.13";
    case 11: return "450.80.02";
    default: return "";
  }
}

std::vector<std::string> required_cuda(const json& lock) {
  std::vector<std::string> out;
  auto add = [&](const json& v) {
    if (!v.is_string()) return;
    std::string version = v.get<std::string>();
    auto parts = util::split(version, '.');
    if (parts.size() < 2) return;
    std::string mm = fmt::format("{}.{}", parts[0], parts[1]);
    for (auto& o : out)
      if (o == mm) return;
    out.push_back(mm);
  };
  if (lock.contains("torch") && lock["torch"].is_array())
    for (const auto& t : lock["torch"])
      if (t.is_object() && t.value("build", "") == "cuda" && t.contains("cuda")) add(t["cuda"]);
  if (lock.contains("cuda") && lock["cuda"].is_object() && lock["cuda"].contains("toolkits") &&
      lock["cuda"]["toolkits"].is_array())
    for (const auto& t : lock["cuda"]["toolkits"])
      if (t.is_object() && t.contains("version")) add(t["version"]);
  return out;
}

namespace {

size_t captured_gpus(const json& lock) {
  if (!lock.contains("nvidia") || !lock["nvidia"].is_object()) return 0;
  const auto& n = lock["nvidia"];
  return n.contains("gpus") && n["gpus"].is_array() ? n["gpus"].size() : 0;
}

void rule_gpu_present(const CheckInput& in, std::vector<Finding>& out) {
  size_t captured = captured_gpus(in.lock);
  if (captured == 0 || in.gpus_refused) return;
  if (in.host.gpu_count == 0)
    out.push_back({true, fmt::format("the snapshot was captured with {} GPU(s) but this host has none (no "
                                     "/dev/nvidia0); run it on a GPU host, or give --gpus none to run without a GPU",
                                     captured)});
}

void rule_driver_for_cuda(const CheckInput& in, std::vector<Finding>& out) {
  if (!in.gpus_requested || !in.host.driver_found || in.host.driver_version.empty()) return;
  for (const auto& cuda : required_cuda(in.lock)) {
    int major = 0;
    std::from_chars(cuda.data(), cuda.data() + cuda.size(), major);
    std::string floor = minimum_driver_for_cuda(major);
    if (floor.empty()) continue;
    if (compare_versions(in.host.driver_version, floor) < 0)
      out.push_back({true, fmt::format("the snapshot needs CUDA {}, which needs an NVIDIA driver {} or newer; this "
                                       "host has {}: upgrade the driver (or run an older snapshot)",
                                       cuda, floor, in.host.driver_version)});
  }
}

void rule_driver_present(const CheckInput& in, std::vector<Finding>& out) {
  if (in.gpus_requested && !in.host.driver_found)
    out.push_back({true, "--gpus was given but no NVIDIA driver was found on this host (no libcuda.so.<version> in "
                         "the library cache or the driver directories); install the driver, or give --gpus none"});
}

}  // namespace

std::vector<Finding> check_host(const CheckInput& input) {
  static const std::vector<std::function<void(const CheckInput&, std::vector<Finding>&)>> rules = {
      rule_driver_present, rule_gpu_present, rule_driver_for_cuda};
  std::vector<Finding> out;
  for (const auto& rule : rules) rule(input, out);
  return out;
}

}  // namespace envsnap::run
