#include "pair_so3krates.h"

#include "archive_check.h"
#include "element_table.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <fstream>

using namespace LAMMPS_NS;

namespace {
// As the model itself (model/potential.py, MIN_DISTANCE_A): closer atoms are an error.
constexpr double MIN_DISTANCE_A = 0.01;
// Format 2 added the stage methods and the state widths this pair style needs; format 1 files
// only have compute() (whole-network calls, which would need ghosts num_layers cutoffs deep).
constexpr int SUPPORTED_MODEL_FORMAT = 2;
constexpr int FIRST_STAGED_FORMAT = 2;
const char *const METADATA_FILE = "so3krates.json";
const char *const EXPORT_HINT = "export a trained checkpoint with 'so3krates export CHECKPOINT -o model.pt'";
// A type whose LAMMPS mass differs from its element's standard mass by more than this (amu) is
// probably mapped to the wrong element in pair_coeff (e.g. 'O H' for types 1 = H, 2 = O).
constexpr double MASS_MISMATCH_AMU = 0.5;

// This rank's index among the ranks of its node, from the MPI launcher's environment (Open MPI,
// MPICH/Hydra, Slurm); -1 when none is set.
int node_local_rank()
{
  for (const char *name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID"}) {
    const char *value = std::getenv(name);
    if (value && *value) return std::atoi(value);
  }
  return -1;
}

std::string describe(const std::exception &e)
{
  if (auto c10err = dynamic_cast<const c10::Error *>(&e)) return c10err->what_without_backtrace();
  return e.what();
}

// Keep one direction of a pair whose two ends are both rows of this rank (messages then flow both
// ways, and the filter nets run once per pair): the receiver with the lower row, and for an atom
// and its own periodic image the vector whose first non-zero component is positive.
bool keep_direction(int row_i, int row_j, const double *d)
{
  if (row_i != row_j) return row_i < row_j;
  if (d[0] != 0.0) return d[0] > 0.0;
  if (d[1] != 0.0) return d[1] > 0.0;
  return d[2] > 0.0;
}

// d(sum_k <outputs_k, grads_k>)/d(inputs): only the outputs that depend on something that requires
// grad (an atom without neighbours gives a constant); undefined tensors for unused inputs.
torch::autograd::variable_list backward(const std::vector<torch::Tensor> &outputs,
                                        const std::vector<torch::Tensor> &grads,
                                        const std::vector<torch::Tensor> &inputs)
{
  torch::autograd::variable_list outs, gouts;
  for (size_t k = 0; k < outputs.size(); ++k)
    if (outputs[k].requires_grad() && grads[k].defined()) {
      outs.push_back(outputs[k]);
      gouts.push_back(grads[k]);
    }
  if (outs.empty()) return torch::autograd::variable_list(inputs.size());
  return torch::autograd::grad(outs, inputs, gouts, false, false, true);
}

// CPU time of this process: unlike wall time, it does not grow when other jobs share the cores.
double cpu_seconds()
{
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

void add_grads(std::vector<torch::Tensor> &sum, const torch::autograd::variable_list &grads, size_t first)
{
  for (size_t k = 0; k < sum.size(); ++k) {
    const auto &g = grads[first + k];
    if (g.defined()) sum[k] = sum[k].defined() ? sum[k] + g : g;
  }
}
}    // namespace

/* ---------------------------------------------------------------------- */

PairSo3krates::PairSo3krates(LAMMPS *lmp) :
    Pair(lmp), model_loaded(false), model_format(0), model_dtype(torch::kFloat64), cutoff(0.0),
    interaction_range(0.0), num_layers(0), num_features(0), num_sh(0), energy_conv(1.0), threads_requested(0),
    buf(nullptr), maxbuf(0), bufwidth(0), exchange_width(0), stat_steps(0), stat_owned(0),
    stat_computed(0), stat_halo(0), stat_foreign(0), stat_cpu(0), stat_exchange_cpu(0), stat_timed_steps(0), exchange_cpu(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  // Forces, global and per-atom virial all come from the pair forces dE/dr_ij of the edges (the
  // virial of an edge is split half and half between its two atoms), tallied in scatter().
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_SAME;
}

PairSo3krates::~PairSo3krates()
{
  if (copymode) return;
  memory->destroy(buf);
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
   pair_style so3krates [threads N] [device cpu|cuda|cuda:N]
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
    } else if (strcmp(arg[iarg], "device") == 0 && iarg + 1 < narg) {
      select_device(arg[iarg + 1]);
      iarg += 2;
    } else if (strcmp(arg[iarg], "charge") == 0 && iarg + 1 < narg) {
      // the structure's total charge (e), for models with that input (SO3LR)
      total_charge = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (total_charge != std::round(total_charge))
        error->all(FLERR, "pair_style so3krates charge {}: give the total charge as a whole number of "
                   "elementary charges (e.g. 'charge 0', 'charge -1')", arg[iarg + 1]);
      charge_given = true;
      iarg += 2;
    } else if (strcmp(arg[iarg], "multiplicity") == 0 && iarg + 1 < narg) {
      // the spin multiplicity 2S + 1 (1 singlet, 2 doublet, ...), for models with that input (SO3LR)
      multiplicity = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (multiplicity < 1)
        error->all(FLERR, "pair_style so3krates multiplicity {}: give the spin multiplicity 2S+1 as a positive "
                   "integer (1 singlet, 2 doublet, 3 triplet)", arg[iarg + 1]);
      multiplicity_given = true;
      iarg += 2;
    } else {
      error->all(FLERR,
                 "pair_style so3krates: unknown argument '{}'; write 'pair_style so3krates' "
                 "(optionally 'threads N', 'device cpu|cuda|cuda:N', and for models with those inputs "
                 "'charge Q' and 'multiplicity M'); the model file and elements go into "
                 "'pair_coeff * * model.pt C H O'",
                 arg[iarg]);
    }
  }
  if (domain->box_exist) check_units();
}

/* ----------------------------------------------------------------------
   device cpu | cuda (GPU = node-local rank % GPUs on the node) | cuda:N
------------------------------------------------------------------------- */

