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
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <system_error>

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
  UniqueFd wake_r, wake_w;  // wake_w closed by stop() wakes every poll
  std::mutex mu;
  std::condition_variable idle;
  std::set<int> sockets;    // every open connection socket, both sides
  size_t active = 0;        // connection threads still running (detached)

  static constexpr size_t max_connections = 1024;

  void track(int fd) {
    std::lock_guard<std::mutex> lock(mu);
    sockets.insert(fd);
  }
  void untrack(int fd) {
    std::lock_guard<std::mutex> lock(mu);
    sockets.erase(fd);
  }
};

namespace {

// Copies bytes both ways between IN (the host's client) and a new connection to
// 127.0.0.1:CTR made inside the container's network namespace.
void relay_connection(const std::shared_ptr<PortProxy::State>& state, const UniqueFd& in, uint16_t ctr) {
  // Network namespaces are per thread: this one alone enters the container's.
  if (::setns(state->netns.get(), CLONE_NEWNET) != 0) return;
  UniqueFd out(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!out) return;
  state->track(out.get());
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(ctr);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool open_in = true, open_out = true;
  if (!state->stopping && ::connect(out.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    char buf[65536];
    while ((open_in || open_out) && !state->stopping) {
      pollfd fds[3] = {{open_in ? in.get() : -1, POLLIN, 0},
                       {open_out ? out.get() : -1, POLLIN, 0},
                       {state->wake_r.get(), POLLIN, 0}};
      if (::poll(fds, 3, -1) < 0 && errno != EINTR) break;
      if (fds[2].revents != 0) break;
      bool failed = false;
      for (int side = 0; side < 2 && !failed; ++side) {
        if (!(fds[side].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        int from = side == 0 ? in.get() : out.get(), to = side == 0 ? out.get() : in.get();
        ssize_t n = ::read(from, buf, sizeof buf);
        if (n <= 0) {
          ::shutdown(to, SHUT_WR);
          (side == 0 ? open_in : open_out) = false;
          continue;
        }
        // A blocked send is woken by stop(), which shuts every tracked socket down.
        for (ssize_t done = 0; done < n && !failed;) {
          ssize_t w = ::send(to, buf + done, static_cast<size_t>(n - done), MSG_NOSIGNAL);
          if (w < 0 && errno == EINTR) continue;
          if (w <= 0) failed = true;
          else done += w;
        }
      }
      if (failed) break;
    }
  }
  state->untrack(out.get());
}

}  // namespace

PortProxy::PortProxy(pid_t container_pid, std::vector<PortMap> ports, std::vector<UniqueFd> listeners)
    : m_state(std::make_shared<State>()) {
  m_state->netns.reset(::open(fmt::format("/proc/{}/ns/net", container_pid).c_str(), O_RDONLY | O_CLOEXEC));
  m_ports = std::move(ports);
  m_listeners = std::move(listeners);
}

Result<void> PortProxy::start() {
  if (!m_state->netns) return Error{fmt::format("-p: cannot open the container's network namespace: {}", std::strerror(errno))};
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Error{fmt::format("-p: cannot create a pipe: {}", std::strerror(errno))};
  m_state->wake_r.reset(p[0]);
  m_state->wake_w.reset(p[1]);
  for (size_t i = 0; i < m_ports.size() && i < m_listeners.size(); ++i) {
    auto state = m_state;
    uint16_t ctr = m_ports[i].container_port;
    int lfd = m_listeners[i].get();
    m_threads.emplace_back([state, ctr, lfd] {
      while (!state->stopping) {
        pollfd fds[2] = {{lfd, POLLIN, 0}, {state->wake_r.get(), POLLIN, 0}};
        if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
        if (state->stopping || fds[1].revents != 0) return;
        if (!(fds[0].revents & POLLIN)) continue;
        int client = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) {
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          continue;
        }
        UniqueFd in(client);
        {
          std::lock_guard<std::mutex> lock(state->mu);
          if (state->stopping || state->active >= State::max_connections) continue;
          state->sockets.insert(client);
          ++state->active;
        }
        try {
          std::thread([state, ctr, in = std::move(in)]() mutable {
            relay_connection(state, in, ctr);
            std::lock_guard<std::mutex> lock(state->mu);
            state->sockets.erase(in.get());
            in.reset();  // closed only once stop() can no longer see it
            --state->active;
            state->idle.notify_all();
          }).detach();
        } catch (const std::system_error&) {  // no thread to be had: drop this connection
          std::lock_guard<std::mutex> lock(state->mu);
          state->sockets.erase(client);
          --state->active;
        }
      }
    });
  }
  return {};
}

void PortProxy::stop() {
  if (m_state->stopping.exchange(true)) return;
  m_state->wake_w.reset();
  {
    std::lock_guard<std::mutex> lock(m_state->mu);
    for (int fd : m_state->sockets) ::shutdown(fd, SHUT_RDWR);
  }
  for (auto& t : m_threads)
    if (t.joinable()) t.join();
  std::unique_lock<std::mutex> lock(m_state->mu);
  m_state->idle.wait_for(lock, std::chrono::seconds(5), [&] { return m_state->active == 0; });
}

PortProxy::~PortProxy() { stop(); }

}  // namespace envsnap::run
