#pragma once
// SHA-256 through OpenSSL's EVP interface (SHA-NI where the CPU has it).

#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "envsnap/util/result.hpp"

namespace envsnap::util {

class Sha256 {
public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void update(const void* data, size_t size);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // Lowercase hex of the digest; the object must not be updated afterwards.
  std::string hex();

private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

std::string sha256_hex(std::string_view data);
// Hashes a host file by streaming it; the error names the path. When STOP becomes
// true the hashing gives up early with an error.
Result<std::string> sha256_file(int fd, std::string_view path_for_messages,
                                const std::atomic<bool>* stop = nullptr);

}  // namespace envsnap::util
