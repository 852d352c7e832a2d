#include "pair_so3krates.h"

#include "element_table.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neighbor.h"
#include "update.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <unordered_map>

using namespace LAMMPS_NS;

namespace {
constexpr int SUPPORTED_MODEL_FORMAT = 1;
const char *const METADATA_FILE = "so3krates.json";
const char *const EXPORT_HINT = "export a trained checkpoint with 'so3krates export CHECKPOINT -o model.pt'";

std::string describe(const std::exception &e)
{
  if (auto c10err = dynamic_cast<const c10::Error *>(&e)) return c10err->what_without_backtrace();
  return e.what();
}
}    // namespace

/* ---------------------------------------------------------------------- */

PairSo3krates::PairSo3krates(LAMMPS *lmp) :
    Pair(lmp), model_loaded(false), model_format(0), model_dtype(torch::kFloat64), cutoff(0.0),
    interaction_range(0.0), num_layers(0), energy_conv(1.0), threads_requested(0), mode(GHOSTS),
    logged_ghost_cutoff(-1.0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // The model returns the exact virial of the energy this rank counts; with only owned atoms
  // passed (PERIODIC_OWNERS) f.r over local + ghost atoms would miss the periodic images.
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
}

PairSo3krates::~PairSo3krates()
{
  if (copymode) return;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairSo3krates::allocate()
{
  allocated = 1;
  int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

/* ----------------------------------------------------------------------
   pair_style so3krates [threads N]
------------------------------------------------------------------------- */

void PairSo3krates::settings(int narg, char **arg)
{
  int iarg = 0;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "threads") == 0 && iarg + 1 < narg) {
      threads_requested = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (threads_requested < 1)
        error->all(FLERR, "pair_style so3krates threads {}: give a positive number of torch threads per rank",
                   arg[iarg + 1]);
      iarg += 2;
    } else {
      error->all(FLERR,
                 "pair_style so3krates: unknown argument '{}'; write 'pair_style so3krates' "
                 "(optionally 'pair_style so3krates threads N'); the model file and elements go into "
                 "'pair_coeff * * model.pt C H O'",
                 arg[iarg]);
    }
  }
  if (domain->box_exist) check_units();
}

/* ----------------------------------------------------------------------
   pair_coeff * * model.pt El1 El2 ... (one per atom type; NULL = handled by another style)
------------------------------------------------------------------------- */

void PairSo3krates::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 3 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "pair_coeff for so3krates must be 'pair_coeff * * model.pt El1 El2 ...' with one element "
               "name per atom type ({} types here), e.g. 'pair_coeff * * model.pt C H O'",
               ntypes);
  const int nnames = narg - 3;
  if (nnames != ntypes)
    error->all(FLERR,
               "pair_coeff * * {} has {} element name(s) but the system has {} atom types: give exactly "
               "one element name per LAMMPS atom type, in type order (NULL for a type handled by another "
               "pair style under hybrid/overlay)",
               arg[2], nnames, ntypes);

  load_model(arg[2]);

  std::vector<std::string> names;
  type_z.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; ++t) {
    std::string name = arg[2 + t];
    names.push_back(name);
    if (name == "NULL") continue;
    int z = so3krates::atomic_number(name);
    if (z == 0)
      error->all(FLERR,
                 "pair_coeff: '{}' (atom type {}) is not a chemical symbol; write element symbols such as "
                 "H C N O (case-sensitive) or NULL",
                 name, t);
    if (std::find(model_elements.begin(), model_elements.end(), z) == model_elements.end()) {
      std::string known;
      for (int e : model_elements) known += " " + so3krates::element_symbol(e);
      error->all(FLERR,
                 "pair_coeff: element {} (atom type {}) is not in model {}, which knows only{}; map each "
                 "type to one of these, or write NULL for that type and give it another pair style under "
                 "pair_style hybrid/overlay",
                 name, t, model_path, known);
    }
    type_z[t] = z;
  }

  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (type_z[i] > 0 && type_z[j] > 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0)
    error->all(FLERR, "pair_coeff * * {}: every type is NULL; name the element of at least one type", arg[2]);
  log_model(names);
}