void PairSo3krates::select_device(const std::string &name)
{
  if (name == "cpu") {
    device_name = "cpu";
    return;
  }
  int index = -1;
  if (name.rfind("cuda:", 0) == 0) {
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos)
      error->all(FLERR, "pair_style so3krates device {}: write 'device cpu', 'device cuda' (one GPU per rank) or "
                 "'device cuda:N'", name);
    index = std::stoi(digits);
  } else if (name != "cuda") {
    error->all(FLERR, "pair_style so3krates device {}: write 'device cpu', 'device cuda' (one GPU per rank) or "
               "'device cuda:N'", name);
  }
  if (!torch::cuda::is_available())
    error->all(FLERR, "pair_style so3krates device {}: CUDA is not available on this machine (libtorch {} finds "
               "no CUDA GPU); write 'device cpu' or leave the keyword out", name, TORCH_VERSION);
  const int gpus = static_cast<int>(torch::cuda::device_count());
  if (index >= gpus)
    error->one(FLERR, "pair_style so3krates device {}: this node has {} CUDA device(s), cuda:0..cuda:{}", name,
               gpus, gpus - 1);
  if (index < 0) {    // per-rank assignment: the ranks of a node share its GPUs round-robin
    const int local = node_local_rank();
    index = (local >= 0 ? local : comm->me) % gpus;
  }
  device_name = "cuda:" + std::to_string(index);
  // The per-layer stages and the halo exchange (compute, call_model) build their tensors on the
  // CPU in this version: running them on a GPU needs those tensors moved, so refuse rather than
  // fall back to the CPU silently.
  error->all(FLERR, "pair_style so3krates device {}: this rank would use {}, but this plugin version computes "
             "on the CPU only; write 'device cpu' (or use the OpenMM or ASE engine with device 'cuda')", name,
             device_name);
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
  type_species.assign(ntypes + 1, -1);
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
    type_species[t] = static_cast<int>(std::find(model_elements.begin(), model_elements.end(), z) -
                                       model_elements.begin());
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
  // libtorch does not check the archive's CRCs: a damaged file would load and give wrong energies.
  const std::string damaged = so3krates::damaged_member(path);
  if (!damaged.empty())
    error->all(FLERR, "pair_coeff: model file '{}' is damaged ({}: its CRC-32 does not match the archive); "
               "copy or export it again: {}", path, damaged, EXPORT_HINT);
  torch::jit::ExtraFilesMap extra{{METADATA_FILE, ""}};
  try {
    model = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_coeff: '{}' is not a TorchScript model file ({}); {}", path, describe(e),
               EXPORT_HINT);
  }
  read_metadata(path, extra[METADATA_FILE]);
  // Files exported before stage_layer took num_pairs compute the mirrored message of every edge
  // (and drop those into halo rows): the same results, with more work on more than one rank.
  model_takes_pairs = false;
  if (model_format >= FIRST_STAGED_FORMAT && model.find_method("stage_layer"))
    model_takes_pairs = model.get_method("stage_layer").function().getSchema().argumentIndexWithName("num_pairs").has_value();
  // Long-range models (SO3LR) need the stages added with this plugin version (docs/model-format.md).
  if (long_range && !(model.find_method("stage_atom_properties") && model.find_method("stage_long_range")))
    error->all(FLERR, "pair_coeff: '{}' is a long-range model (long-range cutoff {} A) exported before the pair "
               "style could run those (it lacks the stage_long_range method); export it again with this "
               "so3krates ('so3krates pretrained so3lr -o so3lr.pt' or 'so3krates export')", path, long_range_cutoff);
  model.eval();
  // Only gradients with respect to inputs are taken: no graph for the weights.
  for (auto p : model.parameters()) p.set_requires_grad(false);
  model_path = path;
  model_loaded = true;
}

void PairSo3krates::read_metadata(const std::string &path, const std::string &text)
{
  if (text.empty())
    error->all(FLERR, "pair_coeff: '{}' is a TorchScript file but not a so3krates model (it has no extra/{} "
               "metadata); {}", path, METADATA_FILE, EXPORT_HINT);
  long_range_cutoff = 0.0;
  takes_charge = takes_multiplicity = false;
  try {
    auto meta = json::parse(text);
    if (meta.contains("long_range_cutoff_A")) long_range_cutoff = meta["long_range_cutoff_A"].get<double>();
    if (meta.contains("global_inputs"))
      for (const auto &name : meta["global_inputs"]) {
        takes_charge = takes_charge || name.get<std::string>() == "charge";
        takes_multiplicity = takes_multiplicity || name.get<std::string>() == "multiplicity";
      }
    model_format = meta.value("format_version", 0);
    model_version = meta.value("so3krates_version", std::string("?"));
    model_dtype_name = meta.at("dtype").get<std::string>();
    cutoff = meta.at("cutoff_A").get<double>();
    interaction_range = meta.at("interaction_range_A").get<double>();
    num_layers = meta.at("num_layers").get<int>();
    model_elements = meta.at("elements").get<std::vector<int>>();
    if (meta.contains("state")) {
      num_features = meta["state"].at("x").get<int>();
      num_sh = meta["state"].at("ev").get<int>();
    }
    model_radial = "exact";
    if (meta.contains("radial_filters") && meta["radial_filters"].contains("points"))
      model_radial = fmt::format("{} ({} points)", meta["radial_filters"].value("kind", std::string("table")),
                                 meta["radial_filters"]["points"].get<int>());
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_coeff: the so3krates metadata in '{}' is unreadable ({}); re-export the model: {}",
               path, e.what(), EXPORT_HINT);
  }
  long_range = long_range_cutoff > 0.0;
  if (model_format > SUPPORTED_MODEL_FORMAT)
    error->all(FLERR, "pair_coeff: '{}' uses so3krates model format {}, newer than this plugin understands "
               "({}); rebuild the plugin from the matching so3krates version", path, model_format,
               SUPPORTED_MODEL_FORMAT);
  if (model_format < FIRST_STAGED_FORMAT || num_features <= 0 || num_sh <= 0)
    error->all(FLERR, "pair_coeff: '{}' is a so3krates model of format {}, which lacks the per-layer stage "
               "methods this pair style runs (each rank computes its own atoms, layer by layer); re-export it "
               "with this so3krates: 'so3krates export CHECKPOINT -o model.pt'", path, model_format);
  if (model_dtype_name == "float64")
    model_dtype = torch::kFloat64;
  else if (model_dtype_name == "float32")
    model_dtype = torch::kFloat32;
  else
    error->all(FLERR, "pair_coeff: '{}' has dtype '{}'; re-export with --dtype float64 or float32", path,
               model_dtype_name);
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
  std::string long_range_line;
  if (long_range)
    long_range_line = fmt::format("  long-range cutoff  {} A (electrostatics / dispersion between all pairs within it)\n",
                                  long_range_cutoff);
  utils::logmesg(lmp,
                 "pair_style so3krates: plugin {} (built for LAMMPS {}, libtorch {})\n"
                 "  model file         {}\n"
                 "  model              so3krates {}, format {}, elements{}\n"
                 "  cutoff             {} A, {} layer(s), interaction range {} A\n{}"
                 "  dtype, device      {}, {}\n"
                 "  radial filters     {}\n"
                 "  LAMMPS type -> element\n{}",
                 SO3KRATES_PLUGIN_VERSION, SO3KRATES_LAMMPS_VERSION, TORCH_VERSION, model_path, model_version,
                 model_format, known, cutoff, num_layers, interaction_range, long_range_line, model_dtype_name,
                 device_name, model_radial, table);
}

