#pragma once
// One registration function per verb; each adds its subcommand to the app and
// stores the verb's exit code in *exit_code when it runs.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace envsnap::cli {

void add_capture(CLI::App& app, int* exit_code);
void add_show(CLI::App& app, int* exit_code);
void add_diff(CLI::App& app, int* exit_code);
void add_help(CLI::App& app, int* exit_code);

// Writes bytes to PATH atomically (temporary file, fsync, rename); "-" is stdout.
void write_output(const std::string& path, const std::string& bytes);
// Prints each warning to stderr as "envsnap: warning: ...".
void print_warnings(const nlohmann::json& captured);

}  // namespace envsnap::cli
