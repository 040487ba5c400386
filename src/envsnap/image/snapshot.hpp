#pragma once
// A snapshot = the lock + an OCI image in the store. build_snapshot plans the
// layers of a root, writes each (re-using a cached layer when its files are
// unchanged, after re-hashing the cached blob), writes the config (the lock as a
// label, NVIDIA_* variables, the recorded environment) and the manifest, and tags it.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "envsnap/image/layer.hpp"
#include "envsnap/image/plan.hpp"
#include "envsnap/lock/lock.hpp"
#include "envsnap/oci/reference.hpp"
#include "envsnap/store/store.hpp"

namespace envsnap::image {

struct SnapshotOptions {
  PlanOptions plan;
  LayerOptions layer;
  std::string workdir;             // --workdir
  std::vector<std::string> cmd;    // --cmd (exec form)
  bool progress = false;           // draw a progress bar on stderr
};

struct LayerReport {
  std::string name;
  LayerResult result;
  uint64_t files = 0, bytes = 0;
  bool reused = false;  // came from the stat cache
};

struct SnapshotResult {
  oci::Descriptor manifest;
  std::vector<LayerReport> layers;
};

// The image config for a lock and its layers; deterministic for the same inputs.
nlohmann::json make_config(const lock::LockDocument& lock, const std::vector<LayerReport>& layers,
                           const SnapshotOptions& options, int64_t created);

util::Result<SnapshotResult> build_snapshot(const util::RootFs& root, const lock::LockDocument& lock, const Plan& plan,
                                            const SnapshotOptions& options, store::Store& store,
                                            const oci::Reference& tag);

// Reads the lock back out of an image config (the dev.envsnap.lock label), checking its digest.
util::Result<lock::LockDocument> lock_from_config(const nlohmann::json& config, std::string_view where);

}  // namespace envsnap::image
