/* pair_style so3krates: an exported SO3krates TorchScript model as a LAMMPS pair style.

   SO3krates is message passing: layer t + 1 reads the state (invariant features x, Euclidean
   variables ev) that layer t left on each neighbour. Each rank computes every layer for the atoms
   it owns only. Ghost atoms reach one cutoff plus the skin; after each layer their state is copied
   from their owners with LAMMPS' forward communication, and in the backward pass the gradients
   with respect to ghost state are summed back onto the owners with reverse communication
   (the "halo exchange"), so energies, forces and virials are exact on any number of ranks.
   A ghost that is an image of an atom this rank owns reads its owner's state directly.
   compute() = prepare (owners, edges) -> run the model stage by stage -> scatter the results.
*/
#ifndef SO3KRATES_PAIR_SO3KRATES_H
#define SO3KRATES_PAIR_SO3KRATES_H

#include <torch/script.h>

#include "pair.h"

#include <set>
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
  void finish() override;
  double memory_usage() override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 private:
  // the model and what its metadata says
  torch::jit::Module model;
  bool model_loaded;
  std::string model_path, model_version, model_dtype_name, model_radial;
  int model_format;
  torch::Dtype model_dtype;
  double cutoff, interaction_range;
  int num_layers, num_features, num_sh;    // state per atom: x (num_features) and ev (num_sh)
  std::vector<int> model_elements;
  // long-range models (SO3LR): pairs out to long_range_cutoff and structure-wide inputs
  double long_range_cutoff = 0.0;          // 0: a short-range model (none of the below runs)
  bool long_range = false;                 // electrostatics / dispersion over the long-range pairs
  bool takes_charge = false, takes_multiplicity = false;    // metadata "global_inputs"
  double total_charge = 0.0;               // pair_style keywords `charge Q`, `multiplicity M`
  int multiplicity = 1;
  bool charge_given = false, multiplicity_given = false;
  double model_atoms_all = 0.0;            // model atoms on all ranks (this step)

  // LAMMPS side
  std::vector<int> type_z;          // atomic number per LAMMPS type (index 1..ntypes); 0 = NULL
  std::vector<int> type_species;    // model element index per LAMMPS type; -1 = NULL
  double energy_conv;               // eV -> LAMMPS energy unit (lengths are A in metal and real)
  int threads_requested;            // pair_style keyword `threads N`; 0 = automatic
  std::string device_name = "cpu";  // pair_style keyword `device`: this rank's device
  std::set<int> mass_warned;        // types whose mass mismatch was reported
  std::string logged_setup;
  std::string logged_units;    // unit style whose conversion factor the log has shown

  // the graph of this step (prepare): rows of the model's state tensors are the owned atoms
  // (model types) followed by the "halo": ghost senders whose owner is on another rank
  std::vector<int> owner;      // per LAMMPS atom: local index of the owner if on this rank, else -1
  std::vector<int> row_of;     // per LAMMPS atom: its state row, -1 if none
  std::vector<int> owned;      // LAMMPS index of row k < n_own
  std::vector<int> halo;       // LAMMPS index of row n_own + k
  std::vector<int64_t> edge_i, edge_j;     // rows of receiver and sender (half list, see build_edges)
  std::vector<int> atom_i, atom_j;         // LAMMPS indices of receiver and sender (forces, virial)
  std::vector<double> edge_vec;            // r_ij = x_j - x_i, 3 per edge
  int64_t num_pairs = 0;                   // edges [0, num_pairs) are pairs, the rest one-way (halo senders)
  std::vector<int64_t> cross_i, cross_j;   // the one-way edges while build_edges collects them
  std::vector<int> cross_atom_i, cross_atom_j;
  std::vector<double> cross_vec;
  bool model_takes_pairs = false;          // stage_layer has the num_pairs argument
  // long-range pairs i <- j (rsq < long_range_cutoff^2), laid out as the short-range edges: rows of
  // the owned atoms, then lr_halo (senders owned by another rank), pairs first (lr_num_pairs)
  std::vector<int> lr_row_of, lr_halo;
  std::vector<int64_t> lr_i, lr_j;
  std::vector<int> lr_atom_i, lr_atom_j;
  std::vector<double> lr_vec;
  int64_t lr_num_pairs = 0;

  // exchange buffer: one row of `exchange_width` doubles per LAMMPS atom (owned and ghost)
  double **buf;
  int maxbuf, bufwidth, exchange_width;

  // statistics of the current run, printed by finish()
  double stat_steps, stat_owned, stat_computed, stat_halo, stat_foreign, stat_cpu, stat_exchange_cpu, stat_timed_steps;
  double exchange_cpu;    // CPU seconds in this step's exchanges

  void allocate();
  void load_model(const std::string &path);
  void read_metadata(const std::string &path, const std::string &text);
  void check_units();
  void configure_threads();
  void select_device(const std::string &name);
  void check_mass(int type);
  void log_model(const std::vector<std::string> &type_names);
  void log_setup();

  // compute() in three steps
  void prepare();
  void refresh_owners();
  void build_edges();
  void collect_edges(double range, bool check_close, std::vector<int> &rows, std::vector<int> &halo_rows,
                     std::vector<int64_t> &ei, std::vector<int64_t> &ej, std::vector<int> &ai,
                     std::vector<int> &aj, std::vector<double> &vec, int64_t &pairs);
  void call_model(torch::Tensor &energies, torch::Tensor &edge_grad);
  std::vector<torch::Tensor> embed_species(const torch::Tensor &species);
  torch::Tensor long_range_terms(const torch::Tensor &x_final, const torch::Tensor &species, torch::Tensor &gx,
                                 torch::Tensor &lr_grad);
  double global_sum(double value);
  void idle_exchanges();
  void scatter(const torch::Tensor &energies, const torch::Tensor &edge_grad);
  void tally_edges(const std::vector<int> &ai, const std::vector<int> &aj, const std::vector<double> &vec,
                   const torch::Tensor &grad);
  torch::Tensor lr_edge_grad;   // dE/dr of the long-range pairs (this step)

  // halo exchange of the state (forward) and of its gradient (reverse)
  void grow_buffer();
  void timed_forward(int width);
  void timed_reverse(int width);
  void halo_forward(const torch::Tensor &x, const torch::Tensor &ev, torch::Tensor &x_all, torch::Tensor &ev_all);
  void halo_reverse(const torch::Tensor &gx_all, const torch::Tensor &gev_all, torch::Tensor &gx,
                    torch::Tensor &gev);
};

}    // namespace LAMMPS_NS

#endif
