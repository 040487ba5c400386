#pragma once

namespace envsnap::cli {

// Parses the command line and runs one verb; returns the process exit code.
int run(int argc, char** argv);

}  // namespace envsnap::cli