/* ---------------------------------------------------------------------- */

void PairSo3krates::check_units()
{
  const std::string units = update->unit_style;
  if (units == "metal")
    energy_conv = utils::get_conversion_factor(utils::ENERGY, utils::NOCONVERT);
  else if (units == "real")
    energy_conv = utils::get_conversion_factor(utils::ENERGY, utils::METAL2REAL);    // LAMMPS' eV -> kcal/mol
  else
    error->all(FLERR,
               "pair_style so3krates works with 'units metal' (eV, Angstrom: the model's own units) or "
               "'units real' (kcal/mol, converted), not 'units {}'; write 'units metal' at the top of the input",
               units);
  // The Python side (lammps_pair/units.py) reads this factor back from the log: one source.
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

void PairSo3krates::init_style()
{
  if (!model_loaded) error->all(FLERR, "pair_style so3krates needs 'pair_coeff * * model.pt El1 El2 ...'");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style so3krates requires Newton's third law for pairs (forces on ghost atoms are sent "
               "back to their owners): write 'newton on' (the default) before the pair_style command");
  check_units();
  if (charge_given && !takes_charge)
    error->all(FLERR, "pair_style so3krates charge {}: the model '{}' has no total-charge input (only models "
               "such as SO3LR take one); leave the keyword out", total_charge, model_path);
  if (multiplicity_given && !takes_multiplicity)
    error->all(FLERR, "pair_style so3krates multiplicity {}: the model '{}' has no spin input (only models such "
               "as SO3LR take one); leave the keyword out", multiplicity, model_path);
  if (comm->mode != Comm::SINGLE)
    error->all(FLERR, "pair_style so3krates needs 'comm_modify mode single' (one ghost cutoff for all types)");
  configure_threads();
  // A full list: every edge i <- j with an owned receiver i; the sender j is owned or a ghost within
  // the cutoff, so ghosts need to reach only cutoff + skin (init_one), whatever the number of layers.
  neighbor->add_request(this, NeighConst::REQ_FULL);
  // One row of x and ev per atom; the owner map (2 numbers per atom) fits as well.
  comm_forward = comm_reverse = std::max(2, num_features + num_sh);
  stat_steps = stat_owned = stat_computed = stat_halo = stat_foreign = stat_cpu = stat_exchange_cpu = stat_timed_steps = 0.0;
  log_setup();
}

void PairSo3krates::log_setup()
{
  if (comm->me != 0) return;
  const double ghost = std::max(std::max(cutoff, long_range_cutoff) + neighbor->skin, comm->cutghostuser);
  const int exchanges = num_layers - 1;
  const std::string per_step =
      fmt::format("{} forward (x and ev, {} numbers per ghost atom) + {} reverse (their gradients)", exchanges,
                  num_features + num_sh, exchanges);
  std::string text = fmt::format(
      "pair_style so3krates: ghost atoms out to {} A ({}cutoff {} A + skin {} A); {} torch thread(s) per rank\n"
      "  halo exchanges     {}; each rank computes the {} layer(s) for its owned atoms only\n",
      ghost, long_range ? "long-range " : "", std::max(cutoff, long_range_cutoff), neighbor->skin, at::get_num_threads(),
      comm->nprocs == 1 ? "none on one rank (each ghost is an image of an owned atom and reads its state); per "
                          "step on more ranks: " + per_step
                        : "per step " + per_step,
      num_layers);
  if (long_range)
    text += fmt::format(
        "  long range         electrostatics / dispersion over the pairs within {} A (short-range edges: within {} "
        "A); per step 1 forward (partial charge, Hirshfeld ratio) + 1 reverse exchange and 2 MPI_Allreduce "
        "(charge conservation over all ranks)\n", long_range_cutoff, cutoff);
  if (takes_charge || takes_multiplicity)
    text += fmt::format("  structure          total charge {} e, multiplicity {} (pair_style keywords charge, "
                        "multiplicity)\n", total_charge, multiplicity);
  if (text != logged_setup) utils::logmesg(lmp, text);
  logged_setup = text;
}

double PairSo3krates::init_one(int i, int j)
{
  if (i == j) check_mass(i);
  // a long-range model's pairs (and so the ghost atoms) reach the long-range cutoff; the short-range
  // edges are the pairs of the same list within the cutoff
  return std::max(cutoff, long_range_cutoff);
}

// Masses are set after pair_coeff (read_data, `mass`), so they are checked here, once per type.
void PairSo3krates::check_mass(int type)
{
  const int z = type_z[type];
  if (z <= 0 || !atom->mass || !atom->mass_setflag || !atom->mass_setflag[type] || comm->me != 0) return;
  const double mass = atom->mass[type], expected = so3krates::standard_mass(z);
  if (std::fabs(mass - expected) <= MASS_MISMATCH_AMU || mass_warned.count(type)) return;
  mass_warned.insert(type);
  error->warning(FLERR,
                 "pair_style so3krates: atom type {} has mass {:.6g} but pair_coeff maps it to {} (standard mass "
                 "{:.6g}); check the element order in pair_coeff (one per type, in type order) unless the mass "
                 "is meant (an isotope)",
                 type, mass, so3krates::element_symbol(z), expected);
}

