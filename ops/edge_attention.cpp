// so3krates::edge_attention, the fused edge pass of the two attention blocks (Eqs. 15, 21, 26).
//
// One call does, for every directed message a <- b over edge e (i <- j, and for the first num_pairs
// edges, the pairs, also j <- i):
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
// the inputs and, per message, the heads numbers s_h = alpha_h / scale (no edges x F tensor). Its
// passes: per receiver (dq), per sender (dk, and dvalues for per-atom values), per edge (dw,
// dscale, and dvalues for per-edge values).
//
// Receivers are the first R atoms (q and the output have R rows, k and per-atom values N >= R): a
// LAMMPS rank computes the messages into its own atoms only, over the pairs of two own atoms (both
// ways) followed by the edges from a ghost sender (one way), in one call. Two schemas:
// edge_attention_pairs (this general form) and edge_attention (R = N, all edges pairs or none:
// the files exported before the pairs schema call it).
//
// The backward is not itself differentiable: taking it with create_graph (second derivatives,
// i.e. training on forces) is refused; training uses the plain path.
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "isa.h"

namespace so3krates_ops {

using at::Tensor;


// Directed messages grouped by one of their atoms: offsets (groups + 1) and, per message, the edge
// and its direction (0: i <- j, 1: j <- i, the pairs only). Counting sort, stable: within an atom,
// edge order.
struct MessagesByAtom {
  std::vector<int64_t> offsets;
  std::vector<int64_t> edge;
  std::vector<uint8_t> direction;
};

// by_receiver: group by the receiving atom (i for direction 0, j for 1); else by the sender.
// Edges [0, num_pairs) carry both directions, the rest direction 0 only.
static MessagesByAtom group_messages(const int64_t *idx_i, const int64_t *idx_j, int64_t num_edges,
                                     int64_t num_pairs, int64_t num_groups, bool by_receiver) {
  MessagesByAtom m;
  m.offsets.assign(num_groups + 1, 0);
  auto atom_of = [&](int64_t e, int dir) { return (dir == 0) == by_receiver ? idx_i[e] : idx_j[e]; };
  auto directions = [&](int64_t e) { return e < num_pairs ? 2 : 1; };
  for (int64_t e = 0; e < num_edges; ++e)
    for (int dir = 0; dir < directions(e); ++dir) ++m.offsets[atom_of(e, dir) + 1];
  for (int64_t a = 0; a < num_groups; ++a) m.offsets[a + 1] += m.offsets[a];
  std::vector<int64_t> fill(m.offsets.begin(), m.offsets.end() - 1);
  m.edge.resize(m.offsets[num_groups]);
  m.direction.resize(m.offsets[num_groups]);
  for (int64_t e = 0; e < num_edges; ++e)
    for (int dir = 0; dir < directions(e); ++dir) {
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
  int64_t num_edges, num_pairs, num_atoms, num_receivers, features, heads, width, value_width;
  bool values_per_edge;

  SO3KRATES_INLINE int64_t receiver(int64_t e, int dir) const { return dir == 0 ? idx_i[e] : idx_j[e]; }
  SO3KRATES_INLINE int64_t sender(int64_t e, int dir) const { return dir == 0 ? idx_j[e] : idx_i[e]; }
  SO3KRATES_INLINE int directions(int64_t e) const { return e < num_pairs ? 2 : 1; }
  // Row of message (e, dir) in the per-message tensors (products, value_grads): a pair's two
  // messages side by side, then the one-way edges.
  SO3KRATES_INLINE int64_t slot(int64_t e, int dir) const { return e < num_pairs ? 2 * e + dir : num_pairs + e; }
  int64_t num_messages() const { return num_edges + num_pairs; }

  // s_h = sum_d q[a,h,d] w[e,h,d] k[b,h,d], each term in the plain path's order (q * w) * k; the
  // sum is vectorised (its order differs from the plain path's by round-off only).
  SO3KRATES_INLINE void products(int64_t e, int64_t a, int64_t b, scalar_t *s) const {
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
  SO3KRATES_INLINE const scalar_t *value_row(int64_t e, int64_t b) const {
    return values + (values_per_edge ? e : b) * value_width;
  }
  SO3KRATES_INLINE bool signed_values(int dir) const { return values_per_edge && dir == 1; }

  // target[col] += factor * value[col] over the head's columns (with the parity sign where due).
  SO3KRATES_INLINE void add_value(scalar_t *target, scalar_t factor, const scalar_t *row, bool sign, int64_t h) const {
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
  SO3KRATES_INLINE void value_products(int64_t e, int dir, int64_t a, int64_t b, const scalar_t *grad_out, scalar_t *g) const {
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

  // target[d] (+)= g_h scale_e x[d] y[d] over each head's features d: the backward's dq, dk, dw rows
  // (assign: the first write of a row that is not zero-filled).
  SO3KRATES_INLINE void add_gated_products(scalar_t *__restrict__ target, const scalar_t *g, scalar_t scale_e,
                                           const scalar_t *__restrict__ x, const scalar_t *__restrict__ y,
                                           bool assign) const {
    for (int64_t h = 0; h < heads; ++h) {
      const scalar_t gs = g[h] * scale_e;
      if (assign) {
_Pragma("omp simd")
        for (int64_t d = h * width; d < (h + 1) * width; ++d) target[d] = gs * x[d] * y[d];
      } else {
_Pragma("omp simd")
        for (int64_t d = h * width; d < (h + 1) * width; ++d) target[d] += gs * x[d] * y[d];
      }
    }
  }
};

template <typename scalar_t>
static Problem<scalar_t> make_problem(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale,
                                      const Tensor &values, const Tensor &parity, c10::IntArrayRef segments,
                                      const Tensor &idx_i, const Tensor &idx_j, bool values_per_edge,
                                      int64_t num_pairs) {
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
  p.num_pairs = num_pairs;
  p.num_atoms = k.size(0);
  p.num_receivers = q.size(0);
  p.features = q.size(1);
  p.heads = static_cast<int64_t>(segments.size()) - 1;
  p.width = p.features / p.heads;
  p.value_width = values.size(1);
  p.values_per_edge = values_per_edge;
  return p;
}

static void check_inputs(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale,
                         const Tensor &values, const Tensor &parity, c10::IntArrayRef segments,
                         const Tensor &idx_i, const Tensor &idx_j, bool values_per_edge, int64_t num_pairs) {
  for (const Tensor *t : {&q, &k, &w, &scale, &values, &parity, &idx_i, &idx_j})
    TORCH_CHECK(t->device().is_cpu(), "so3krates::edge_attention runs on the CPU only (no CUDA kernel yet); "
                "export with --fused 0 to run on ", t->device());
  TORCH_CHECK(q.dim() == 2 && k.dim() == 2 && q.size(1) == k.size(1) && q.size(0) <= k.size(0),
              "so3krates::edge_attention: q must be (receivers, F) and k (num_atoms, F), receivers <= num_atoms");
  TORCH_CHECK(segments.size() >= 2 && q.size(1) % (int64_t)(segments.size() - 1) == 0,
              "so3krates::edge_attention: F must split evenly into the heads given by segments");
  const int64_t num_edges = idx_i.size(0), num_atoms = k.size(0), num_receivers = q.size(0);
  TORCH_CHECK(idx_j.size(0) == num_edges && w.dim() == 2 && w.size(0) == num_edges && w.size(1) == q.size(1) &&
              scale.dim() == 1 && scale.size(0) == num_edges,
              "so3krates::edge_attention: w (E, F), scale (E,), idx_i and idx_j (E,) must agree");
  TORCH_CHECK(num_pairs >= 0 && num_pairs <= num_edges, "so3krates::edge_attention: num_pairs must be in [0, E]");
  TORCH_CHECK(values.dim() == 2 && values.size(0) == (values_per_edge ? num_edges : num_atoms) &&
              values.size(1) == segments.back() && parity.numel() == values.size(1),
              "so3krates::edge_attention: values must be (", values_per_edge ? "E" : "num_atoms",
              ", segments[-1]) and parity (segments[-1],)");
  for (const Tensor *t : {&k, &w, &scale, &values, &parity})
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "so3krates::edge_attention: all floating-point inputs "
                "must have one dtype");
  TORCH_CHECK(idx_i.scalar_type() == at::kLong && idx_j.scalar_type() == at::kLong,
              "so3krates::edge_attention: idx_i and idx_j must be int64");
  // Receivers: every idx_i and the pairs' idx_j, below R; senders below N.
  auto in_range = [](const Tensor &idx, int64_t limit) {
    return idx.numel() == 0 || (idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < limit);
  };
  TORCH_CHECK(in_range(idx_i, num_receivers) && in_range(idx_j.slice(0, 0, num_pairs), num_receivers) &&
              in_range(idx_j, num_atoms),
              "so3krates::edge_attention: atom index out of range (receivers [0, ", num_receivers,
              "), senders [0, ", num_atoms, "))");
}

// What the passes over the messages read and write (null where a pass is not wanted).
template <typename scalar_t>
struct Passes {
  const Problem<scalar_t> *p;
  const MessagesByAtom *messages;   // by receiver (forward, receiver pass) or by sender
  const scalar_t *grad_out;
  scalar_t *out, *products, *value_grads;   // products s_h and g_h: (messages, heads), rows Problem::slot
  scalar_t *dq, *dk, *dw, *dscale, *dvalues;
};

// Forward, receivers [begin, end): out[a] += sum over its messages of s_h scale value; s_h kept in
// `products` when given.
template <typename scalar_t>
SO3KRATES_INLINE void forward_range(const Passes<scalar_t> &j, int64_t begin, int64_t end) {
  const Problem<scalar_t> &p = *j.p;
  std::vector<scalar_t> buffer(j.products ? 0 : p.heads);
  for (int64_t a = begin; a < end; ++a) {
    scalar_t *oa = j.out + a * p.value_width;
    for (int64_t m = j.messages->offsets[a]; m < j.messages->offsets[a + 1]; ++m) {
      const int64_t e = j.messages->edge[m];
      const int dir = j.messages->direction[m];
      const int64_t b = p.sender(e, dir);
      scalar_t *s = j.products ? j.products + p.slot(e, dir) * p.heads : buffer.data();
      p.products(e, a, b, s);
      const scalar_t *row = p.value_row(e, b);
      for (int64_t h = 0; h < p.heads; ++h) p.add_value(oa, s[h] * p.scale[e], row, p.signed_values(dir), h);
    }
  }
}

// Backward per receiver a: g_h of its messages (into value_grads); dq[a] += g_h scale w k[b].
template <typename scalar_t>
SO3KRATES_INLINE void receiver_range(const Passes<scalar_t> &j, int64_t begin, int64_t end) {
  const Problem<scalar_t> &p = *j.p;
  const int64_t F = p.features, H = p.heads;
  for (int64_t a = begin; a < end; ++a)
    for (int64_t m = j.messages->offsets[a]; m < j.messages->offsets[a + 1]; ++m) {
      const int64_t e = j.messages->edge[m];
      const int dir = j.messages->direction[m];
      const int64_t b = p.sender(e, dir);
      scalar_t *g = j.value_grads + p.slot(e, dir) * H;
      p.value_products(e, dir, a, b, j.grad_out, g);
      if (j.dq) p.add_gated_products(j.dq + a * F, g, p.scale[e], p.w + e * F, p.k + b * F, false);
    }
}

// Backward per sender b: dk[b] += g_h scale w q[a]; dvalues[b] += alpha_h grad_out[a] (per-atom values).
template <typename scalar_t>
SO3KRATES_INLINE void sender_range(const Passes<scalar_t> &j, int64_t begin, int64_t end) {
  const Problem<scalar_t> &p = *j.p;
  const int64_t F = p.features, H = p.heads;
  for (int64_t b = begin; b < end; ++b)
    for (int64_t m = j.messages->offsets[b]; m < j.messages->offsets[b + 1]; ++m) {
      const int64_t e = j.messages->edge[m];
      const int dir = j.messages->direction[m];
      const int64_t a = p.receiver(e, dir);
      const int64_t slot = p.slot(e, dir) * H;
      if (j.dk) p.add_gated_products(j.dk + b * F, j.value_grads + slot, p.scale[e], p.w + e * F, p.q + a * F, false);
      if (j.dvalues)
        for (int64_t h = 0; h < H; ++h)
          p.add_value(j.dvalues + b * p.value_width, j.products[slot + h] * p.scale[e],
                      j.grad_out + a * p.value_width, false, h);
    }
}

// Backward per edge, both directions: dw, dscale, and dvalues of per-edge values.
template <typename scalar_t>
SO3KRATES_INLINE void edge_range(const Passes<scalar_t> &j, int64_t begin, int64_t end) {
  const Problem<scalar_t> &p = *j.p;
  const int64_t F = p.features, H = p.heads;
  for (int64_t e = begin; e < end; ++e)
    for (int dir = 0; dir < p.directions(e); ++dir) {
      const int64_t a = p.receiver(e, dir), b = p.sender(e, dir);
      const int64_t slot = p.slot(e, dir) * H;
      // The heads cover dw's row: the first direction writes it (dw is not zero-filled).
      if (j.dw) p.add_gated_products(j.dw + e * F, j.value_grads + slot, p.scale[e], p.q + a * F, p.k + b * F, dir == 0);
      for (int64_t h = 0; h < H; ++h) {
        if (j.dscale) j.dscale[e] += j.value_grads[slot + h] * j.products[slot + h];
        if (j.dvalues)
          p.add_value(j.dvalues + e * p.value_width, j.products[slot + h] * p.scale[e],
                      j.grad_out + a * p.value_width, dir == 1, h);
      }
    }
}

SO3KRATES_VARIANTS(forward_range)
SO3KRATES_VARIANTS(receiver_range)
SO3KRATES_VARIANTS(sender_range)
SO3KRATES_VARIANTS(edge_range)

// The forward pass. With `products` given (the autograd path), also keeps each message's
// s_h = sum_d q w k (before the scale) in it, (messages, heads), message (e, dir) in row
// Problem::slot(e, dir): the backward reads them instead of recomputing them (heads numbers per
// message, against the F-wide rows they are made of).
static Tensor forward_pass(const Tensor &q_in, const Tensor &k_in, const Tensor &w_in, const Tensor &scale_in,
                           const Tensor &values_in, const Tensor &parity_in, c10::IntArrayRef segments,
                           const Tensor &idx_i_in, const Tensor &idx_j_in, bool values_per_edge, int64_t num_pairs,
                           Tensor *products) {
  check_inputs(q_in, k_in, w_in, scale_in, values_in, parity_in, segments, idx_i_in, idx_j_in, values_per_edge,
               num_pairs);
  const Tensor q = q_in.contiguous(), k = k_in.contiguous(), w = w_in.contiguous(), scale = scale_in.contiguous(),
               values = values_in.contiguous(), parity = parity_in.contiguous(), idx_i = idx_i_in.contiguous(),
               idx_j = idx_j_in.contiguous();
  Tensor out = at::zeros({q.size(0), values.size(1)}, q.options());
  if (products) *products = at::empty({idx_i.size(0) + num_pairs, (int64_t)segments.size() - 1}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "so3krates::edge_attention", [&] {
    const auto p = make_problem<scalar_t>(q, k, w, scale, values, parity, segments, idx_i, idx_j, values_per_edge,
                                          num_pairs);
    const auto by_receiver = group_messages(p.idx_i, p.idx_j, p.num_edges, num_pairs, p.num_receivers, true);
    Passes<scalar_t> j{};
    j.p = &p;
    j.messages = &by_receiver;
    j.out = out.data_ptr<scalar_t>();
    j.products = products ? products->data_ptr<scalar_t>() : nullptr;
    SO3KRATES_RUN(forward_range, Passes<scalar_t>, j, p.num_receivers);
  });
  return out;
}

// Gradients of sum(grad_out * out) with respect to q, k, w, scale, values (undefined where not
// needed), from the inputs and the forward's per-message products s_h. Three passes: per receiver
// (g_h = grad_out[a] . value over the head's columns, kept per message like s_h; dq), per sender
// (dk; dvalues of per-atom values), per edge (dw, dscale; dvalues of per-edge values). Each
// message's g_h and s_h are formed once, not in every pass.
static std::vector<Tensor> backward_pass(const Tensor &grad_out_in, const Tensor &q, const Tensor &k,
                                         const Tensor &w, const Tensor &scale, const Tensor &values,
                                         const Tensor &parity, const Tensor &products, c10::IntArrayRef segments,
                                         const Tensor &idx_i, const Tensor &idx_j, bool values_per_edge,
                                         int64_t num_pairs, std::array<bool, 5> needed) {
  const Tensor grad_out = grad_out_in.contiguous();
  Tensor dq, dk, dw, dscale, dvalues;
  if (needed[0]) dq = at::zeros_like(q);
  if (needed[1]) dk = at::zeros_like(k);
  if (needed[2]) dw = at::empty_like(w, at::MemoryFormat::Contiguous);   // each row written whole (edge_range)
  if (needed[3]) dscale = at::zeros_like(scale);
  if (needed[4]) dvalues = at::zeros_like(values);
  const bool atom_values = needed[4] && !values_per_edge, edge_values = needed[4] && values_per_edge;
  const bool need_g = needed[0] || needed[1] || needed[2] || needed[3];
  const Tensor value_grads = need_g ? at::empty_like(products) : Tensor();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "so3krates::edge_attention_backward", [&] {
    const auto p = make_problem<scalar_t>(q, k, w, scale, values, parity, segments, idx_i, idx_j, values_per_edge,
                                          num_pairs);
    Passes<scalar_t> j{};
    j.p = &p;
    j.grad_out = grad_out.data_ptr<scalar_t>();
    j.products = products.data_ptr<scalar_t>();
    j.value_grads = need_g ? value_grads.data_ptr<scalar_t>() : nullptr;
    if (need_g) {
      const auto by_receiver = group_messages(p.idx_i, p.idx_j, p.num_edges, num_pairs, p.num_receivers, true);
      j.messages = &by_receiver;
      j.dq = needed[0] ? dq.data_ptr<scalar_t>() : nullptr;
      SO3KRATES_RUN(receiver_range, Passes<scalar_t>, j, p.num_receivers);
      j.dq = nullptr;
    }
    if (needed[1] || atom_values) {
      const auto by_sender = group_messages(p.idx_i, p.idx_j, p.num_edges, num_pairs, p.num_atoms, false);
      j.messages = &by_sender;
      j.dk = needed[1] ? dk.data_ptr<scalar_t>() : nullptr;
      j.dvalues = atom_values ? dvalues.data_ptr<scalar_t>() : nullptr;
      SO3KRATES_RUN(sender_range, Passes<scalar_t>, j, p.num_atoms);
      j.dk = j.dvalues = nullptr;
    }
    if (needed[2] || needed[3] || edge_values) {
      j.dw = needed[2] ? dw.data_ptr<scalar_t>() : nullptr;
      j.dscale = needed[3] ? dscale.data_ptr<scalar_t>() : nullptr;
      j.dvalues = edge_values ? dvalues.data_ptr<scalar_t>() : nullptr;
      SO3KRATES_RUN(edge_range, Passes<scalar_t>, j, p.num_edges);
    }
  });
  return {dq, dk, dw, dscale, dvalues};
}

class EdgeAttention : public torch::autograd::Function<EdgeAttention> {
 public:
  static Tensor forward(torch::autograd::AutogradContext *ctx, const Tensor &q, const Tensor &k, const Tensor &w,
                        const Tensor &scale, const Tensor &values, const Tensor &parity,
                        c10::IntArrayRef segments, const Tensor &idx_i, const Tensor &idx_j, bool values_per_edge,
                        int64_t num_pairs) {
    // Only the inputs and the per-message products are kept (no edges x F intermediate).
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor products;
    Tensor out = forward_pass(q, k, w, scale, values, parity, segments, idx_i, idx_j, values_per_edge, num_pairs,
                              &products);
    ctx->save_for_backward({q.contiguous(), k.contiguous(), w.contiguous(), scale.contiguous(),
                            values.contiguous(), parity.contiguous(), idx_i.contiguous(), idx_j.contiguous(),
                            products});
    ctx->saved_data["segments"] = segments.vec();
    ctx->saved_data["values_per_edge"] = values_per_edge;
    ctx->saved_data["num_pairs"] = num_pairs;
    return out;
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
    auto grads = backward_pass(grad_outputs[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[8],
                               segments, saved[6], saved[7], ctx->saved_data["values_per_edge"].toBool(),
                               ctx->saved_data["num_pairs"].toInt(), needed);
    // One gradient per forward input: q, k, w, scale, values, then none for parity, segments,
    // idx_i, idx_j, values_per_edge, num_pairs.
    grads.resize(11);
    return grads;
  }
};

// edge_attention_pairs: receivers = q's rows, the first num_pairs edges both ways.
Tensor pairs_forward(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale, const Tensor &values,
                     const Tensor &parity, c10::IntArrayRef segments, const Tensor &idx_i, const Tensor &idx_j,
                     bool values_per_edge, int64_t num_pairs) {
  return forward_pass(q, k, w, scale, values, parity, segments, idx_i, idx_j, values_per_edge, num_pairs, nullptr);
}

Tensor pairs_autograd(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale, const Tensor &values,
                      const Tensor &parity, c10::IntArrayRef segments, const Tensor &idx_i, const Tensor &idx_j,
                      bool values_per_edge, int64_t num_pairs) {
  return EdgeAttention::apply(q, k, w, scale, values, parity, segments, idx_i, idx_j, values_per_edge, num_pairs);
}

// edge_attention (files exported before the pairs schema): all N atoms receive; every edge a pair
// (mirrored) or none.
static int64_t legacy_pairs(const Tensor &q, const Tensor &k, const Tensor &idx_i, int64_t num_atoms, bool mirrored) {
  TORCH_CHECK(q.dim() == 2 && q.size(0) == num_atoms && k.dim() == 2 && k.size(0) == num_atoms,
              "so3krates::edge_attention: q and k must be (num_atoms, F)");
  return mirrored ? idx_i.size(0) : 0;
}

Tensor legacy_forward(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale, const Tensor &values,
                      const Tensor &parity, c10::IntArrayRef segments, const Tensor &idx_i, const Tensor &idx_j,
                      int64_t num_atoms, bool values_per_edge, bool mirrored) {
  return pairs_forward(q, k, w, scale, values, parity, segments, idx_i, idx_j, values_per_edge,
                       legacy_pairs(q, k, idx_i, num_atoms, mirrored));
}

Tensor legacy_autograd(const Tensor &q, const Tensor &k, const Tensor &w, const Tensor &scale, const Tensor &values,
                       const Tensor &parity, c10::IntArrayRef segments, const Tensor &idx_i, const Tensor &idx_j,
                       int64_t num_atoms, bool values_per_edge, bool mirrored) {
  return pairs_autograd(q, k, w, scale, values, parity, segments, idx_i, idx_j, values_per_edge,
                        legacy_pairs(q, k, idx_i, num_atoms, mirrored));
}

}  // namespace so3krates_ops

TORCH_LIBRARY(so3krates, m) {
  m.def("edge_attention_pairs(Tensor q, Tensor k, Tensor w, Tensor scale, Tensor values, Tensor parity, "
        "int[] segments, Tensor idx_i, Tensor idx_j, bool values_per_edge, int num_pairs) -> Tensor");
  m.def("edge_attention(Tensor q, Tensor k, Tensor w, Tensor scale, Tensor values, Tensor parity, int[] segments, "
        "Tensor idx_i, Tensor idx_j, int num_atoms, bool values_per_edge, bool mirrored) -> Tensor");
}

TORCH_LIBRARY_IMPL(so3krates, CPU, m) {
  m.impl("edge_attention_pairs", &so3krates_ops::pairs_forward);
  m.impl("edge_attention", &so3krates_ops::legacy_forward);
}

TORCH_LIBRARY_IMPL(so3krates, Autograd, m) {
  m.impl("edge_attention_pairs", &so3krates_ops::pairs_autograd);
  m.impl("edge_attention", &so3krates_ops::legacy_autograd);
}
