#include "envsnap/run/ports.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

namespace envsnap::run {

using util::Error;
using util::Result;
using util::UniqueFd;

Result<UniqueFd> listen_port(const PortMap& p) {
  std::string ip = p.host_ip.empty() ? "0.0.0.0" : p.host_ip;
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family = AF_INET;
  if (ip.find(':') != std::string::npos) {
    auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(p.host_port);
    if (::inet_pton(AF_INET6, ip.c_str(), &a6->sin6_addr) != 1)
      return Error{fmt::format("-p {}:{}:{}: {} is not an IP address", ip, p.host_port, p.container_port, ip)};
    family = AF_INET6;
    len = sizeof(sockaddr_in6);
  } else {
    auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(p.host_port);
    if (::inet_pton(AF_INET, ip.c_str(), &a4->sin_addr) != 1)
      return Error{fmt::format("-p {}:{}:{}: {} is not an IP address", ip, p.host_port, p.container_port, ip)};
    len = sizeof(sockaddr_in);
  }
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error{fmt::format("cannot create a socket: {}", std::strerror(errno))};
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd.get(), 128) != 0)
    return Error{fmt::format("-p {}:{}: cannot listen on {} port {}: {}; choose another host port", p.host_port,
                             p.container_port, ip, p.host_port, std::strerror(errno))};
  return fd;
}

struct PortProxy::State {
  std::atomic<bool> stopping{false};
  UniqueFd netns;
  UniqueFd wake_r, wake_w;  // closed by stop() to wake every poll
  std::mutex mu;
  std::vector<std::thread> connections;
};

PortProxy::PortProxy(pid_t container_pid, std::vector<PortMap> ports, std::vector<UniqueFd> listeners)
    : m_state(std::make_shared<State>()) {
  m_state->netns.reset(::open(fmt::format("/proc/{}/ns/net", container_pid).c_str(), O_RDONLY | O_CLOEXEC));
  int p[2];
  if (::pipe2(p, O_CLOEXEC) == 0) {
    m_state->wake_r.reset(p[0]);
    m_state->wake_w.reset(p[1]);
  }
  for (size_t i = 0; i < ports.size() && i < listeners.size(); ++i) {
    auto state = m_state;
    uint16_t ctr = ports[i].container_port;
    m_threads.emplace_back([state, ctr, lfd = std::make_shared<UniqueFd>(std::move(listeners[i]))] {
      while (!state->stopping) {
        pollfd fds[2] = {{lfd->get(), POLLIN, 0}, {state->wake_r.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
        if (state->stopping || (fds[1].revents != 0)) return;
        if (!(fds[0].revents & POLLIN)) continue;
        int client = ::accept4(lfd->get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) continue;
        std::lock_guard<std::mutex> lock(state->mu);
        state->connections.emplace_back([state, ctr, client] {
          UniqueFd in(client);
          // Network namespaces are per thread: this one alone enters the container's.
          if (::setns(state->netns.get(), CLONE_NEWNET) != 0) return;
          UniqueFd out(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
          if (!out) return;
          sockaddr_in a{};
          a.sin_family = AF_INET;
          a.sin_port = htons(ctr);
          a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
          if (::connect(out.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return;
          bool open_in = true, open_out = true;
          char buf[65536];
          while ((open_in || open_out) && !state->stopping) {
            pollfd fds[3] = {{open_in ? in.get() : -1, POLLIN, 0},
                             {open_out ? out.get() : -1, POLLIN, 0},
                             {state->wake_r.get(), POLLIN, 0}};
            if (::poll(fds, 3, -1) < 0 && errno != EINTR) return;
            if (fds[2].revents != 0) return;
            for (int side = 0; side < 2; ++side) {
              if (!(fds[side].revents & (POLLIN | POLLHUP | POLLERR))) continue;
              int from = side == 0 ? in.get() : out.get(), to = side == 0 ? out.get() : in.get();
              ssize_t n = ::read(from, buf, sizeof buf);
              if (n <= 0) {
                ::shutdown(to, SHUT_WR);
                (side == 0 ? open_in : open_out) = false;
                continue;
              }
              for (ssize_t done = 0; done < n;) {
                ssize_t w = ::send(to, buf + done, static_cast<size_t>(n - done), MSG_NOSIGNAL);
                if (w <= 0) return;
                done += w;
              }
            }
          }
        });
      }
    });
  }
}

Result<void> PortProxy::start() {
  if (!m_state->netns) return Error{fmt::format("cannot open the container's network namespace: {}", std::strerror(errno))};
  return {};
}

void PortProxy::stop() {
  if (m_state->stopping.exchange(true)) return;
  m_state->wake_w.reset();
  for (auto& t : m_threads)
    if (t.joinable()) t.join();
  std::vector<std::thread> conns;
  {
    std::lock_guard<std::mutex> lock(m_state->mu);
    conns.swap(m_state->connections);
  }
  for (auto& t : conns)
    if (t.joinable()) t.join();
}

PortProxy::~PortProxy() { stop(); }

}  // namespace envsnap::run
