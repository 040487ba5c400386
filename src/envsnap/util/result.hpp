#pragma once
// Expected failures are values: Result<T> holds either a T or an Error whose
// message names the file, URL or flag and says what to do. Bugs are assertions;
// only fatal errors are thrown (as Fatal) and caught once in main().

#include <cassert>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace envsnap::util {

struct Error {
  std::string message;
};

template <class T>
class [[nodiscard]] Result {
public:
  Result(T value) : m_v(std::in_place_index<0>, std::move(value)) {}
  Result(Error error) : m_v(std::in_place_index<1>, std::move(error)) {}

  bool ok() const { return m_v.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { assert(ok()); return std::get<0>(m_v); }
  const T& value() const& { assert(ok()); return std::get<0>(m_v); }
  T&& value() && { assert(ok()); return std::get<0>(std::move(m_v)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const { assert(!ok()); return std::get<1>(m_v); }
  const std::string& message() const { return error().message; }

private:
  std::variant<T, Error> m_v;
};

template <>
class [[nodiscard]] Result<void> {
public:
  Result() = default;
  Result(Error error) : m_error(std::move(error)), m_ok(false) {}
  bool ok() const { return m_ok; }
  explicit operator bool() const { return m_ok; }
  const Error& error() const { assert(!m_ok); return m_error; }
  const std::string& message() const { return error().message; }

private:
  Error m_error;
  bool m_ok = true;
};

// A failure that ends the command: main() prints it and exits with exit_code.
class Fatal : public std::runtime_error {
public:
  Fatal(int exit_code, std::string message)
      : std::runtime_error(std::move(message)), m_exit_code(exit_code) {}
  int exit_code() const { return m_exit_code; }

private:
  int m_exit_code;
};

}  // namespace envsnap::util