/* ----------------------------------------------------------------------
   compute: prepare (owners of ghosts, edges) -> call_model (stages + halo exchanges) -> scatter
------------------------------------------------------------------------- */

void PairSo3krates::compute(int eflag, int vflag)
{
  const double cpu_start = cpu_seconds();
  exchange_cpu = 0.0;
  ev_init(eflag, vflag);
  prepare();
  torch::Tensor energies, edge_grad;
  if (owned.empty())
    idle_exchanges();    // nothing to compute here, but the exchanges are collective
  else
    call_model(energies, edge_grad);
  if (!owned.empty()) scatter(energies, edge_grad);
  stat_steps += 1;
  stat_owned += owned.size();
  stat_computed += owned.size();    // stage_layer returns the state of the owned rows only
  stat_halo += halo.size();
  int foreign = 0;
  for (int g = atom->nlocal; g < atom->nlocal + atom->nghost; ++g) foreign += owner[g] < 0;
  stat_foreign += foreign;
  // CPU time of the steps of the run only (not of the set-up call before the first step, which
  // LAMMPS does not count in its loop time either).
  if (!update->setupflag) {
    stat_cpu += cpu_seconds() - cpu_start - exchange_cpu;
    stat_exchange_cpu += exchange_cpu;
    stat_timed_steps += 1;
  }
}

void PairSo3krates::prepare()
{
  grow_buffer();
  // Ghosts (and the order of owned atoms) change only when LAMMPS re-neighbours, which all ranks do
  // in the same step: the refresh is a collective exchange, so every rank must decide alike.
  if (neighbor->ago == 0) refresh_owners();
  if (static_cast<int>(owner.size()) != atom->nlocal + atom->nghost)
    error->one(FLERR, "pair_style so3krates: the ghost atoms changed without re-neighbouring ({} known, {} now)",
               owner.size(), atom->nlocal + atom->nghost);
  build_edges();
}

void PairSo3krates::grow_buffer()
{
  if (atom->nmax > maxbuf || bufwidth != comm_forward) {
    maxbuf = atom->nmax;
    bufwidth = comm_forward;
    memory->destroy(buf);
    memory->create(buf, maxbuf, bufwidth, "pair:so3krates_exchange");
  }
}

// Which ghosts are images of atoms this rank owns: every atom sends (rank, local index) to its
// ghost copies.
void PairSo3krates::refresh_owners()
{
  const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
  for (int i = 0; i < nlocal; ++i) {
    buf[i][0] = comm->me;
    buf[i][1] = i;
  }
  exchange_width = 2;
  timed_forward(2);
  owner.assign(nall, -1);
  for (int i = 0; i < nlocal; ++i) owner[i] = i;
  for (int g = nlocal; g < nall; ++g)
    if (static_cast<int>(buf[g][0]) == comm->me) owner[g] = static_cast<int>(buf[g][1]);
}

// Edges i <- j within the cutoff with an owned receiver. When both ends have rows here (owned, or a
// ghost image of an owned atom) one direction stands for both (half list); a sender owned by
// another rank gets a halo row, and the edge carries the message i <- j only (that rank computes
// j <- i). The pairs come first (num_pairs of them), then the one-way edges: a model whose
// stage_layer takes num_pairs then computes no message into a halo row, nor a halo row's query.
void PairSo3krates::build_edges()
{
  const int *type = atom->type;
  const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
  row_of.assign(nall, -1);
  owned.clear();
  for (int i = 0; i < nlocal; ++i)
    if (type_z[type[i]] > 0) {
      row_of[i] = static_cast<int>(owned.size());
      owned.push_back(i);
    }
  if (long_range) lr_row_of = row_of;    // the same owned rows; the halo rows are set by collect_edges
  collect_edges(cutoff, true, row_of, halo, edge_i, edge_j, atom_i, atom_j, edge_vec, num_pairs);
  if (long_range)
    collect_edges(long_range_cutoff, false, lr_row_of, lr_halo, lr_i, lr_j, lr_atom_i, lr_atom_j, lr_vec,
                  lr_num_pairs);
}

// The edges within `range` of the neighbour list into the given row map, halo rows and edge arrays
// (short-range edges and, for long-range models, the long-range pairs: the same contract).
void PairSo3krates::collect_edges(double range, bool check_close, std::vector<int> &rows,
                                  std::vector<int> &halo_rows, std::vector<int64_t> &ei, std::vector<int64_t> &ej,
                                  std::vector<int> &ai, std::vector<int> &aj, std::vector<double> &vec,
                                  int64_t &pairs)
{
  double **x = atom->x;
  const int *type = atom->type;
  const int n_own = static_cast<int>(owned.size());
  halo_rows.clear();
  ei.clear(), ej.clear(), ai.clear(), aj.clear(), vec.clear();
  cross_i.clear(), cross_j.clear(), cross_atom_i.clear(), cross_atom_j.clear(), cross_vec.clear();
  const double range_sq = range * range;
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    const int ri = rows[i];
    if (ri < 0 || ri >= n_own) continue;
    const int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_z[type[j]] == 0) continue;
      const double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
      const double rsq = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
      if (rsq >= range_sq) continue;
      if (check_close && rsq < MIN_DISTANCE_A * MIN_DISTANCE_A)    // no direction, and no physical structure gets there
        error->one(FLERR,
                   "pair_style so3krates: atoms with IDs {} and {} are closer than {} A: two atoms at the same "
                   "position; remove the duplicated atom from the data file (or, in MD, shorten the time step)",
                   std::min(atom->tag[i], atom->tag[j]), std::max(atom->tag[i], atom->tag[j]), MIN_DISTANCE_A);
      if (owner[j] < 0) {    // a sender owned by another rank: after the pairs (see above)
        if (rows[j] < 0) {
          rows[j] = n_own + static_cast<int>(halo_rows.size());
          halo_rows.push_back(j);
        }
        cross_i.push_back(ri);
        cross_j.push_back(rows[j]);
        cross_atom_j.push_back(j);
        cross_atom_i.push_back(i);
        cross_vec.insert(cross_vec.end(), d, d + 3);
        continue;
      }
      const int rj = rows[owner[j]];
      if (!keep_direction(ri, rj, d)) continue;
      ei.push_back(ri);
      ej.push_back(rj);
      ai.push_back(i);
      aj.push_back(j);
      vec.insert(vec.end(), d, d + 3);
    }
  }
  pairs = static_cast<int64_t>(ei.size());
  ei.insert(ei.end(), cross_i.begin(), cross_i.end());
  ej.insert(ej.end(), cross_j.begin(), cross_j.end());
  ai.insert(ai.end(), cross_atom_i.begin(), cross_atom_i.end());
  aj.insert(aj.end(), cross_atom_j.begin(), cross_atom_j.end());
  vec.insert(vec.end(), cross_vec.begin(), cross_vec.end());
}

