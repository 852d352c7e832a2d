// so3krates::edge_attention, the fused edge pass of the two attention blocks (Eqs. 15, 21, 26).
//
// One call does, for every directed message a <- b over edge e (i <- j, and with `mirrored` also
// j <- i):
//     alpha_e,h = scale_e * sum_d q[a, h, d] * w[e, h, d] * k[b, h, d]            (Eq. 21)
//     out[a, seg_h] += alpha_e,h * value(a <- b)[seg_h]                            (Eqs. 15, 26)
// where value(a <- b) is the sender's row values[b] (InvariantAttention: W_v x_j, heads of equal
// width) or the edge's row values[e] times `parity` for the mirrored direction
// (EuclideanAttention: Y_l(u_ij), one head per degree, Y_l(u_ji) = (-1)^l Y_l(u_ij)).
//
// The plain PyTorch path materialises q_i, k_j, v_j, their products and the messages as
// edges x F tensors and autograd keeps several of them per block for the backward. Here the
// messages are summed per receiver as they are formed (receivers in parallel, over a CSR of the
// messages grouped by receiver: no atomics, a fixed summation order), and the backward keeps only
// the inputs and recomputes alpha from them. Its passes: per receiver (dq), per sender (dk, and
// dvalues for per-atom values), per edge (dw, dscale, and dvalues for per-edge values).
//
// The backward is not itself differentiable: taking it with create_graph (second derivatives,
// i.e. training on forces) is refused; training uses the plain path.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace so3krates_ops {

using at::Tensor;

// Directed messages grouped by one of their atoms: offsets (N + 1) and, per message, the edge and
// its direction (0: i <- j, 1: j <- i). Counting sort, stable: within an atom, edge order.
struct MessagesByAtom {
  std::vector<int64_t> offsets;
  std::vector<int64_t> edge;
  std::vector<uint8_t> direction;
};

// by_receiver: group by the receiving atom (i for direction 0, j for 1); else by the sender.
static MessagesByAtom group_messages(const int64_t *idx_i, const int64_t *idx_j, int64_t num_edges,
                                     int64_t num_atoms, bool mirrored, bool by_receiver) {
  MessagesByAtom m;
  const int directions = mirrored ? 2 : 1;
  m.offsets.assign(num_atoms + 1, 0);
  auto atom_of = [&](int64_t e, int dir) { return (dir == 0) == by_receiver ? idx_i[e] : idx_j[e]; };
  for (int dir = 0; dir < directions; ++dir)
    for (int64_t e = 0; e < num_edges; ++e) ++m.offsets[atom_of(e, dir) + 1];
  for (int64_t a = 0; a < num_atoms; ++a) m.offsets[a + 1] += m.offsets[a];
  std::vector<int64_t> fill(m.offsets.begin(), m.offsets.end() - 1);
  m.edge.resize(m.offsets[num_atoms]);
  m.direction.resize(m.offsets[num_atoms]);
  for (int64_t e = 0; e < num_edges; ++e)
    for (int dir = 0; dir < directions; ++dir) {
      const int64_t slot = fill[atom_of(e, dir)]++;
      m.edge[slot] = e;
      m.direction[slot] = static_cast<uint8_t>(dir);
    }
  return m;
}

// The shapes and raw pointers of one call.
template <typename scalar_t>
struct Problem {
  const scalar_t *q, *k, *w, *scale, *values, *parity;
  const int64_t *idx_i, *idx_j;
  std::vector<int64_t> segments;   // heads + 1 column offsets into a value row
  int64_t num_edges, num_atoms, features, heads, width, value_width;
  bool values_per_edge, mirrored;

  int64_t receiver(int64_t e, int dir) const { return dir == 0 ? idx_i[e] : idx_j[e]; }
  int64_t sender(int64_t e, int dir) const { return dir == 0 ? idx_j[e] : idx_i[e]; }

