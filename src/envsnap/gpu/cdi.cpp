#include "envsnap/gpu/cdi.hpp"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::gpu {

namespace {

using nlohmann::json;

constexpr std::string_view k_kind = "nvidia.com/gpu";
constexpr std::string_view k_visible_void = "NVIDIA_VISIBLE_DEVICES=void";

json node_json(const DeviceNode& n) {
  return {{"path", n.path},   {"hostPath", n.host_path}, {"type", std::string(1, n.type)},
          {"major", n.major}, {"minor", n.minor},        {"fileMode", n.mode},
          {"uid", n.uid},     {"gid", n.gid}};
}

json mount_json(const Mount& m) {
  return {{"hostPath", m.host_path}, {"containerPath", m.container_path}, {"options", m.options}, {"type", "bind"}};
}

json gpu_device(const std::string& name, const std::vector<GpuNode>& gpus) {
  json nodes = json::array();
  for (const auto& g : gpus) nodes.push_back(node_json(g.node));
  return {{"name", name}, {"containerEdits", {{"deviceNodes", std::move(nodes)}}}};
}

std::string gpu_list(const DriverDiscovery& driver) {
  std::vector<std::string> names;
  for (const auto& g : driver.gpus) names.push_back(g.uuid.empty() ? std::to_string(g.index)
                                                                   : fmt::format("{} ({})", g.index, g.uuid));
  return names.empty() ? std::string("none") : fmt::format("{}", fmt::join(names, ", "));
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The edits every container with GPUs gets, whichever GPUs it has.
ContainerEdits common_edits(const DriverDiscovery& driver) {
  ContainerEdits e;
  e.env = {std::string(k_visible_void)};
  e.device_nodes = driver.control_nodes;
  e.mounts = driver.mounts;
  e.links = driver.links;
  return e;
}

// Whether any containerEdits object of the spec (common or per device) satisfies pred.
template <class Pred>
bool any_edits(const json& spec, Pred pred) {
  if (spec.contains("containerEdits") && pred(spec["containerEdits"])) return true;
  if (spec.contains("devices") && spec["devices"].is_array())
    for (const auto& d : spec["devices"])
      if (d.contains("containerEdits") && pred(d["containerEdits"])) return true;
  return false;
}

bool non_empty(const json& obj, const char* key) {
  return obj.is_object() && obj.contains(key) && !obj[key].empty();
}

bool plain_key(const std::string& k) {
  if (k.empty() || !(std::isalpha(static_cast<unsigned char>(k[0])) || k[0] == '_')) return false;
  return std::all_of(k.begin(), k.end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

std::string yaml_scalar(const json& v) {
  if (v.is_array()) return "[]";
  if (v.is_object()) return "{}";
  // JSON's string escapes are a subset of YAML's double-quoted ones.
  return v.dump();
}

bool nested(const json& v) { return (v.is_array() || v.is_object()) && !v.empty(); }

void emit(const json& v, size_t indent, std::string& out) {
  std::string pad(indent, ' ');
  if (v.is_object()) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      out += pad + (plain_key(it.key()) ? it.key() : json(it.key()).dump()) + ":";
      if (!nested(*it)) {
        out += " " + yaml_scalar(*it) + "\n";
      } else {
        out += "\n";
        // A sequence under a key sits at the key's indentation, as nvidia-ctk writes it.
        emit(*it, it->is_array() ? indent : indent + 2, out);
      }
    }
  } else if (v.is_array()) {
    for (const auto& item : v) {
      if (!nested(item)) {
        out += pad + "- " + yaml_scalar(item) + "\n";
      } else if (item.is_object()) {
        std::string inner;
        emit(item, indent + 2, inner);
        out += pad + "- " + inner.substr(indent + 2);
      } else {
        out += pad + "-\n";
        emit(item, indent + 2, out);
      }
    }
  } else {
    out += pad + yaml_scalar(v) + "\n";
  }
}

}  // namespace

std::vector<Mount> link_mounts(const DriverDiscovery& driver) {
  std::vector<Mount> out;
  for (const auto& l : driver.links) {
    auto target = util::join(l.container_dir, l.target);
    auto source = std::find_if(driver.mounts.begin(), driver.mounts.end(),
                               [&](const Mount& m) { return m.container_path == target; });
    if (source == driver.mounts.end()) continue;
    out.push_back({source->host_path, util::join(l.container_dir, l.name), source->options});
  }
  return out;
}

util::Result<Selection> select_gpus(const DriverDiscovery& driver, std::string_view gpus_flag) {
  auto flag = util::trim(gpus_flag);
  if (flag.size() >= 2 && flag.front() == '"' && flag.back() == '"') flag = flag.substr(1, flag.size() - 2);
  Selection sel;
  auto fail = [&](std::string_view why) {
    return util::Error{fmt::format("--gpus {}: {} (this host's GPUs: {})", gpus_flag, why, gpu_list(driver))};
  };
  if (flag == "all") {
    if (driver.gpus.empty()) return fail("no /dev/nvidia<N> device nodes under " + driver.dev_root);
    sel.gpus = driver.gpus;
  } else if (flag == "none") {
  } else if (all_digits(flag)) {
    auto count = flag.size() > 6 ? SIZE_MAX : std::stoul(std::string(flag));
    if (count == 0) return fail("ask for at least one GPU, or for none");
    if (count > driver.gpus.size()) return fail(fmt::format("asks for {} GPUs", flag));
    sel.gpus.assign(driver.gpus.begin(), driver.gpus.begin() + static_cast<ptrdiff_t>(count));
  } else if (flag.starts_with("device=")) {
    auto list = flag.substr(7);
    if (list.empty()) return fail("no device listed");
    for (auto item : util::split(list, ',')) {
      item = util::trim(item);
      auto found = std::find_if(driver.gpus.begin(), driver.gpus.end(), [&](const GpuNode& g) {
        return all_digits(item) ? std::to_string(g.index) == item : (!g.uuid.empty() && g.uuid == item);
      });
      if (found == driver.gpus.end()) return fail(fmt::format("no GPU {}", item.empty() ? "\"\"" : item));
      bool dup = std::any_of(sel.gpus.begin(), sel.gpus.end(), [&](const GpuNode& g) { return g.index == found->index; });
      if (!dup) sel.gpus.push_back(*found);
    }
  } else {
    return util::Error{fmt::format("--gpus {}: expected all, none, a count or device=INDEX|UUID[,...]", gpus_flag)};
  }
  sel.edits = common_edits(driver);
  for (const auto& g : sel.gpus) sel.edits.device_nodes.push_back(g.node);
  return sel;
}

util::Result<json> cdi_spec(const DriverDiscovery& driver) {
  if (driver.gpus.empty())
    return util::Error{fmt::format("no GPU device nodes (/dev/nvidia<N>) under {}: is the NVIDIA kernel module "
                                   "loaded? (a CDI spec needs at least one device; give another --dev-root "
                                   "if the nodes live elsewhere)",
                                   driver.dev_root)};
  json devices = json::array();
  for (const auto& g : driver.gpus) devices.push_back(gpu_device(std::to_string(g.index), {g}));
  for (const auto& g : driver.gpus)
    if (!g.uuid.empty()) devices.push_back(gpu_device(g.uuid, {g}));
  devices.push_back(gpu_device("all", driver.gpus));

  auto common = common_edits(driver);
  json nodes = json::array(), mounts = json::array();
  for (const auto& n : common.device_nodes) nodes.push_back(node_json(n));
  auto all_mounts = common.mounts;
  for (auto& m : link_mounts(driver)) all_mounts.push_back(std::move(m));
  std::sort(all_mounts.begin(), all_mounts.end(),
            [](const Mount& a, const Mount& b) { return a.container_path < b.container_path; });
  for (const auto& m : all_mounts) mounts.push_back(mount_json(m));
  json edits = {{"env", common.env}, {"mounts", std::move(mounts)}};
  if (!nodes.empty()) edits["deviceNodes"] = std::move(nodes);

  json spec = {{"cdiVersion", "0.3.0"}, {"kind", k_kind}, {"devices", std::move(devices)},
               {"containerEdits", std::move(edits)}};
  spec["cdiVersion"] = minimum_cdi_version(spec);
  return spec;
}

std::string minimum_cdi_version(const json& spec) {
  if (any_edits(spec, [](const json& e) { return e.contains("intelRdt") || non_empty(e, "additionalGids"); }))
    return "0.7.0";
  bool annotations = non_empty(spec, "annotations");
  if (spec.contains("devices") && spec["devices"].is_array())
    for (const auto& d : spec["devices"]) annotations = annotations || non_empty(d, "annotations");
  auto kind = spec.value("kind", std::string());
  auto slash = kind.find('/');
  if (annotations || (slash != std::string::npos && kind.find('.', slash) != std::string::npos)) return "0.6.0";
  bool digit_name = false;
  if (spec.contains("devices") && spec["devices"].is_array())
    for (const auto& d : spec["devices"]) {
      auto name = d.value("name", std::string());
      digit_name = digit_name || (!name.empty() && !std::isalpha(static_cast<unsigned char>(name[0])));
    }
  bool host_path = any_edits(spec, [](const json& e) {
    if (!e.contains("deviceNodes")) return false;
    return std::any_of(e["deviceNodes"].begin(), e["deviceNodes"].end(),
                       [](const json& n) { return !n.value("hostPath", std::string()).empty(); });
  });
  if (digit_name || host_path) return "0.5.0";
  bool mount_type = any_edits(spec, [](const json& e) {
    if (!e.contains("mounts")) return false;
    return std::any_of(e["mounts"].begin(), e["mounts"].end(),
                       [](const json& m) { return !m.value("type", std::string()).empty(); });
  });
  return mount_type ? "0.4.0" : "0.3.0";
}

std::string to_yaml(const json& doc) {
  std::string out;
  emit(doc, 0, out);
  return out;
}

}  // namespace envsnap::gpu
