#pragma once
// A snapshot = the lock + an OCI image in the store. build_snapshot plans the
// layers of a root, writes each (re-using a cached layer when its files are
// unchanged, after re-hashing the cached blob), writes the config (the lock as a
// label, NVIDIA_* variables, the recorded environment) and the manifest, and tags it.

#include <atomic>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <optional>
#include <string>
#include <vector>

#include "envsnap/image/layer.hpp"
#include "envsnap/image/plan.hpp"
#include "envsnap/lock/lock.hpp"
#include "envsnap/oci/reference.hpp"
#include "envsnap/store/store.hpp"

namespace envsnap::image {

// Says whether a stored blob still has its digest, by re-hashing it: no cached
// layer is re-used on the strength of its cache entry alone. A capture starts one
// before its plan with the blobs the last capture of the same root used
// (prefetch), so their hashing overlaps the walk of the root; the blobs the plan
// then re-uses are answered from that work. The verdict is the same either way.
class BlobVerifier {
public:
  explicit BlobVerifier(store::Store store) : m_store(std::move(store)) {}
  BlobVerifier(const BlobVerifier&) = delete;
  BlobVerifier& operator=(const BlobVerifier&) = delete;
  ~BlobVerifier();  // stops the prefetch thread

  // A key for ROOT (its path, device and inode), under which a capture remembers its layers.
  static std::string root_key(const util::RootFs& root);
  // Starts re-hashing, largest first on one thread, the blobs the last capture of
  // ROOT_KEY into this store used. Holds the store's shared lock from now on, so gc
  // cannot take a blob between its check and the tag.
  void prefetch(const std::string& root_key);
  // True when the blob is in the store with its size and digest. Thread-safe. A blob
  // the prefetch thread is hashing is waited for; one it has not reached yet is
  // hashed here, on the caller's thread.
  bool intact(const oci::Descriptor& blob);
  // Records the blobs of a finished capture of ROOT_KEY for the next prefetch.
  void remember(const std::string& root_key, const std::vector<oci::Descriptor>& blobs);

private:
  struct Entry {
    oci::Descriptor blob;
    std::atomic<bool> claimed{false};  // whoever sets it hashes the blob and sets the verdict
    std::promise<bool> verdict;
    std::shared_future<bool> result = verdict.get_future().share();
  };

  store::Store m_store;
  std::optional<store::StoreLock> m_hold;
  std::mutex m_mutex;
  std::map<std::string, std::shared_ptr<Entry>> m_pending;  // digest/size -> prefetch entry
  std::atomic<bool> m_stop{false};
  std::thread m_thread;
};

struct SnapshotOptions {
  PlanOptions plan;
  LayerOptions layer;
  std::string workdir;             // --workdir
  std::vector<std::string> cmd;    // --cmd (exec form)
  bool progress = false;           // draw a progress bar on stderr
  BlobVerifier* verifier = nullptr;  // one already prefetching; build_snapshot makes its own when null
  std::string root_key;              // BlobVerifier::root_key of the root, to remember this capture under
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
  std::vector<std::string> warnings;  // e.g. a corrupt cached blob that was packed afresh
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
