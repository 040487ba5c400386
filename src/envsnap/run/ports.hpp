#pragma once
// -p HOST:CTR for a container in a network namespace of its own: envsnap listens on
// the host port and, for each connection, opens one from inside the container's
// namespace (setns in the connection's thread) to 127.0.0.1:CTR, then copies bytes
// both ways. A userspace proxy, as docker-proxy is: no iptables, no bridge.

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "envsnap/run/spec.hpp"
#include "envsnap/util/fd.hpp"
#include "envsnap/util/result.hpp"

namespace envsnap::run {

// A listening socket for the host side of P; the error names the flag and the address.
util::Result<util::UniqueFd> listen_port(const PortMap& p);

class PortProxy {
public:
  // LISTENERS[i] is listen_port(PORTS[i]); CONTAINER_PID is the container's init.
  PortProxy(pid_t container_pid, std::vector<PortMap> ports, std::vector<util::UniqueFd> listeners);
  ~PortProxy();
  PortProxy(const PortProxy&) = delete;
  PortProxy& operator=(const PortProxy&) = delete;

  // Starts accepting: one thread per listener, one detached thread per connection.
  util::Result<void> start();
  // Stops accepting, shuts every connection down and waits (5 s at most) for them.
  void stop();

  struct State;

private:
  std::shared_ptr<State> m_state;
  std::vector<PortMap> m_ports;
  std::vector<util::UniqueFd> m_listeners;
  std::vector<std::thread> m_threads;
};

}  // namespace envsnap::run