void PairSo3krates::load_model(const std::string &path)
{
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe.good())
      error->all(FLERR, "pair_coeff: model file '{}' cannot be read (missing?); give the path of an exported "
                 "so3krates model: {}", path, EXPORT_HINT);
  }
  torch::jit::ExtraFilesMap extra{{METADATA_FILE, ""}};
  try {
    model = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_coeff: '{}' is not a TorchScript model file ({}); {}", path, describe(e),
               EXPORT_HINT);
  }
  const std::string &text = extra[METADATA_FILE];
  if (text.empty())
    error->all(FLERR, "pair_coeff: '{}' is a TorchScript file but not a so3krates model (it has no extra/{} "
               "metadata); {}", path, METADATA_FILE, EXPORT_HINT);
  try {
    auto meta = json::parse(text);
    model_format = meta.value("format_version", 0);
    model_version = meta.value("so3krates_version", std::string("?"));
    model_dtype_name = meta.at("dtype").get<std::string>();
    cutoff = meta.at("cutoff_A").get<double>();
    interaction_range = meta.at("interaction_range_A").get<double>();
    num_layers = meta.at("num_layers").get<int>();
    model_elements = meta.at("elements").get<std::vector<int>>();
    model_radial = "exact";
    if (meta.contains("radial_filters") && meta["radial_filters"].contains("points"))
      model_radial = fmt::format("{} ({} points)", meta["radial_filters"].value("kind", std::string("table")),
                                 meta["radial_filters"]["points"].get<int>());
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_coeff: the so3krates metadata in '{}' is unreadable ({}); re-export the model: {}",
               path, e.what(), EXPORT_HINT);
  }
  if (model_format > SUPPORTED_MODEL_FORMAT)
    error->all(FLERR, "pair_coeff: '{}' uses so3krates model format {}, newer than this plugin understands "
               "({}); rebuild the plugin from the matching so3krates version", path, model_format,
               SUPPORTED_MODEL_FORMAT);
  if (model_dtype_name == "float64")
    model_dtype = torch::kFloat64;
  else if (model_dtype_name == "float32")
    model_dtype = torch::kFloat32;
  else
    error->all(FLERR, "pair_coeff: '{}' has dtype '{}'; re-export with --dtype float64 or float32", path,
               model_dtype_name);
  model.eval();
  model_path = path;
  model_loaded = true;
}

void PairSo3krates::log_model(const std::vector<std::string> &type_names)
{
  if (comm->me != 0) return;
  std::string table;
  for (size_t t = 0; t < type_names.size(); ++t) {
    int z = type_z[t + 1];
    table += fmt::format("    {:>4}  {:<4} {}\n", t + 1, type_names[t],
                         z ? fmt::format("(Z = {})", z) : std::string("(another pair style)"));
  }
  std::string known;
  for (int e : model_elements) known += " " + so3krates::element_symbol(e);
  utils::logmesg(lmp,
                 "pair_style so3krates: plugin {} (built for LAMMPS {}, libtorch {})\n"
                 "  model file         {}\n"
                 "  model              so3krates {}, format {}, elements{}\n"
                 "  cutoff             {} A, {} layer(s), interaction range {} A\n"
                 "  dtype, device      {}, cpu\n"
                 "  radial filters     {}\n"
                 "  LAMMPS type -> element\n{}",
                 SO3KRATES_PLUGIN_VERSION, SO3KRATES_LAMMPS_VERSION, TORCH_VERSION, model_path, model_version,
                 model_format, known, cutoff, num_layers, interaction_range, model_dtype_name, model_radial,
                 table);
}

/* ---------------------------------------------------------------------- */

void PairSo3krates::check_units()
{
  const std::string units = update->unit_style;
  // LAMMPS's own conversion, so that this plugin and LAMMPS (and the Python side, which reads the
  // factor back from the log line below) agree on what an eV is in kcal/mol.
  if (units == "metal")
    energy_conv = 1.0;
  else if (units == "real")
    energy_conv = utils::get_conversion_factor(utils::ENERGY, utils::METAL2REAL);
  else
    error->all(FLERR,
               "pair_style so3krates works with 'units metal' (eV, Angstrom: the model's own units) or "
               "'units real' (kcal/mol, converted), not 'units {}'; write 'units metal' at the top of the input",
               units);
  if (comm->me == 0 && units != logged_units) {
    utils::logmesg(lmp, "pair_style so3krates: 1 eV = {:.17g} {} (units {}, LAMMPS utils::get_conversion_factor)\n",
                   energy_conv, units == "metal" ? "eV" : "kcal/mol", units);
    logged_units = units;
  }
}

