// so3krates::hermite_lookup, the tabulated radial filter of an exported model (model/radial_table.py):
//     out[e] = sum_k weights[e, k] * table[rows[e, k]]        (k over the 4 rows of the pair's cell)
// the cubic Hermite polynomial of the pair's grid cell, weights = 1, u, u^2, u^3. The same numbers
// as embedding_bag(rows, table, per_sample_weights=weights, mode="sum") (the plain export's
// lookup), with a backward that is vectorised over the features:
//     dweights[e, k] = grad_out[e] . table[rows[e, k]]
// (torch's per-sample-weights backward is a scalar loop: 7-9 % of a water evaluation). The float32
// forward is torch's embedding_bag itself (fbgemm's kernel is faster there). The table
// is a constant of the export: its gradient is not formed, and asking for it is an error. First
// derivatives only, like so3krates::edge_attention.
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cstdint>

#include "isa.h"

namespace so3krates_ops {

using at::Tensor;

template <typename scalar_t>
struct Lookup {
  const scalar_t *table, *weights, *grad_out;
  const int64_t *rows;
  scalar_t *out, *dweights;
  int64_t features, terms;
};

template <typename scalar_t>
SO3KRATES_INLINE void lookup_range(const Lookup<scalar_t> &j, int64_t begin, int64_t end) {
  const int64_t F = j.features;
  for (int64_t e = begin; e < end; ++e) {
    scalar_t *__restrict__ target = j.out + e * F;
    if (j.terms == 4) {   // the cubic's four rows in one sweep, summed in the same order as below
      const scalar_t *w = j.weights + e * 4;
      const int64_t *r = j.rows + e * 4;
      const scalar_t *__restrict__ r0 = j.table + r[0] * F, *__restrict__ r1 = j.table + r[1] * F;
      const scalar_t *__restrict__ r2 = j.table + r[2] * F, *__restrict__ r3 = j.table + r[3] * F;
_Pragma("omp simd")
      for (int64_t f = 0; f < F; ++f) target[f] = ((w[0] * r0[f] + w[1] * r1[f]) + w[2] * r2[f]) + w[3] * r3[f];
      continue;
    }
    for (int64_t k = 0; k < j.terms; ++k) {
      const scalar_t weight = j.weights[e * j.terms + k];
      const scalar_t *__restrict__ row = j.table + j.rows[e * j.terms + k] * F;
      if (k == 0) {
_Pragma("omp simd")
        for (int64_t f = 0; f < F; ++f) target[f] = weight * row[f];
      } else {
_Pragma("omp simd")
        for (int64_t f = 0; f < F; ++f) target[f] += weight * row[f];
      }
    }
  }
}

template <typename scalar_t>
SO3KRATES_INLINE void weights_grad_range(const Lookup<scalar_t> &j, int64_t begin, int64_t end) {
  const int64_t F = j.features;
  for (int64_t e = begin; e < end; ++e) {
    const scalar_t *__restrict__ g = j.grad_out + e * F;
    if (j.terms == 4) {   // the four dot products in one sweep over g
      const int64_t *r = j.rows + e * 4;
      const scalar_t *__restrict__ r0 = j.table + r[0] * F, *__restrict__ r1 = j.table + r[1] * F;
      const scalar_t *__restrict__ r2 = j.table + r[2] * F, *__restrict__ r3 = j.table + r[3] * F;
      scalar_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
_Pragma("omp simd reduction(+ : s0, s1, s2, s3)")
      for (int64_t f = 0; f < F; ++f) {
        s0 += g[f] * r0[f];
        s1 += g[f] * r1[f];
        s2 += g[f] * r2[f];
        s3 += g[f] * r3[f];
      }
      scalar_t *d = j.dweights + e * 4;
      d[0] = s0, d[1] = s1, d[2] = s2, d[3] = s3;
      continue;
    }
    for (int64_t k = 0; k < j.terms; ++k) {
      const scalar_t *__restrict__ row = j.table + j.rows[e * j.terms + k] * F;
      scalar_t sum = 0;
_Pragma("omp simd reduction(+ : sum)")
      for (int64_t f = 0; f < F; ++f) sum += g[f] * row[f];
      j.dweights[e * j.terms + k] = sum;
    }
  }
}

SO3KRATES_VARIANTS(lookup_range)
SO3KRATES_VARIANTS(weights_grad_range)

static void check_lookup(const Tensor &table, const Tensor &rows, const Tensor &weights) {
  for (const Tensor *t : {&table, &rows, &weights})
    TORCH_CHECK(t->device().is_cpu(), "so3krates::hermite_lookup runs on the CPU only (no CUDA kernel yet); "
                "export with --fused 0 to run on ", t->device());
  TORCH_CHECK(table.dim() == 2 && rows.dim() == 2 && weights.sizes() == rows.sizes(),
              "so3krates::hermite_lookup: table (R, F), rows and weights (E, 4) expected");
  TORCH_CHECK(rows.scalar_type() == at::kLong && weights.scalar_type() == table.scalar_type(),
              "so3krates::hermite_lookup: rows must be int64 and weights of the table's dtype");
  if (rows.numel() > 0)
    TORCH_CHECK(rows.min().item<int64_t>() >= 0 && rows.max().item<int64_t>() < table.size(0),
                "so3krates::hermite_lookup: row index out of range [0, ", table.size(0), ")");
}

template <typename scalar_t>
static Lookup<scalar_t> make_lookup(const Tensor &table, const Tensor &rows, const Tensor &weights) {
  Lookup<scalar_t> j{};
  j.table = table.data_ptr<scalar_t>();
  j.rows = rows.data_ptr<int64_t>();
  j.weights = weights.data_ptr<scalar_t>();
  j.features = table.size(1);
  j.terms = rows.size(1);
  return j;
}

Tensor hermite_lookup_forward(const Tensor &table_in, const Tensor &rows_in, const Tensor &weights_in) {
  check_lookup(table_in, rows_in, weights_in);
  const Tensor table = table_in.contiguous(), rows = rows_in.contiguous(), weights = weights_in.contiguous();
  // In float32 torch's own embedding_bag (fbgemm's kernel) is the faster forward (5.7 against 8.8 ms
  // for 31,000 pairs x 128 features on the 2-core VM); in float64 the loop below (26 against 38 ms).
  if (table.scalar_type() == at::kFloat && rows.numel() > 0) {
    // As torch.nn.functional.embedding_bag does with a 2-D input: flat rows, one bag per pair.
    const Tensor offsets = at::arange(0, rows.numel(), rows.size(1), rows.options());
    return std::get<0>(at::embedding_bag(table, rows.reshape(-1), offsets, false, /*mode sum*/ 0, false,
                                         weights.reshape(-1), false));
  }
  // Each row is written whole (the first term assigns): no zero fill.
  Tensor out = rows.size(1) > 0 ? at::empty({rows.size(0), table.size(1)}, table.options())
                                : at::zeros({rows.size(0), table.size(1)}, table.options());
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "so3krates::hermite_lookup", [&] {
    auto j = make_lookup<scalar_t>(table, rows, weights);
    j.out = out.data_ptr<scalar_t>();
    SO3KRATES_RUN(lookup_range, Lookup<scalar_t>, j, rows.size(0));
  });
  return out;
}