/* ----------------------------------------------------------------------
   The model, stage by stage (docs/model-format.md, "Stages"): geometry of the edges, embedding,
   layers 0 .. T-1 (each on the owned rows, with a forward halo exchange in between), readout. The
   backward pass goes stage by stage in reverse, with a reverse halo exchange of the gradient with
   respect to the halo rows' state. Gradients with respect to the per-edge geometry are summed over
   the stages and taken back to the edge vectors at the end: edge_grad = dE/dr_ij (E, 3).
------------------------------------------------------------------------- */

void PairSo3krates::call_model(torch::Tensor &energies, torch::Tensor &edge_grad)
{
  const int64_t n_own = static_cast<int64_t>(owned.size()), n_rows = n_own + static_cast<int64_t>(halo.size());
  const int64_t num_edges = static_cast<int64_t>(edge_i.size());
  auto species = torch::empty({n_rows}, torch::kLong);
  int64_t *z = species.data_ptr<int64_t>();
  for (int64_t k = 0; k < n_rows; ++k) z[k] = type_species[atom->type[k < n_own ? owned[k] : halo[k - n_own]]];
  auto idx_i = torch::from_blob(edge_i.data(), {num_edges}, torch::kLong);
  auto idx_j = torch::from_blob(edge_j.data(), {num_edges}, torch::kLong);
  auto vectors = torch::from_blob(edge_vec.data(), {num_edges, 3}, torch::kFloat64).to(model_dtype);
  vectors.requires_grad_(true);
  try {
    // The graph executor's autodiff-subgraph optimisation slows these calls down (docs/benchmarks.md);
    // the plain interpreter records the autograd graph as eager code would.
    torch::jit::GraphOptimizerEnabledGuard plain_interpreter(false);
    auto geometry = model.get_method("stage_geometry")({vectors}).toTensorVector();
    std::vector<torch::Tensor> leaves, geometry_float, geometry_grad;
    for (auto &g : geometry) {
      if (g.is_floating_point()) {
        geometry_float.push_back(g);
        leaves.push_back(g.detach().requires_grad_(true));
      } else {
        leaves.push_back(g);
      }
    }
    std::vector<torch::Tensor> float_leaves;
    for (auto &l : leaves)
      if (l.is_floating_point()) float_leaves.push_back(l);
    geometry_grad.resize(float_leaves.size());

    auto state = embed_species(species);
    std::vector<torch::Tensor> x_in(num_layers), ev_in(num_layers), x_out(num_layers), ev_out(num_layers);
    x_in[0] = state[0];
    ev_in[0] = state[1];
    for (int t = 0; t < num_layers; ++t) {
      std::vector<c10::IValue> args{static_cast<int64_t>(t), x_in[t], ev_in[t], leaves, idx_i, idx_j, n_own};
      // with no halo rows every edge is a pair: the default (-1) computes the same, without slicing
      if (model_takes_pairs && n_rows > n_own) args.emplace_back(num_pairs);
      auto out = model.get_method("stage_layer")(args).toTensorVector();
      x_out[t] = out[0];
      ev_out[t] = out[1];
      if (t + 1 < num_layers) halo_forward(x_out[t], ev_out[t], x_in[t + 1], ev_in[t + 1]);
    }
    auto x_final = x_out[num_layers - 1].detach().requires_grad_(true);
    // all rows' elements: the pair terms (ZBL) read the senders' too
    energies = model.get_method("stage_readout")({x_final, species, leaves, idx_i, idx_j}).toTensor();

    std::vector<torch::Tensor> inputs{x_final};
    inputs.insert(inputs.end(), float_leaves.begin(), float_leaves.end());
    auto grads = backward({energies.sum()}, {torch::ones({}, energies.options())}, inputs);
    add_grads(geometry_grad, grads, 1);
    auto gx = grads[0].defined() ? grads[0] : torch::zeros_like(x_final);
    if (long_range) {    // electrostatics and dispersion: their energy, and their gradient into x_final
      torch::Tensor gx_long_range;
      energies = energies.detach() + long_range_terms(x_final, species, gx_long_range, lr_edge_grad);
      if (gx_long_range.defined()) gx = gx + gx_long_range;
    }
    auto gev = torch::zeros_like(ev_out[num_layers - 1]);
    for (int t = num_layers - 1; t >= 0; --t) {
      inputs.clear();
      if (t > 0) inputs = {x_in[t], ev_in[t]};
      inputs.insert(inputs.end(), float_leaves.begin(), float_leaves.end());
      grads = backward({x_out[t], ev_out[t]}, {gx, gev}, inputs);
      add_grads(geometry_grad, grads, t > 0 ? 2 : 0);
      if (t > 0)
        halo_reverse(grads[0].defined() ? grads[0] : torch::zeros_like(x_in[t]),
                     grads[1].defined() ? grads[1] : torch::zeros_like(ev_in[t]), gx, gev);
    }
    edge_grad = backward(geometry_float, geometry_grad, {vectors})[0];
    if (!edge_grad.defined()) edge_grad = torch::zeros_like(vectors);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style so3krates: the model failed on {} owned atoms ({} halo atoms, {} edges, {} "
               "long-range pairs): {}", n_own, halo.size(), num_edges, lr_i.size(), describe(e));
  }
  energies = energies.detach().to(torch::kFloat64).contiguous();
  edge_grad = edge_grad.detach().to(torch::kFloat64).contiguous();
  if (long_range) lr_edge_grad = lr_edge_grad.detach().to(torch::kFloat64).contiguous();
}