void PairSo3krates::configure_threads()
{
  // LAMMPS convention: OpenMP threads per rank come from OMP_NUM_THREADS or `package omp N`
  // (comm->nthreads, 1 when unset); `pair_style so3krates threads N` overrides it for torch.
  at::set_num_threads(threads_requested > 0 ? threads_requested : std::max(1, comm->nthreads));
}

PairSo3krates::Mode PairSo3krates::choose_mode()
{
  if (comm->nprocs != 1 || !domain->xperiodic || !domain->yperiodic || !domain->zperiodic) return GHOSTS;
  // The model's periodic search needs every cell height >= its cutoff (one image shell);
  // smaller boxes use ghost atoms instead.
  const double *h = domain->h;    // xprd yprd zprd yz xz xy; lattice rows a=(h0,0,0) b=(h5,h1,0) c=(h4,h3,h2)
  const double volume = h[0] * h[1] * h[2];
  const double bxc = std::sqrt(std::pow(h[1] * h[2], 2) + std::pow(h[5] * h[2], 2) +
                               std::pow(h[5] * h[3] - h[1] * h[4], 2));
  const double cxa = h[0] * std::sqrt(h[2] * h[2] + h[3] * h[3]);
  const double axb = h[0] * h[1];
  const double min_height = volume / std::max({bxc, cxa, axb});
  return min_height >= cutoff ? PERIODIC_OWNERS : GHOSTS;
}

void PairSo3krates::init_style()
{
  if (!model_loaded) error->all(FLERR, "pair_style so3krates needs 'pair_coeff * * model.pt El1 El2 ...'");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style so3krates requires Newton's third law for pairs (forces on ghost atoms are sent "
               "back to their owners): write 'newton on' (the default) before the pair_style command");
  check_units();
  if (comm->mode != Comm::SINGLE)
    error->all(FLERR, "pair_style so3krates needs 'comm_modify mode single' (one ghost cutoff for all types)");
  configure_threads();
  mode = choose_mode();

  // No LAMMPS neighbour list is requested: the model searches neighbours among the atoms it gets.
  if (mode == GHOSTS) {
    // Message passing: an owned atom feels atoms up to interaction_range away; atoms move up to
    // skin/2 each between re-neighbourings, so ghosts must reach interaction_range + skin.
    const double needed = interaction_range + neighbor->skin;
    if (comm->cutghostuser < needed) comm->cutghostuser = needed;
  }
  if (comm->me == 0) {
    const double ghost = mode == GHOSTS ? comm->cutghostuser : 0.0;
    if (ghost != logged_ghost_cutoff) {
      if (mode == GHOSTS)
        utils::logmesg(lmp,
                       "pair_style so3krates: ghost atoms out to {} A (comm cutoff; needs interaction range "
                       "{} A + skin {} A); {} torch thread(s) per rank\n",
                       ghost, interaction_range, neighbor->skin, at::get_num_threads());
      else
        utils::logmesg(lmp,
                       "pair_style so3krates: one rank, periodic box: owned atoms only, the model's periodic "
                       "neighbour search replaces ghost atoms; {} torch thread(s)\n",
                       at::get_num_threads());
      logged_ghost_cutoff = ghost;
    }
  }
}

double PairSo3krates::init_one(int, int)
{
  return cutoff;
}

/* ---------------------------------------------------------------------- */

