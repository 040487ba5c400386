#pragma once
// What every probe gets: the root it reads, whether that root is the running
// system, and where to report problems. Probes never throw and never execute
// anything inside the root: a problem with one file is a warning naming it, and
// the probe goes on with the rest.

#include <mutex>
#include <string>
#include <vector>

#include "envsnap/util/rootfs.hpp"

namespace envsnap::probe {

enum class Liveness { live_system, other_root };

// Thread-safe list of warnings, each naming the path it is about.
class Warnings {
public:
  void add(std::string message) {
    std::lock_guard lock(m_mutex);
    m_items.push_back(std::move(message));
  }
  std::vector<std::string> items() const {
    std::lock_guard lock(m_mutex);
    return m_items;
  }

private:
  mutable std::mutex m_mutex;
  std::vector<std::string> m_items;
};

struct Context {
  const util::RootFs& root;
  Liveness liveness;
  Warnings& warnings;

  bool live() const { return liveness == Liveness::live_system; }
};

}  // namespace envsnap::probe
