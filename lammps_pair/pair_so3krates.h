/* pair_style so3krates: an exported SO3krates TorchScript model as a LAMMPS pair style.

   SO3krates is message passing: an atom's energy depends on atoms up to
   num_layers * cutoff (the interaction range) away. Two evaluation modes, both exact:
   - GHOSTS (general, any number of ranks): owned + ghost atoms form one non-periodic point set;
     ghosts reach out to interaction range + skin (those beyond the interaction range of the owned
     atoms are dropped each step); the energy is summed over owned atoms only and forces on ghosts
     go back to their owners through LAMMPS' reverse communication (newton on).
   - PERIODIC_OWNERS (one rank, fully periodic box): only the owned atoms and the box go to the
     model, whose own periodic neighbour search replaces the ghost shell (no redundant work).
*/
#ifndef SO3KRATES_PAIR_SO3KRATES_H
#define SO3KRATES_PAIR_SO3KRATES_H

#include <torch/script.h>

#include "pair.h"

#include <string>
#include <vector>

namespace LAMMPS_NS {

class PairSo3krates : public Pair {
 public:
  PairSo3krates(class LAMMPS *);
  ~PairSo3krates() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

 private:
  enum Mode { GHOSTS, PERIODIC_OWNERS };

  // the model and what its metadata says
  torch::jit::Module model;
  bool model_loaded;
  std::string model_path, model_version, model_dtype_name, model_radial;
  int model_format;
  torch::Dtype model_dtype;
  double cutoff, interaction_range;
  int num_layers;
  std::vector<int> model_elements;

  // LAMMPS side
  std::vector<int> type_z;    // atomic number per LAMMPS type (index 1..ntypes); 0 = NULL
  double energy_conv;         // eV -> LAMMPS energy unit (forces and virial scale the same: lengths are A)
  int threads_requested;      // pair_style keyword `threads N`; 0 = automatic
  Mode mode;
  double logged_ghost_cutoff;
  std::string logged_units;    // unit style whose conversion factor the log has shown
  std::vector<int> selected;    // LAMMPS indices of the atoms passed to the model, owned first

  void allocate();
  void load_model(const std::string &path);
  void check_units();
  void configure_threads();
  Mode choose_mode();
  void log_model(const std::vector<std::string> &type_names);
};

}    // namespace LAMMPS_NS

#endif