void PairSo3krates::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (vflag_atom || cvflag_atom)
    error->all(FLERR,
               "pair_style so3krates does not provide per-atom virials (compute stress/atom or "
               "centroid/stress/atom): its many-body energy has no pair decomposition here; use the global "
               "pressure (thermo press, compute pressure) instead");

  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int ntotal = (mode == PERIODIC_OWNERS) ? nlocal : nlocal + atom->nghost;

  // Owned atoms first: the model counts the energy of the first num_owned atoms only.
  selected.clear();
  for (int i = 0; i < nlocal; ++i)
    if (type_z[type[i]] > 0) selected.push_back(i);
  const int num_owned = static_cast<int>(selected.size());
  if (num_owned == 0) return;    // nothing owned: zero energy, zero forces, zero virial
  if (ntotal > nlocal) {
    // Ghosts farther than the interaction range from every owned atom cannot change the owned
    // energies (the ghost shell also holds the skin, for atoms that move between re-neighbourings).
    // The distance to the bounding box of the owned atoms is a lower bound of the distance to
    // each of them, so this keeps every ghost that matters.
    double lo[3] = {x[selected[0]][0], x[selected[0]][1], x[selected[0]][2]};
    double hi[3] = {lo[0], lo[1], lo[2]};
    for (int k = 1; k < num_owned; ++k)
      for (int d = 0; d < 3; ++d) {
        lo[d] = std::min(lo[d], x[selected[k]][d]);
        hi[d] = std::max(hi[d], x[selected[k]][d]);
      }
    const double range_sq = interaction_range * interaction_range;
    for (int i = nlocal; i < ntotal; ++i) {
      if (type_z[type[i]] == 0) continue;
      double dist_sq = 0.0;
      for (int d = 0; d < 3; ++d) {
        const double out = std::max({lo[d] - x[i][d], 0.0, x[i][d] - hi[d]});
        dist_sq += out * out;
      }
      if (dist_sq <= range_sq) selected.push_back(i);
    }
  }
  const int n = static_cast<int>(selected.size());

  auto positions = torch::empty({n, 3}, torch::kFloat64);
  auto numbers = torch::empty({n}, torch::kLong);
  {
    auto p = positions.accessor<double, 2>();
    auto z = numbers.accessor<int64_t, 1>();
    for (int k = 0; k < n; ++k) {
      const int i = selected[k];
      p[k][0] = x[i][0];
      p[k][1] = x[i][1];
      p[k][2] = x[i][2];
      z[k] = type_z[type[i]];
    }
  }
  c10::IValue cell, pbc;    // None: the ghost point set is non-periodic
  if (mode == PERIODIC_OWNERS) {
    const double *h = domain->h;
    auto box = torch::zeros({3, 3}, torch::kFloat64);
    auto b = box.accessor<double, 2>();
    b[0][0] = h[0];
    b[1][0] = h[5];
    b[1][1] = h[1];
    b[2][0] = h[4];
    b[2][1] = h[3];
    b[2][2] = h[2];
    cell = box.to(model_dtype);
    pbc = torch::ones({3}, torch::kBool);
  }

  const bool want_virial = vflag_global != 0;
  std::vector<c10::IValue> inputs{positions.to(model_dtype), numbers, cell, pbc, c10::IValue(), c10::IValue(),
                                  static_cast<int64_t>(num_owned), true, want_virial};
  c10::IValue result;
  try {
    // The graph executor's autodiff-subgraph optimisation makes compute() (which differentiates
    // inside the graph) about 1.4x slower than the plain interpreter; off for this call only.
    torch::jit::GraphOptimizerEnabledGuard plain_interpreter(false);
    result = model.get_method("compute")(inputs);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style so3krates: the model failed on {} atoms ({} owned): {}", n, num_owned,
               describe(e));
  }
  const auto out = result.toGenericDict();

  auto forces = out.at("forces").toTensor().to(torch::kFloat64).contiguous();
  auto fk = forces.accessor<double, 2>();
  for (int k = 0; k < n; ++k) {
    double *fi = f[selected[k]];
    fi[0] += energy_conv * fk[k][0];
    fi[1] += energy_conv * fk[k][1];
    fi[2] += energy_conv * fk[k][2];
  }
  if (eflag_global) eng_vdwl += energy_conv * out.at("energy").toTensor().to(torch::kFloat64).item<double>();
  if (eflag_atom) {
    auto energies = out.at("energies").toTensor().to(torch::kFloat64).contiguous();
    auto e = energies.accessor<double, 1>();
    for (int k = 0; k < num_owned; ++k) eatom[selected[k]] += energy_conv * e[k];
  }
  if (want_virial) {
    // W = -sum_edges r (x) dE/dr: exactly the virial of the energy this rank counts, LAMMPS sign.
    auto w = out.at("virial").toTensor().to(torch::kFloat64).contiguous();
    auto v = w.accessor<double, 3>();
    virial[0] += energy_conv * v[0][0][0];
    virial[1] += energy_conv * v[0][1][1];
    virial[2] += energy_conv * v[0][2][2];
    virial[3] += energy_conv * v[0][0][1];
    virial[4] += energy_conv * v[0][0][2];
    virial[5] += energy_conv * v[0][1][2];
  }
}
