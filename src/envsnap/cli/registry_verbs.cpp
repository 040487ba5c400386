#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/oci/reference.hpp"
#include "envsnap/registry/auth.hpp"
#include "envsnap/registry/client.hpp"
#include "envsnap/registry/reference.hpp"
#include "envsnap/registry/transfer.hpp"
#include "envsnap/store/store.hpp"
#include "envsnap/util/result.hpp"
#include "envsnap/util/strings.hpp"

namespace envsnap::cli {

namespace {

constexpr int exit_usage = 2;
constexpr int exit_store = 3;

}  // namespace

void add_net_options(CLI::App& cmd, NetFlags& f) {
  cmd.add_flag("--tls-verify", f.tls_verify,
               "Verify TLS certificates (--tls-verify=false skips verification and allows plain HTTP)");
  cmd.add_option("--ca-cert", f.ca_cert, "CA certificates (PEM) to trust instead of the system's (default: $SSL_CERT_FILE)");
}

namespace {

registry::TlsOptions tls_of(const NetFlags& f) { return registry::TlsOptions{f.tls_verify, f.ca_cert}; }

registry::RegistryReference parse_remote(const std::string& text) {
  auto r = registry::parse_registry_reference(text);
  if (!r) throw util::Fatal(exit_usage, r.message());
  return *r;
}

store::Store open_store(const std::string& flag, store::OpenMode mode) {
  auto s = store::Store::open(store::default_store_path(flag), mode);
  if (!s) throw util::Fatal(exit_store, s.message());
  return std::move(*s);
}

std::string read_password_stdin() {
  std::string all, line;
  while (std::getline(std::cin, line)) all += (all.empty() ? "" : "\n") + line;
  while (!all.empty() && (all.back() == '\n' || all.back() == '\r')) all.pop_back();
  return all;
}

std::string prompt_password() {
  fmt::print(stderr, "Password: ");
  std::fflush(stderr);
  termios old{};
  bool tty = ::tcgetattr(0, &old) == 0;
  if (tty) {
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    ::tcsetattr(0, TCSAFLUSH, &quiet);
  }
  std::string pw;
  std::getline(std::cin, pw);
  if (tty) ::tcsetattr(0, TCSAFLUSH, &old);
  fmt::print(stderr, "\n");
  return pw;
}

}  // namespace

PulledImage pull_remote(const std::string& src_text, const std::string& tag, const std::string& store_flag,
                        const NetFlags& net, bool quiet) {
  auto src = parse_remote(src_text);
  oci::Reference local;
  if (!tag.empty()) {
    auto t = oci::parse_reference(tag);
    if (!t) throw util::Fatal(exit_usage, t.message());
    if (t->digest) throw util::Fatal(exit_usage, fmt::format("-t {}: give NAME:TAG, not a digest", tag));
    local = *t;
  } else {
    local.name = src.repository;
    local.tag = src.digest ? "sha256-" + src.digest->hex() : src.tag;
  }
  auto s = open_store(store_flag, store::OpenMode::create_if_missing);
  auto lock = s.lock_shared();
  if (!lock) throw util::Fatal(exit_store, lock.message());
  registry::Client client(src.host, tls_of(net),
                          registry::find_credentials(src.host, registry::credential_sources_from_env()));
  client.ping(false);
  registry::TransferOptions topts{!quiet && ::isatty(2) == 1};
  auto res = registry::pull_image(s, src, client, topts);
  if (auto r = s.tag(local, res.manifest); !r) throw util::Fatal(exit_store, r.message());
  return PulledImage{src, local.name + ":" + local.tag, res};
}

void add_registry_verbs(CLI::App& app, int* exit_code) {
  {
    struct Opts {
      std::string store, ref, dest;
      NetFlags net;
      bool json = false, quiet = false;
    };
    auto o = std::make_shared<Opts>();
    auto* cmd = app.add_subcommand("push", "Push an image from the store to a registry");
    cmd->add_option("ref", o->ref, "Image in the store: NAME[:TAG], NAME@sha256:..., or a digest prefix")->required();
    cmd->add_option("dest", o->dest, "HOST[:PORT]/REPOSITORY[:TAG]")->required();
    add_store_option(*cmd, o->store);
    add_net_options(*cmd, o->net);
    cmd->add_flag("--json", o->json, "Print {destination, digest, uploaded, existing, mounted} as JSON");
    cmd->add_flag("--quiet,-q", o->quiet, "No progress and no summary on stderr");
    cmd->callback([o, exit_code] {
      auto dest = parse_remote(o->dest);
      auto s = open_store(o->store, store::OpenMode::must_exist);
      auto lock = s.lock_shared();
      if (!lock) throw util::Fatal(exit_store, lock.message());
      auto manifest = s.resolve(o->ref);
      if (!manifest) throw util::Fatal(exit_usage, manifest.message());
      registry::Client client(dest.host, tls_of(o->net),
                              registry::find_credentials(dest.host, registry::credential_sources_from_env()));
      client.ping(false);
      registry::TransferOptions topts{!o->quiet && ::isatty(2) == 1};
      auto res = registry::push_image(s, *manifest, dest, client, topts);
      int present = res.present + res.mounted;
      if (o->json) {
        nlohmann::json j = {{"destination", dest.str()}, {"digest", res.manifest.str()},
                            {"uploaded", res.uploaded},      {"existing", res.present},
                            {"mounted", res.mounted}};
        write_output("-", j.dump(2) + "\n");
      } else {
        write_output("-", fmt::format("{} {}\n", dest.str(), res.manifest.str()));
      }
      if (!o->quiet)
        fmt::print(stderr, "{} blobs uploaded, {} already there{}\n", res.uploaded, present,
                   res.mounted ? fmt::format(" ({} mounted from other repositories)", res.mounted) : "");
      *exit_code = 0;
    });
  }
  {
    struct Opts {
      std::string store, src, tag;
      NetFlags net;
      bool json = false, quiet = false;
    };
    auto o = std::make_shared<Opts>();
    auto* cmd = app.add_subcommand("pull", "Pull an image from a registry into the store");
    cmd->add_option("src", o->src, "HOST[:PORT]/REPOSITORY[:TAG] or HOST[:PORT]/REPOSITORY@sha256:...")->required();
    cmd->add_option("-t,--tag", o->tag, "Local NAME:TAG (default: REPOSITORY:TAG, the registry host dropped)");
    add_store_option(*cmd, o->store);
    add_net_options(*cmd, o->net);
    cmd->add_flag("--json", o->json, "Print {reference, name, digest, media_type, fetched, already_there} as JSON");
    cmd->add_flag("--quiet,-q", o->quiet, "No progress and no summary on stderr");
    cmd->callback([o, exit_code] {
      auto pulled = pull_remote(o->src, o->tag, o->store, o->net, o->quiet);
      auto& src = pulled.source;
      auto& res = pulled.result;
      auto& name = pulled.name;
      if (o->json) {
        nlohmann::json j = {{"reference", src.str()},           {"name", name},
                            {"digest", res.manifest.digest.str()}, {"media_type", res.manifest.media_type},
                            {"fetched", res.fetched},            {"already_there", res.present}};
        write_output("-", j.dump(2) + "\n");
      } else {
        write_output("-", fmt::format("{} {}\n", name, res.manifest.digest.str()));
      }
      if (!o->quiet) fmt::print(stderr, "{} blobs fetched, {} already there\n", res.fetched, res.present);
      *exit_code = 0;
    });
  }
  {
    struct Opts {
      std::string host, user, password;
      bool password_stdin = false;
      NetFlags net;
    };
    auto o = std::make_shared<Opts>();
    auto* cmd = app.add_subcommand("login", "Check credentials against a registry and save them");
    cmd->add_option("registry", o->host, "HOST[:PORT]")->required();
    cmd->add_option("-u,--username", o->user, "User name");
    auto* pw = cmd->add_option("-p,--password", o->password, "Password (visible to other users; prefer --password-stdin)");
    cmd->add_flag("--password-stdin", o->password_stdin, "Read the password from stdin")->excludes(pw);
    add_net_options(*cmd, o->net);
    cmd->callback([o, exit_code] {
      auto host = registry::normalize_host(o->host);
      if (!host) throw util::Fatal(exit_usage, host.message());
      if (o->user.empty()) throw util::Fatal(exit_usage, "login needs a user name: give -u USER");
      std::string password = o->password;
      if (o->password_stdin)
        password = read_password_stdin();
      else if (password.empty() && ::isatty(0) == 1)
        password = prompt_password();
      else if (password.empty())
        throw util::Fatal(exit_usage, "login needs a password: give --password-stdin or -p PASS");
      if (password.empty()) throw util::Fatal(exit_usage, "the password is empty");
      registry::Credentials creds{o->user, password, "-u " + o->user};
      registry::Client client(*host, tls_of(o->net), creds);
      client.ping(true);
      auto file = registry::envsnap_auth_file();
      if (auto r = registry::save_credentials(file, *host, creds); !r) throw util::Fatal(exit_store, r.message());
      fmt::print("Login succeeded: credentials for {} saved in {}\n", *host, file.string());
      *exit_code = 0;
    });
  }
  {
    auto host = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("logout", "Remove a registry's saved credentials");
    cmd->add_option("registry", *host, "HOST[:PORT]")->required();
    cmd->callback([host, exit_code] {
      auto h = registry::normalize_host(*host);
      if (!h) throw util::Fatal(exit_usage, h.message());
      auto file = registry::envsnap_auth_file();
      auto r = registry::remove_credentials(file, *h);
      if (!r) throw util::Fatal(exit_store, r.message());
      if (*r)
        fmt::print("Removed the credentials for {} from {}\n", *h, file.string());
      else
        fmt::print(stderr, "envsnap: not logged in to {} (nothing in {})\n", *h, file.string());
      *exit_code = 0;
    });
  }
}

}  // namespace envsnap::cli
