#pragma once
// The host's GPUs as container edits: a CDI spec (Container Device Interface, kind
// nvidia.com/gpu) that podman and other CDI runtimes read from /etc/cdi or
// /var/run/cdi, and the edits for a docker-style --gpus selection, which
// `envsnap run` applies itself.

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "envsnap/gpu/driver.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::gpu {

// What a container gets: variables, device nodes, bind mounts and soname links.
struct ContainerEdits {
  std::vector<std::string> env;
  std::vector<DeviceNode> device_nodes;
  std::vector<Mount> mounts;
  std::vector<SonameLink> links;  // to create in the container (CDI specs carry them as mounts)
};

struct Selection {
  std::vector<GpuNode> gpus;  // the chosen GPUs, in the order asked
  ContainerEdits edits;       // control nodes, the chosen GPUs' nodes, the driver files
};

// The edits for a --gpus value: "all", "none" (driver files and control nodes, no GPU),
// "N" (the first N GPUs by index), or "device=I,J" with indices or UUIDs (surrounding
// double quotes allowed, as docker's documentation writes them). An Error naming the
// flag value when it asks for a GPU this host does not have.
util::Result<Selection> select_gpus(const DriverDiscovery& driver, std::string_view gpus_flag);

// Bind mounts that stand in for the soname links in a CDI spec, which cannot create
// links without a runtime hook: the library file mounted again at container_dir/name.
std::vector<Mount> link_mounts(const DriverDiscovery& driver);

// The CDI spec: one device per GPU named by index ("0", "1", ...), one per UUID when
// known, and "all"; each device's edits are its /dev/nvidiaN node; the common edits
// are the control nodes, the driver files (and link_mounts), and
// NVIDIA_VISIBLE_DEVICES=void. cdiVersion is the lowest that covers the fields used
// (0.5.0: device names start with a digit, nodes have hostPath), which podman 4.3 reads.
// An Error when the driver has no GPU device nodes (a spec needs at least one device).
util::Result<nlohmann::json> cdi_spec(const DriverDiscovery& driver);

// The lowest cdiVersion that has every field `spec` uses, by CDI's SPEC.md changelog:
// 0.4.0 mount type; 0.5.0 device node hostPath, device names starting with a digit;
// 0.6.0 annotations, dots in the kind's class; 0.7.0 intelRdt, additionalGids.
std::string minimum_cdi_version(const nlohmann::json& spec);

// YAML (block style, every string double-quoted) for a JSON document, for
// `envsnap cdi --format yaml`; a YAML parser reads back the same document.
std::string to_yaml(const nlohmann::json& doc);

}  // namespace envsnap::gpu
