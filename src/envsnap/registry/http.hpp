#pragma once
// HTTP over libcurl for the registry client, and the pure pieces of the protocol:
// Range / Content-Range parsing, retry classification, backoff.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace envsnap::registry {

struct TlsOptions {
  bool verify = true;   // false: no certificate checks, and plain HTTP is tried for any host
  std::string ca_file;  // empty: $SSL_CERT_FILE when set, else the system CAs
};

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::string_view body;             // sent when body_fd < 0 (must outlive perform)
  int body_fd = -1;                  // else body_length bytes from body_offset of this file
  uint64_t body_offset = 0, body_length = 0;
  bool follow_redirects = false;
  // Receives the body of a 2xx response as it arrives; returning false aborts the transfer.
  std::function<bool(long status, const char*, size_t)> sink;
  std::function<void(uint64_t)> on_sent;  // bytes of the request body sent so far
};

struct HttpResponse {
  long status = 0;        // 0 when no response came
  int curl_code = 0;      // CURLcode; 0 on a complete transfer
  std::string error;      // libcurl's message when curl_code != 0
  std::map<std::string, std::string> headers;  // lowercased names of the final response
  std::string body;       // the body unless a sink took it
  std::string url;        // the effective URL (after redirects)

  std::string header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// One request on this thread's reusable curl handle.
HttpResponse perform(const HttpRequest& req, const TlsOptions& tls);

struct ContentRange {
  uint64_t first = 0, last = 0;
  std::optional<uint64_t> total;  // nullopt for "*"
};

// "bytes 0-99/1000" or "bytes 0-99/*" (Content-Range of a 206 response).
std::optional<ContentRange> parse_content_range(std::string_view value);
// The Range header of an upload status ("0-1023", also "bytes=0-1023"): how many bytes
// the registry holds (1024). "0-0" counts as 0: distribution sends it for empty uploads.
std::optional<uint64_t> parse_upload_range(std::string_view value);

// True for transient failures worth another try: connect/timeout/send/receive errors,
// truncated responses, 408, 429 and 5xx other than 501/505.
bool is_retryable(int curl_code, long status);
// The pause before retry number attempt (0-based): 500 ms, 1 s, 2 s.
std::chrono::milliseconds retry_delay(int attempt);
inline constexpr int max_retries = 3;

// Resolves a Location header against the URL it came with.
std::string resolve_location(std::string_view base_url, std::string_view location);
// Percent-encodes a query value.
std::string url_encode(std::string_view s);

}  // namespace envsnap::registry