// A rank that owns no model atoms takes part in the collective exchanges with nothing to add.
// The collectives in call_model's order: element counts (embed_species), the layers' forward
// exchanges, the long-range part (long_range_terms), the layers' reverse exchanges.
void PairSo3krates::idle_exchanges()
{
  const bool global_inputs = long_range || takes_charge || takes_multiplicity;
  if (global_inputs) {
    std::vector<double> counts(model_elements.size(), 0.0), total(model_elements.size(), 0.0);
    MPI_Allreduce(counts.data(), total.data(), static_cast<int>(counts.size()), MPI_DOUBLE, MPI_SUM, world);
  }
  if (comm->nprocs == 1) return;
  const int width = num_features + num_sh;
  const int nall = atom->nlocal + atom->nghost;
  exchange_width = width;
  for (int t = 0; t + 1 < num_layers; ++t) timed_forward(width);
  if (long_range) {
    global_sum(0.0);
    timed_forward(2);
    for (int i = 0; i < nall; ++i) std::fill(buf[i], buf[i] + 2, 0.0);
    timed_reverse(2);
    global_sum(0.0);
  }
  for (int t = 0; t + 1 < num_layers; ++t) {
    for (int i = 0; i < nall; ++i) std::fill(buf[i], buf[i] + width, 0.0);
    timed_reverse(width);
  }
}

double PairSo3krates::global_sum(double value)
{
  double total = value;
  MPI_Allreduce(&value, &total, 1, MPI_DOUBLE, MPI_SUM, world);
  return total;
}

// stage_embed of all rows. A model with total-charge / spin embeddings gets the structure's charge
// and multiplicity and its atoms per element over all ranks (the embeddings' attention is a sum over
// all atoms); the total number of model atoms is also what the charge conservation divides by.
std::vector<torch::Tensor> PairSo3krates::embed_species(const torch::Tensor &species)
{
  if (!(long_range || takes_charge || takes_multiplicity))
    return model.get_method("stage_embed")({species}).toTensorVector();    // short-range models: as ever
  const int64_t n_own = static_cast<int64_t>(owned.size());
  const int64_t *z = species.data_ptr<int64_t>();
  std::vector<double> counts(model_elements.size(), 0.0), total(model_elements.size(), 0.0);
  for (int64_t k = 0; k < n_own; ++k) counts[z[k]] += 1.0;
  MPI_Allreduce(counts.data(), total.data(), static_cast<int>(counts.size()), MPI_DOUBLE, MPI_SUM, world);
  model_atoms_all = 0.0;
  for (double c : total) model_atoms_all += c;
  auto element_counts = torch::from_blob(total.data(), {static_cast<int64_t>(total.size())}, torch::kFloat64).clone();
  return model.get_method("stage_embed")({species, total_charge, static_cast<int64_t>(multiplicity), element_counts})
      .toTensorVector();
}

// Electrostatics and dispersion of the owned atoms (docs/model-format.md, "Stages"): the raw partial
// charges q~ and Hirshfeld ratios of the owned atoms from their final x; the charge conservation
// q_i = q~_i + (Q - sum_all q~) / N_all with the sum over all ranks; charges and ratios of the halo
// rows (senders owned elsewhere) by forward communication; the pair energies (each pair once over all
// ranks: half to each end of a pair with both ends here, half to the owned end of the others). The
// backward: dE/d(halo charge, ratio) back to the owners by reverse communication, then through the
// conservation (dE/dq~_i = dE/dq_i - sum_all dE/dq_k / N_all, another global sum) into x_final (gx).
// lr_grad = dE/dr of the long-range pairs.
torch::Tensor PairSo3krates::long_range_terms(const torch::Tensor &x_final, const torch::Tensor &species,
                                              torch::Tensor &gx, torch::Tensor &lr_grad)
{
  const int64_t n_own = static_cast<int64_t>(owned.size()), n_halo = static_cast<int64_t>(lr_halo.size());
  const int64_t num_lr = static_cast<int64_t>(lr_i.size());
  const bool exchange = comm->nprocs > 1;
  auto own_species = species.slice(0, 0, n_own);
  auto properties = model.get_method("stage_atom_properties")({x_final, own_species}).toTensorVector();
  const torch::Tensor &raw_charges = properties[0], &ratios = properties[1];
  const bool has_charges = raw_charges.numel() > 0, has_ratios = ratios.numel() > 0;
  const double raw_sum = global_sum(has_charges ? raw_charges.detach().sum().item<double>() : 0.0);
  const double correction = (total_charge - raw_sum) / model_atoms_all;
  auto charges_own = has_charges ? raw_charges.detach().to(torch::kFloat64) + correction
                                 : torch::zeros({n_own}, torch::kFloat64);
  auto ratios_own = has_ratios ? ratios.detach().to(torch::kFloat64) : torch::zeros({n_own}, torch::kFloat64);

  // forward: (q, h) of the owned atoms -> their ghost copies -> the halo rows
  auto halo_values = torch::zeros({n_halo, 2}, torch::kFloat64);
  if (exchange) {
    const double *q = charges_own.data_ptr<double>(), *h = ratios_own.data_ptr<double>();
    for (int64_t k = 0; k < n_own; ++k) {
      buf[owned[k]][0] = q[k];
      buf[owned[k]][1] = h[k];
    }
    timed_forward(2);
    double *v = halo_values.data_ptr<double>();
    for (int64_t k = 0; k < n_halo; ++k) {
      v[2 * k] = buf[lr_halo[k]][0];
      v[2 * k + 1] = buf[lr_halo[k]][1];
    }
  }
  auto all_species = torch::empty({n_own + n_halo}, torch::kLong);
  int64_t *z = all_species.data_ptr<int64_t>();
  const int64_t *zs = species.data_ptr<int64_t>();
  for (int64_t k = 0; k < n_own; ++k) z[k] = zs[k];
  for (int64_t k = 0; k < n_halo; ++k) z[n_own + k] = type_species[atom->type[lr_halo[k]]];
  auto charges_all = torch::cat({charges_own, halo_values.select(1, 0)}).to(model_dtype).requires_grad_(true);
  auto ratios_all = torch::cat({ratios_own, halo_values.select(1, 1)}).to(model_dtype).requires_grad_(true);
  auto idx_i = torch::from_blob(lr_i.data(), {num_lr}, torch::kLong);
  auto idx_j = torch::from_blob(lr_j.data(), {num_lr}, torch::kLong);
  auto vectors = torch::from_blob(lr_vec.data(), {num_lr, 3}, torch::kFloat64).to(model_dtype).requires_grad_(true);
  auto energies = model.get_method("stage_long_range")({charges_all, ratios_all, all_species, vectors, idx_i, idx_j,
                                                       n_own, lr_num_pairs}).toTensor();
  auto grads = backward({energies.sum()}, {torch::ones({}, energies.options())}, {charges_all, ratios_all, vectors});
  lr_grad = grads[2].defined() ? grads[2] : torch::zeros_like(vectors);
  auto g_all = torch::stack({grads[0].defined() ? grads[0] : torch::zeros_like(charges_all),
                             grads[1].defined() ? grads[1] : torch::zeros_like(ratios_all)}, 1)
                   .to(torch::kFloat64).contiguous();

  // reverse: dE/d(q, h) of the halo rows -> summed onto their owners
  auto g_own = g_all.slice(0, 0, n_own).clone();
  if (exchange) {
    const double *g = g_all.data_ptr<double>();
    for (int i = 0; i < atom->nlocal + atom->nghost; ++i) std::fill(buf[i], buf[i] + 2, 0.0);
    for (int64_t k = 0; k < n_halo; ++k) {
      buf[lr_halo[k]][0] = g[2 * (n_own + k)];
      buf[lr_halo[k]][1] = g[2 * (n_own + k) + 1];
    }
    timed_reverse(2);
    double *o = g_own.data_ptr<double>();
    for (int64_t k = 0; k < n_own; ++k) {
      o[2 * k] += buf[owned[k]][0];
      o[2 * k + 1] += buf[owned[k]][1];
    }
  }
  // through the charge conservation: d q_k / d q~_i = delta_ki - 1 / N_all
  const double mean_grad = global_sum(g_own.select(1, 0).sum().item<double>()) / model_atoms_all;
  auto g_raw = (g_own.select(1, 0) - mean_grad).to(model_dtype);
  auto g_ratio = g_own.select(1, 1).to(model_dtype);
  std::vector<torch::Tensor> outputs, output_grads;
  if (has_charges) outputs.push_back(raw_charges), output_grads.push_back(g_raw);
  if (has_ratios) outputs.push_back(ratios), output_grads.push_back(g_ratio);
  gx = backward(outputs, output_grads, {x_final})[0];
  return energies.detach();
}