  // s_h = sum_d q[a,h,d] w[e,h,d] k[b,h,d], each term in the plain path's order (q * w) * k; the
  // sum is vectorised (its order differs from the plain path's by round-off only).
  void products(int64_t e, int64_t a, int64_t b, scalar_t *s) const {
    const scalar_t *qa = q + a * features, *kb = k + b * features, *we = w + e * features;
    for (int64_t h = 0; h < heads; ++h) {
      scalar_t sum = 0;
_Pragma("omp simd reduction(+ : sum)")
      for (int64_t d = h * width; d < (h + 1) * width; ++d) sum += qa[d] * we[d] * kb[d];
      s[h] = sum;
    }
  }

  // The value row of the message over edge e in direction dir from sender b, and whether its
  // columns take the parity sign (an edge's Y(u_ij) read for j <- i).
  const scalar_t *value_row(int64_t e, int64_t b) const {
    return values + (values_per_edge ? e : b) * value_width;
  }
  bool signed_values(int dir) const { return values_per_edge && dir == 1; }

  // target[col] += factor * value[col] over the head's columns (with the parity sign where due).
  void add_value(scalar_t *target, scalar_t factor, const scalar_t *row, bool sign, int64_t h) const {
    const int64_t lo = segments[h], hi = segments[h + 1];
    if (sign) {
_Pragma("omp simd")
      for (int64_t col = lo; col < hi; ++col) target[col] += factor * row[col] * parity[col];
    } else {
_Pragma("omp simd")
      for (int64_t col = lo; col < hi; ++col) target[col] += factor * row[col];
    }
  }

  // g_h = sum over the head's columns of grad_out[a] * value.
  void value_products(int64_t e, int dir, int64_t a, int64_t b, const scalar_t *grad_out, scalar_t *g) const {
    const scalar_t *ga = grad_out + a * value_width, *row = value_row(e, b);
    const bool sign = signed_values(dir);
    for (int64_t h = 0; h < heads; ++h) {
      scalar_t sum = 0;
      if (sign) {
_Pragma("omp simd reduction(+ : sum)")
        for (int64_t col = segments[h]; col < segments[h + 1]; ++col) sum += ga[col] * (row[col] * parity[col]);
      } else {
_Pragma("omp simd reduction(+ : sum)")
        for (int64_t col = segments[h]; col < segments[h + 1]; ++col) sum += ga[col] * row[col];
      }
      g[h] = sum;
    }
  }
};

template <typename scalar_t>
static Problem<scalar_t> make_problem(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale,
                                      const Tensor &values, const Tensor &parity, c10::IntArrayRef segments,
                                      const Tensor &idx_i, const Tensor &idx_j, int64_t num_atoms,
                                      bool values_per_edge, bool mirrored) {
  Problem<scalar_t> p;
  p.q = q.data_ptr<scalar_t>();
  p.k = k.data_ptr<scalar_t>();
  p.w = w.data_ptr<scalar_t>();
  p.scale = scale.data_ptr<scalar_t>();
  p.values = values.data_ptr<scalar_t>();
  p.parity = parity.data_ptr<scalar_t>();
  p.idx_i = idx_i.data_ptr<int64_t>();
  p.idx_j = idx_j.data_ptr<int64_t>();
  p.segments.assign(segments.begin(), segments.end());
  p.num_edges = idx_i.size(0);
  p.num_atoms = num_atoms;
  p.features = q.size(1);
  p.heads = static_cast<int64_t>(segments.size()) - 1;
  p.width = p.features / p.heads;
  p.value_width = values.size(1);
  p.values_per_edge = values_per_edge;
  p.mirrored = mirrored;
  return p;
}