class HermiteLookup : public torch::autograd::Function<HermiteLookup> {
 public:
  static Tensor forward(torch::autograd::AutogradContext *ctx, const Tensor &table, const Tensor &rows,
                        const Tensor &weights) {
    ctx->save_for_backward({table.contiguous(), rows.contiguous()});
    at::AutoDispatchBelowADInplaceOrView guard;
    return hermite_lookup_forward(table, rows, weights);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "so3krates::hermite_lookup (the tabulated filters of an exported model) has no second derivative: "
                "create_graph / training on forces needs the plain path: export with --fused 0 or use the checkpoint");
    TORCH_CHECK(!ctx->needs_input_grad(0), "so3krates::hermite_lookup: the table is a constant of the export "
                "(no gradient); train the checkpoint instead");
    const auto saved = ctx->get_saved_variables();
    const Tensor &table = saved[0], &rows = saved[1];
    const Tensor grad_out = grad_outputs[0].contiguous();
    Tensor dweights;
    if (ctx->needs_input_grad(2)) {
      dweights = at::empty(rows.sizes(), table.options());
      AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "so3krates::hermite_lookup_backward", [&] {
        auto j = make_lookup<scalar_t>(table, rows, rows.new_empty({0}, table.options()));
        j.grad_out = grad_out.data_ptr<scalar_t>();
        j.dweights = dweights.data_ptr<scalar_t>();
        SO3KRATES_RUN(weights_grad_range, Lookup<scalar_t>, j, rows.size(0));
      });
    }
    return {Tensor(), Tensor(), dweights};
  }
};

Tensor hermite_lookup_autograd(const Tensor &table, const Tensor &rows, const Tensor &weights) {
  return HermiteLookup::apply(table, rows, weights);
}

}  // namespace so3krates_ops

TORCH_LIBRARY_FRAGMENT(so3krates, m) {
  m.def("hermite_lookup(Tensor table, Tensor rows, Tensor weights) -> Tensor");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) { m.impl("hermite_lookup", &so3krates_ops::hermite_lookup_forward); }

TORCH_LIBRARY_IMPL(so3krates, Autograd, m) { m.impl("hermite_lookup", &so3krates_ops::hermite_lookup_autograd); }