// State after a layer: owned rows (x, ev) -> LAMMPS forward communication -> halo rows. Returns the
// next layer's input for all rows, as new leaves of the autograd graph.
void PairSo3krates::halo_forward(const torch::Tensor &x, const torch::Tensor &ev, torch::Tensor &x_all,
                                 torch::Tensor &ev_all)
{
  if (comm->nprocs == 1) {    // every ghost is an image of an owned atom: no halo rows
    x_all = x.detach().requires_grad_(true);
    ev_all = ev.detach().requires_grad_(true);
    return;
  }
  const int width = num_features + num_sh;
  auto own = torch::cat({x.detach(), ev.detach()}, 1).to(torch::kFloat64).contiguous();
  const double *p = own.data_ptr<double>();
  for (size_t k = 0; k < owned.size(); ++k) std::memcpy(buf[owned[k]], p + k * width, width * sizeof(double));
  timed_forward(width);
  auto ghost = torch::empty({static_cast<int64_t>(halo.size()), width}, torch::kFloat64);
  double *q = ghost.data_ptr<double>();
  for (size_t k = 0; k < halo.size(); ++k) std::memcpy(q + k * width, buf[halo[k]], width * sizeof(double));
  ghost = ghost.to(x.scalar_type());
  x_all = torch::cat({x.detach(), ghost.slice(1, 0, num_features)}).requires_grad_(true);
  ev_all = torch::cat({ev.detach(), ghost.slice(1, num_features, width)}).requires_grad_(true);
}

// Gradient with respect to a layer's input state (all rows) -> gradient with respect to the owned
// rows of the previous layer's output: the halo rows' part is summed onto the owners by LAMMPS'
// reverse communication (through every ghost copy, on any rank).
void PairSo3krates::halo_reverse(const torch::Tensor &gx_all, const torch::Tensor &gev_all, torch::Tensor &gx,
                                 torch::Tensor &gev)
{
  const int64_t n_own = static_cast<int64_t>(owned.size());
  if (comm->nprocs == 1) {
    gx = gx_all;
    gev = gev_all;
    return;
  }
  const int width = num_features + num_sh;
  auto all = torch::cat({gx_all, gev_all}, 1).to(torch::kFloat64).contiguous();
  const double *p = all.data_ptr<double>();
  for (int i = 0; i < atom->nlocal + atom->nghost; ++i) std::fill(buf[i], buf[i] + width, 0.0);
  for (size_t k = 0; k < halo.size(); ++k)
    std::memcpy(buf[halo[k]], p + (n_own + k) * width, width * sizeof(double));
  timed_reverse(width);
  auto back = torch::empty({n_own, width}, torch::kFloat64);
  double *q = back.data_ptr<double>();
  for (int64_t k = 0; k < n_own; ++k) std::memcpy(q + k * width, buf[owned[k]], width * sizeof(double));
  auto total = (all.slice(0, 0, n_own) + back).to(gx_all.scalar_type());
  gx = total.slice(1, 0, num_features);
  gev = total.slice(1, num_features, width);
}

/* ----------------------------------------------------------------------
   Results: per-atom energies of the owned atoms; forces, global and per-atom virial from the pair
   forces dE/dr_ij of the edges (r_ij = x_j - x_i: F_i += dE/dr_ij, F_j -= dE/dr_ij; the edge's
   virial W = -r_ij (x) dE/dr_ij, symmetrised, half to each end). Forces and per-atom virials of
   ghost atoms go back to their owners through LAMMPS (newton on).
------------------------------------------------------------------------- */

void PairSo3krates::scatter(const torch::Tensor &energies, const torch::Tensor &edge_grad)
{
  const double *e = energies.data_ptr<double>();
  if (eflag_global)
    for (size_t k = 0; k < owned.size(); ++k) eng_vdwl += energy_conv * e[k];
  if (eflag_atom)
    for (size_t k = 0; k < owned.size(); ++k) eatom[owned[k]] += energy_conv * e[k];
  tally_edges(atom_i, atom_j, edge_vec, edge_grad);
  if (long_range) tally_edges(lr_atom_i, lr_atom_j, lr_vec, lr_edge_grad);
}