static void check_inputs(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale,
                         const Tensor &values, const Tensor &parity, c10::IntArrayRef segments,
                         const Tensor &idx_i, const Tensor &idx_j, int64_t num_atoms, bool values_per_edge) {
  for (const Tensor *t : {&q, &k, &w, &scale, &values, &parity, &idx_i, &idx_j})
    TORCH_CHECK(t->device().is_cpu(), "so3krates::edge_attention runs on the CPU only (no CUDA kernel yet); "
                "export with --fused 0 to run on ", t->device());
  TORCH_CHECK(q.dim() == 2 && k.sizes() == q.sizes() && q.size(0) == num_atoms,
              "so3krates::edge_attention: q and k must be (num_atoms, F)");
  TORCH_CHECK(segments.size() >= 2 && q.size(1) % (int64_t)(segments.size() - 1) == 0,
              "so3krates::edge_attention: F must split evenly into the heads given by segments");
  const int64_t num_edges = idx_i.size(0);
  TORCH_CHECK(idx_j.size(0) == num_edges && w.dim() == 2 && w.size(0) == num_edges && w.size(1) == q.size(1) &&
              scale.dim() == 1 && scale.size(0) == num_edges,
              "so3krates::edge_attention: w (E, F), scale (E,), idx_i and idx_j (E,) must agree");
  TORCH_CHECK(values.dim() == 2 && values.size(0) == (values_per_edge ? num_edges : num_atoms) &&
              values.size(1) == segments.back() && parity.numel() == values.size(1),
              "so3krates::edge_attention: values must be (", values_per_edge ? "E" : "num_atoms",
              ", segments[-1]) and parity (segments[-1],)");
  for (const Tensor *t : {&k, &w, &scale, &values, &parity})
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "so3krates::edge_attention: all floating-point inputs "
                "must have one dtype");
  TORCH_CHECK(idx_i.scalar_type() == at::kLong && idx_j.scalar_type() == at::kLong,
              "so3krates::edge_attention: idx_i and idx_j must be int64");
  if (num_edges > 0) {
    const auto lo = std::min(idx_i.min().item<int64_t>(), idx_j.min().item<int64_t>());
    const auto hi = std::max(idx_i.max().item<int64_t>(), idx_j.max().item<int64_t>());
    TORCH_CHECK(lo >= 0 && hi < num_atoms, "so3krates::edge_attention: atom index out of range [0, ",
                num_atoms, ")");
  }
}

// Grain sizes of at::parallel_for: atoms (or edges) per task.
constexpr int64_t GRAIN = 64;

Tensor edge_attention_forward(const Tensor &q_in, const Tensor &k_in, const Tensor &w_in, const Tensor &scale_in,
                              const Tensor &values_in, const Tensor &parity_in, c10::IntArrayRef segments,
                              const Tensor &idx_i_in, const Tensor &idx_j_in, int64_t num_atoms,
                              bool values_per_edge, bool mirrored) {
  check_inputs(q_in, k_in, w_in, scale_in, values_in, parity_in, segments, idx_i_in, idx_j_in, num_atoms,
               values_per_edge);
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), w = w_in.contiguous(), scale = scale_in.contiguous(),
               values = values_in.contiguous(), parity = parity_in.contiguous(), idx_i = idx_i_in.contiguous(),
               idx_j = idx_j_in.contiguous();
  Tensor out = at::zeros({num_atoms, values.size(1)}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "so3krates::edge_attention", [&] {
    const auto p = make_problem<scalar_t>(q, k, w, scale, values, parity, segments, idx_i, idx_j, num_atoms,
                                          values_per_edge, mirrored);
    const auto by_receiver = group_messages(p.idx_i, p.idx_j, p.num_edges, num_atoms, mirrored, true);
    scalar_t *o = out.data_ptr<scalar_t>();
    at::parallel_for(0, num_atoms, GRAIN, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> s(p.heads);
      for (int64_t a = begin; a < end; ++a) {
        scalar_t *oa = o + a * p.value_width;
        for (int64_t m = by_receiver.offsets[a]; m < by_receiver.offsets[a + 1]; ++m) {
          const int64_t e = by_receiver.edge[m];
          const int dir = by_receiver.direction[m];
          const int64_t b = p.sender(e, dir);
          p.products(e, a, b, s.data());
          const scalar_t *row = p.value_row(e, b);
          for (int64_t h = 0; h < p.heads; ++h) p.add_value(oa, s[h] * p.scale[e], row, p.signed_values(dir), h);
        }
      }
    });
  });
  return out;
}

