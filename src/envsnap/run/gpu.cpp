#include "envsnap/run/gpu.hpp"

namespace envsnap::run {

util::Result<GpuPlan> plan_gpus(const std::string& flag, const std::string& driver_root) {
  (void)driver_root;
  GpuPlan p;
  if (flag != "auto" && flag != "none") return util::Error{"--gpus: GPU injection is not wired yet"};
  return p;
}

}  // namespace envsnap::run