// Forces and virials of edges i <- j (LAMMPS indices ai, aj; vectors vec) from grad = dE/dr_ij.
void PairSo3krates::tally_edges(const std::vector<int> &ai, const std::vector<int> &aj,
                                const std::vector<double> &vec, const torch::Tensor &grad)
{
  double **f = atom->f;
  const double *g = grad.data_ptr<double>();
  for (size_t k = 0; k < ai.size(); ++k) {
    const double *gk = g + 3 * k, *r = vec.data() + 3 * k;
    double *fi = f[ai[k]], *fj = f[aj[k]];
    for (int d = 0; d < 3; ++d) {
      fi[d] += energy_conv * gk[d];
      fj[d] -= energy_conv * gk[d];
    }
    if (!vflag_either) continue;
    const double w[6] = {-energy_conv * r[0] * gk[0], -energy_conv * r[1] * gk[1], -energy_conv * r[2] * gk[2],
                         -0.5 * energy_conv * (r[0] * gk[1] + r[1] * gk[0]),
                         -0.5 * energy_conv * (r[0] * gk[2] + r[2] * gk[0]),
                         -0.5 * energy_conv * (r[1] * gk[2] + r[2] * gk[1])};
    if (vflag_global)
      for (int c = 0; c < 6; ++c) virial[c] += w[c];
    if (vflag_atom)
      for (int c = 0; c < 6; ++c) {
        vatom[ai[k]][c] += 0.5 * w[c];
        vatom[aj[k]][c] += 0.5 * w[c];
      }
  }
}

void PairSo3krates::timed_forward(int width)
{
  const double start = cpu_seconds();
  exchange_width = width;
  comm->forward_comm(this, width);
  exchange_cpu += cpu_seconds() - start;
}

void PairSo3krates::timed_reverse(int width)
{
  const double start = cpu_seconds();
  exchange_width = width;
  comm->reverse_comm(this, width);
  exchange_cpu += cpu_seconds() - start;
}

/* ----------------------------------------------------------------------
   Exchange buffer <-> LAMMPS communication buffers (exchange_width numbers per atom)
------------------------------------------------------------------------- */

int PairSo3krates::pack_forward_comm(int n, int *list, double *out, int, int *)
{
  for (int k = 0; k < n; ++k) std::memcpy(out + k * exchange_width, buf[list[k]], exchange_width * sizeof(double));
  return n * exchange_width;
}

void PairSo3krates::unpack_forward_comm(int n, int first, double *in)
{
  for (int k = 0; k < n; ++k) std::memcpy(buf[first + k], in + k * exchange_width, exchange_width * sizeof(double));
}

int PairSo3krates::pack_reverse_comm(int n, int first, double *out)
{
  for (int k = 0; k < n; ++k) std::memcpy(out + k * exchange_width, buf[first + k], exchange_width * sizeof(double));
  return n * exchange_width;
}

void PairSo3krates::unpack_reverse_comm(int n, int *list, double *in)
{
  for (int k = 0; k < n; ++k) {
    double *row = buf[list[k]];
    for (int c = 0; c < exchange_width; ++c) row[c] += in[k * exchange_width + c];
  }
}

double PairSo3krates::memory_usage()
{
  return Pair::memory_usage() + static_cast<double>(maxbuf) * comm_forward * sizeof(double) +
      edge_vec.capacity() * sizeof(double) +
      (edge_i.capacity() + edge_j.capacity()) * sizeof(int64_t) +
      (atom_i.capacity() + atom_j.capacity() + owner.capacity() + row_of.capacity()) * sizeof(int);
}

/* ----------------------------------------------------------------------
   End of a run: how much each rank computed, and the halo traffic
------------------------------------------------------------------------- */

void PairSo3krates::finish()
{
  const double ratio = stat_owned > 0 ? stat_computed / stat_owned : 0.0;
  const double cpu = stat_timed_steps > 0 ? stat_cpu / stat_timed_steps : 0.0;
  double max_ratio = 0.0, max_cpu = 0.0;
  const double exchange = stat_timed_steps > 0 ? stat_exchange_cpu / stat_timed_steps : 0.0;
  double sums[6] = {stat_owned, stat_halo, stat_foreign, stat_steps, cpu, exchange}, total[6];
  MPI_Allreduce(&ratio, &max_ratio, 1, MPI_DOUBLE, MPI_MAX, world);
  MPI_Allreduce(&cpu, &max_cpu, 1, MPI_DOUBLE, MPI_MAX, world);
  MPI_Allreduce(sums, total, 6, MPI_DOUBLE, MPI_SUM, world);
  if (comm->me == 0 && total[3] > 0) {
    const double per = 1.0 / total[3];    // per rank and step (mean over ranks)
    const int exchanges = comm->nprocs == 1 ? 0 : 2 * (num_layers - 1);
    const double bytes = total[2] * per * exchanges * (num_features + num_sh) * sizeof(double);
    utils::logmesg(lmp,
                   "so3krates: computed/owned atoms = {:.2f} (max over ranks)\n"
                   "so3krates: per rank and step (mean over ranks): {:.1f} owned atoms, {:.1f} halo atoms read "
                   "(senders owned by another rank), {:.1f} ghosts owned by another rank; {} halo exchanges, "
                   "{:.0f} bytes received + sent\n",
                   max_ratio, total[0] * per, total[1] * per, total[2] * per, exchanges, bytes);
    // CPU time, not wall time: a measure of the work that other jobs on shared cores do not inflate.
    utils::logmesg(lmp,
                   "so3krates: pair style CPU time per step without the exchanges = {:.3f} ms max over ranks, "
                   "{:.3f} ms summed over ranks; in the halo exchanges {:.3f} ms per rank\n",
                   1000 * max_cpu, 1000 * total[4], 1000 * total[5] / comm->nprocs);
  }
  stat_steps = stat_owned = stat_computed = stat_halo = stat_foreign = stat_cpu = stat_exchange_cpu = stat_timed_steps = 0.0;
}