// Gradients of sum(grad_out * out) with respect to q, k, w, scale, values (undefined where not
// needed), recomputing alpha from the inputs.
std::vector<Tensor> edge_attention_backward(const Tensor &grad_out_in, const Tensor &q, const Tensor &k,
                                            const Tensor &w, const Tensor &scale, const Tensor &values,
                                            const Tensor &parity, c10::IntArrayRef segments, const Tensor &idx_i,
                                            const Tensor &idx_j, int64_t num_atoms, bool values_per_edge,
                                            bool mirrored, std::array<bool, 5> needed) {
  const Tensor grad_out = grad_out_in.contiguous();
  Tensor dq, dk, dw, dscale, dvalues;
  if (needed[0]) dq = at::zeros_like(q);
  if (needed[1]) dk = at::zeros_like(k);
  if (needed[2]) dw = at::zeros_like(w);
  if (needed[3]) dscale = at::zeros_like(scale);
  if (needed[4]) dvalues = at::zeros_like(values);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "so3krates::edge_attention_backward", [&] {
    const auto p = make_problem<scalar_t>(q, k, w, scale, values, parity, segments, idx_i, idx_j, num_atoms,
                                          values_per_edge, mirrored);
    const scalar_t *go = grad_out.data_ptr<scalar_t>();
    const int64_t F = p.features, c = p.width;
    // Per receiver a: dq[a] += g_h scale w k[b].
    if (needed[0]) {
      const auto by_receiver = group_messages(p.idx_i, p.idx_j, p.num_edges, num_atoms, mirrored, true);
      scalar_t *dq_ = dq.data_ptr<scalar_t>();
      at::parallel_for(0, num_atoms, GRAIN, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> g(p.heads);
        for (int64_t a = begin; a < end; ++a)
          for (int64_t m = by_receiver.offsets[a]; m < by_receiver.offsets[a + 1]; ++m) {
            const int64_t e = by_receiver.edge[m];
            const int dir = by_receiver.direction[m];
            const int64_t b = p.sender(e, dir);
            p.value_products(e, dir, a, b, go, g.data());
            for (int64_t h = 0; h < p.heads; ++h) {
              const scalar_t gs = g[h] * p.scale[e];
_Pragma("omp simd")
              for (int64_t d = h * c; d < (h + 1) * c; ++d) dq_[a * F + d] += gs * p.w[e * F + d] * p.k[b * F + d];
            }
          }
      });
    }
    // Per sender b: dk[b] += g_h scale w q[a]; dvalues[b] += alpha_h grad_out[a] (per-atom values).
    const bool atom_values = needed[4] && !values_per_edge;
    if (needed[1] || atom_values) {
      const auto by_sender = group_messages(p.idx_i, p.idx_j, p.num_edges, num_atoms, mirrored, false);
      scalar_t *dk_ = needed[1] ? dk.data_ptr<scalar_t>() : nullptr;
      scalar_t *dv_ = atom_values ? dvalues.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, num_atoms, GRAIN, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> g(p.heads), s(p.heads);
        for (int64_t b = begin; b < end; ++b)
          for (int64_t m = by_sender.offsets[b]; m < by_sender.offsets[b + 1]; ++m) {
            const int64_t e = by_sender.edge[m];
            const int dir = by_sender.direction[m];
            const int64_t a = p.receiver(e, dir);
            if (dk_) {
              p.value_products(e, dir, a, b, go, g.data());
              for (int64_t h = 0; h < p.heads; ++h) {
                const scalar_t gs = g[h] * p.scale[e];
_Pragma("omp simd")
                for (int64_t d = h * c; d < (h + 1) * c; ++d) dk_[b * F + d] += gs * p.w[e * F + d] * p.q[a * F + d];
              }
            }
            if (dv_) {
              p.products(e, a, b, s.data());
              for (int64_t h = 0; h < p.heads; ++h)
                p.add_value(dv_ + b * p.value_width, s[h] * p.scale[e], go + a * p.value_width, false, h);
            }
          }
      });
    }
    // Per edge, both directions: dw, dscale, and dvalues of per-edge values.
    const bool edge_values = needed[4] && values_per_edge;
    if (needed[2] || needed[3] || edge_values) {
      scalar_t *dw_ = needed[2] ? dw.data_ptr<scalar_t>() : nullptr;
      scalar_t *ds_ = needed[3] ? dscale.data_ptr<scalar_t>() : nullptr;
      scalar_t *dv_ = edge_values ? dvalues.data_ptr<scalar_t>() : nullptr;
      const int directions = mirrored ? 2 : 1;
      at::parallel_for(0, p.num_edges, GRAIN, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> g(p.heads), s(p.heads);
        for (int64_t e = begin; e < end; ++e)
          for (int dir = 0; dir < directions; ++dir) {
            const int64_t a = p.receiver(e, dir), b = p.sender(e, dir);
            p.value_products(e, dir, a, b, go, g.data());
            if (ds_ || dv_) p.products(e, a, b, s.data());
            for (int64_t h = 0; h < p.heads; ++h) {
              if (dw_) {
                const scalar_t gs = g[h] * p.scale[e];
_Pragma("omp simd")
                for (int64_t d = h * c; d < (h + 1) * c; ++d) dw_[e * F + d] += gs * p.q[a * F + d] * p.k[b * F + d];
              }
              if (ds_) ds_[e] += g[h] * s[h];
              if (dv_) p.add_value(dv_ + e * p.value_width, s[h] * p.scale[e], go + a * p.value_width, dir == 1, h);
            }
          }
      });
    }
  });
  return {dq, dk, dw, dscale, dvalues};
}

