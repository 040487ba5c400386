#include <memory>
#include <string>

#include "envsnap/cli/verbs.hpp"
#include "envsnap/run/runner.hpp"

namespace envsnap::cli {

void add_run(CLI::App& app, int* exit_code) {
  auto r = std::make_shared<run::RunRequest>();
  auto* cmd = app.add_subcommand("run", "Run a snapshot: its layers unpacked once, the host's GPUs injected, data "
                                        "mounted, through runc or crun (or podman/docker)");
  cmd->add_option("ref", r->ref, "NAME[:TAG], NAME@sha256:..., or a registry reference (pulled first)")->required();
  cmd->add_option("command", r->command,
                  "The command and its arguments (everything after REF's first non-option word, or after --); "
                  "default: the image's");
  auto entrypoint = std::make_shared<std::string>();
  auto* ep = cmd->add_option("--entrypoint", *entrypoint, "Replace the image's entrypoint (\"\" clears it)");
  cmd->add_option("--gpus", r->gpus,
                  "GPUs to inject: auto (all when a driver is found), all, none, N, device=0,1 or device=UUID,...")
      ->capture_default_str();
  cmd->add_option("-v,--volume", r->volumes, "Bind-mount SRC:DST[:ro|rw] (SRC a host path)")->allow_extra_args(false);
  cmd->add_option("-p,--publish", r->ports,
                  "Publish [IP:]HOST:CTR (tcp); gives the container a network namespace of its own")
      ->allow_extra_args(false);
  cmd->add_option("-e,--env", r->env, "Set K=V (or pass K from this shell), after the snapshot's variables")->allow_extra_args(false);
  cmd->add_option("--env-file", r->env_files, "Read K=V lines from a file")->allow_extra_args(false);
  cmd->add_option("-w,--workdir", r->workdir, "Working directory in the container");
  cmd->add_option("-u,--user", r->user, "USER[:GROUP] (names or numbers) to run the command as");
  cmd->add_flag("-i,--interactive", r->interactive, "Keep stdin open");
  cmd->add_flag("-t,--tty", r->tty, "Give the command a terminal");
  cmd->add_flag("--rm", r->remove, "Drop the run's writable layer when it ends (the record and log stay)");
  cmd->add_option("--name", r->name, "A name for the run (also the container's host name)");
  cmd->add_option("--shm-size", r->shm_size, "Size of /dev/shm (default: half of this host's memory)");
  cmd->add_option("--ipc", r->ipc, "host: share the host's IPC namespace and /dev/shm");
  cmd->add_option("--ulimit", r->ulimits, "NAME=SOFT[:HARD], e.g. nofile=65536, memlock=-1, stack=67108864")->allow_extra_args(false);
  cmd->add_option("--runtime", r->runtime, "runc, crun, podman, docker or auto ($ENVSNAP_RUNTIME)")
      ->capture_default_str();
  cmd->add_flag("--force", r->force, "Run even when the checks say the snapshot cannot work on this host");
  cmd->add_flag("--quiet,-q", r->quiet, "No progress on stderr");
  cmd->add_flag("--print-config", r->print_config, "Print the OCI bundle's config.json and run nothing");
  cmd->add_option("--driver-root", r->driver_root, "Where the NVIDIA driver is looked for (default /)")
      ->capture_default_str();
  add_store_option(*cmd, r->store_flag);
  add_net_options(*cmd, r->net);
  cmd->callback([r, exit_code, entrypoint, ep] {
    if (ep->count() > 0) r->entrypoint = *entrypoint;
    *exit_code = run::run(*r);
  });
}

std::vector<std::string> separate_run_command(const CLI::App& run, std::vector<std::string> args) {
  size_t positionals = 0;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") return args;
    if (a.size() > 1 && a[0] == '-') {
      if (a.find('=') != std::string::npos) continue;  // --name=value
      const CLI::Option* opt = run.get_option_no_throw(a);
      // A short option with its value attached (-v/a:/b) or a bundle of flags (-it)
      // needs no lookahead; an option that takes a value consumes the next word.
      if (opt != nullptr && opt->get_expected_min() > 0) ++i;
      continue;
    }
    if (++positionals == 2) {
      args.insert(args.begin() + static_cast<std::ptrdiff_t>(i), "--");
      return args;
    }
  }
  return args;
}

}  // namespace envsnap::cli
