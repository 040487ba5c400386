#include "envsnap/registry/http.hpp"

#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <curl/curl.h>
#include <fmt/format.h>

#include "envsnap/util/strings.hpp"

namespace envsnap::registry {

namespace {

constexpr size_t max_error_body = 1 << 20;
constexpr size_t max_plain_body = 64 << 20;

struct Handle {
  CURL* curl = nullptr;
  Handle() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
    curl = curl_easy_init();
  }
  ~Handle() {
    if (curl) curl_easy_cleanup(curl);
  }
};

struct Transfer {
  const HttpRequest* req;
  HttpResponse* resp;
  CURL* curl;
  uint64_t sent = 0;
  std::string_view mem_left;
  bool sink_failed = false;
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  if (line.substr(0, 5) == "HTTP/") {
    t->resp->headers.clear();
  } else if (auto colon = line.find(':'); colon != std::string_view::npos) {
    t->resp->headers[util::to_lower(util::trim(line.substr(0, colon)))] = std::string(util::trim(line.substr(colon + 1)));
  }
  return size * n;
}

size_t on_write(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  long status = 0;
  curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &status);
  if (status >= 200 && status < 300 && t->req->sink) {
    if (!t->req->sink(status, data, len)) {
      t->sink_failed = true;
      return 0;
    }
    return len;
  }
  size_t cap = status >= 200 && status < 300 ? max_plain_body : max_error_body;
  if (t->resp->body.size() + len > cap) return 0;
  t->resp->body.append(data, len);
  return len;
}

size_t on_read(char* buf, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t want = size * n;
  size_t got = 0;
  if (t->req->body_fd >= 0) {
    uint64_t left = t->req->body_length - t->sent;
    if (want > left) want = static_cast<size_t>(left);
    if (want == 0) return 0;
    ssize_t r;
    do {
      r = ::pread(t->req->body_fd, buf, want, static_cast<off_t>(t->req->body_offset + t->sent));
    } while (r < 0 && errno == EINTR);
    if (r <= 0) return CURL_READFUNC_ABORT;
    got = static_cast<size_t>(r);
  } else {
    got = std::min(want, t->mem_left.size());
    std::memcpy(buf, t->mem_left.data(), got);
    t->mem_left.remove_prefix(got);
  }
  t->sent += got;
  if (t->req->on_sent) t->req->on_sent(t->sent);
  return got;
}

int on_seek(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0) return CURL_SEEKFUNC_CANTSEEK;
  auto off = static_cast<uint64_t>(offset);
  if (t->req->body_fd >= 0) {
    if (off > t->req->body_length) return CURL_SEEKFUNC_FAIL;
    t->sent = off;
  } else {
    if (off > t->req->body.size()) return CURL_SEEKFUNC_FAIL;
    t->sent = off;
    t->mem_left = t->req->body.substr(off);
  }
  return CURL_SEEKFUNC_OK;
}

std::optional<uint64_t> to_u64(std::string_view s) {
  s = util::trim(s);
  if (s.empty()) return std::nullopt;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

}  // namespace

HttpResponse perform(const HttpRequest& req, const TlsOptions& tls) {
  thread_local Handle handle;
  HttpResponse resp;
  CURL* c = handle.curl;
  if (!c) {
    resp.curl_code = CURLE_FAILED_INIT;
    resp.error = "cannot initialise libcurl";
    return resp;
  }
  curl_easy_reset(c);
  Transfer t{&req, &resp, c, 0, req.body, false};
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "envsnap/" ENVSNAP_VERSION);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  if (!tls.verify) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  std::string ca = tls.ca_file;
  if (ca.empty())
    if (const char* e = std::getenv("SSL_CERT_FILE"); e && *e) ca = e;
  if (!ca.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, ca.c_str());
  if (req.follow_redirects) {
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  }
  bool has_body = req.body_fd >= 0 || !req.body.empty() || req.method == "PUT" || req.method == "PATCH" ||
                  req.method == "POST";
  if (req.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (has_body) {
    uint64_t len = req.body_fd >= 0 ? req.body_length : req.body.size();
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(len));
    curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
    curl_easy_setopt(c, CURLOPT_READDATA, &t);
    curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
    curl_easy_setopt(c, CURLOPT_SEEKDATA, &t);
  } else if (req.method != "GET") {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
  }
  curl_slist* headers = nullptr;
  for (auto& h : req.headers) headers = curl_slist_append(headers, h.c_str());
  headers = curl_slist_append(headers, "Expect:");
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  if (char* u = nullptr; curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &u) == CURLE_OK && u) resp.url = u;
  resp.curl_code = static_cast<int>(rc);
  if (rc != CURLE_OK) {
    resp.error = t.sink_failed ? "the received data could not be stored"
                               : (errbuf[0] ? std::string(errbuf) : std::string(curl_easy_strerror(rc)));
    if (!resp.error.empty() && resp.error.back() == '\n') resp.error.pop_back();
  }
  return resp;
}

std::optional<ContentRange> parse_content_range(std::string_view v) {
  v = util::trim(v);
  if (v.substr(0, 6) != "bytes ") return std::nullopt;
  v.remove_prefix(6);
  auto dash = v.find('-'), slash = v.find('/');
  if (dash == std::string_view::npos || slash == std::string_view::npos || slash < dash) return std::nullopt;
  auto first = to_u64(v.substr(0, dash)), last = to_u64(v.substr(dash + 1, slash - dash - 1));
  if (!first || !last || *last < *first) return std::nullopt;
  ContentRange r{*first, *last, std::nullopt};
  auto total = v.substr(slash + 1);
  if (total != "*") {
    auto t = to_u64(total);
    if (!t || *t <= *last) return std::nullopt;
    r.total = *t;
  }
  return r;
}

std::optional<uint64_t> parse_upload_range(std::string_view v) {
  v = util::trim(v);
  if (v.substr(0, 6) == "bytes=") v.remove_prefix(6);
  auto dash = v.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto first = to_u64(v.substr(0, dash)), last = to_u64(v.substr(dash + 1));
  if (!first || !last || *first != 0 || *last < *first) return std::nullopt;
  if (*last == 0) return 0;
  return *last + 1;
}

bool is_retryable(int curl_code, long status) {
  switch (curl_code) {
    case CURLE_OK:
      break;
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
      return true;
    default:
      return false;
  }
  return status == 408 || status == 429 || (status >= 500 && status != 501 && status != 505);
}

std::chrono::milliseconds retry_delay(int attempt) {
  if (attempt < 0) attempt = 0;
  if (attempt > 10) attempt = 10;
  return std::chrono::milliseconds(500LL << attempt);
}

std::string resolve_location(std::string_view base_url, std::string_view location) {
  CURLU* u = curl_url();
  std::string out(location);
  if (u && curl_url_set(u, CURLUPART_URL, std::string(base_url).c_str(), 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, std::string(location).c_str(), 0) == CURLUE_OK) {
    char* s = nullptr;
    if (curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK && s) {
      out = s;
      curl_free(s);
    }
  }
  if (u) curl_url_cleanup(u);
  return out;
}

std::string url_encode(std::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~')
      out += static_cast<char>(c);
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

}  // namespace envsnap::registry