class EdgeAttention : public torch::autograd::Function<EdgeAttention> {
 public:
  static Tensor forward(torch::autograd::AutogradContext *ctx, const Tensor &q, const Tensor &k, const Tensor &w,
                        const Tensor &scale, const Tensor &values, const Tensor &parity,
                        c10::IntArrayRef segments, const Tensor &idx_i, const Tensor &idx_j, int64_t num_atoms,
                        bool values_per_edge, bool mirrored) {
    // Only the inputs are kept (no edges x F intermediate): the backward recomputes alpha.
    ctx->save_for_backward({q.contiguous(), k.contiguous(), w.contiguous(), scale.contiguous(),
                            values.contiguous(), parity.contiguous(), idx_i.contiguous(), idx_j.contiguous()});
    ctx->saved_data["segments"] = segments.vec();
    ctx->saved_data["num_atoms"] = num_atoms;
    ctx->saved_data["values_per_edge"] = values_per_edge;
    ctx->saved_data["mirrored"] = mirrored;
    at::AutoDispatchBelowADInplaceOrView guard;
    return edge_attention_forward(q, k, w, scale, values, parity, segments, idx_i, idx_j, num_atoms,
                                  values_per_edge, mirrored);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "so3krates::edge_attention (the fused edge pass of an exported model) has no second derivative: "
                "create_graph / training on forces needs the plain path: export with --fused 0 or use the checkpoint");
    const auto saved = ctx->get_saved_variables();
    const auto segments = ctx->saved_data["segments"].toIntVector();
    std::array<bool, 5> needed{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                               ctx->needs_input_grad(3), ctx->needs_input_grad(4)};
    auto grads = edge_attention_backward(grad_outputs[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                                         saved[5], segments, saved[6], saved[7],
                                         ctx->saved_data["num_atoms"].toInt(),
                                         ctx->saved_data["values_per_edge"].toBool(),
                                         ctx->saved_data["mirrored"].toBool(), needed);
    // One gradient per forward input: q, k, w, scale, values, then none for parity, segments,
    // idx_i, idx_j, num_atoms, values_per_edge, mirrored.
    grads.resize(12);
    return grads;
  }
};

Tensor edge_attention_autograd(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale,
                               const Tensor &values, const Tensor &parity, c10::IntArrayRef segments,
                               const Tensor &idx_i, const Tensor &idx_j, int64_t num_atoms, bool values_per_edge,
                               bool mirrored) {
  return EdgeAttention::apply(q, k, w, scale, values, parity, segments, idx_i, idx_j, num_atoms, values_per_edge,
                              mirrored);
}

}  // namespace so3krates_ops

TORCH_LIBRARY(so3krates, m) {
  m.def("edge_attention(Tensor q, Tensor k, Tensor w, Tensor scale, Tensor values, Tensor parity, int[] segments, "
        "Tensor idx_i, Tensor idx_j, int num_atoms, bool values_per_edge, bool mirrored) -> Tensor");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) { m.impl("edge_attention", &so3krates_ops::edge_attention_forward); }

TORCH_LIBRARY_IMPL(so3krates, Autograd, m) { m.impl("edge_attention", &so3krates_ops::edge_attention_autograd); }
