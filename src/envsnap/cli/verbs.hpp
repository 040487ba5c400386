#pragma once
// One registration function per verb; each adds its subcommand to the app and
// stores the verb's exit code in *exit_code when it runs.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "envsnap/lock/lock.hpp"
#include "envsnap/registry/reference.hpp"
#include "envsnap/registry/transfer.hpp"

namespace envsnap::cli {

void add_capture(CLI::App& app, int* exit_code);
void add_show(CLI::App& app, int* exit_code);
void add_diff(CLI::App& app, int* exit_code);
void add_help(CLI::App& app, int* exit_code);
void add_store_verbs(CLI::App& app, int* exit_code);    // ls, rm, gc, check (cli/store_verbs.cpp)
void add_restore(CLI::App& app, int* exit_code);        // cli/restore.cpp
void add_export_import(CLI::App& app, int* exit_code);  // export, import (cli/export_import.cpp)
void add_registry_verbs(CLI::App& app, int* exit_code); // push, pull, login, logout (cli/registry_verbs.cpp)
void add_cdi(CLI::App& app, int* exit_code);            // cli/cdi.cpp

// The --store option every store verb takes; resolved with store::default_store_path.
void add_store_option(CLI::App& cmd, std::string& store_flag);

void add_run(CLI::App& app, int* exit_code);            // cli/run.cpp
// `envsnap run REF [flags] CMD ARGS...`: everything from the first word after REF on
// is the command's, as in docker, so "--" is inserted before it when missing (ARGS is
// argv without the program name, "run" first).
std::vector<std::string> separate_run_command(const CLI::App& run, std::vector<std::string> args);

// --tls-verify and --ca-cert, as every verb that talks to a registry takes them.
struct NetFlags {
  bool tls_verify = true;
  std::string ca_cert;
};
void add_net_options(CLI::App& cmd, NetFlags& f);

// Pulls SRC (a registry reference) into the store and tags it TAG (default: the
// repository and tag without the host). Failures throw util::Fatal with the
// network (4), auth (5), corrupt (6) or store (3) exit code.
struct PulledImage {
  registry::RegistryReference source;
  std::string name;  // the local NAME:TAG
  registry::PullResult result;
};
PulledImage pull_remote(const std::string& src, const std::string& tag, const std::string& store_flag,
                        const NetFlags& net, bool quiet);

// Writes bytes to PATH atomically (temporary file, fsync, rename); "-" is stdout.
void write_output(const std::string& path, const std::string& bytes);
// A lock from an argument, resolved as DESIGN.md says: an existing path is a root
// directory (captured now, --data paths taken inside it) or a lock file; otherwise a
// store reference whose image config carries the lock.
lock::LockDocument load_lock_argument(const std::string& arg, const std::string& store_flag,
                                      const std::vector<std::string>& data, bool quiet);

// Prints each warning to stderr as "envsnap: warning: ...".
void print_warnings(const nlohmann::json& captured);

}  // namespace envsnap::cli
