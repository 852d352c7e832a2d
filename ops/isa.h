// Instruction sets of the operators' loops (ops/edge_attention.cpp, ops/radial_lookup.cpp).
//
// The build targets any x86-64 (SSE2: 2 doubles or 4 floats per vector instruction; -march is not
// used). Where the CPU has AVX2, each pass runs a copy compiled for it (twice as wide), picked at
// run time. No FMA: the same operations, so the same numbers up to the order of the vectorised
// sums. SO3KRATES_OPS_ISA=baseline forces the SSE2 copies (tests, comparisons).
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace so3krates_ops {

// The helpers of a pass are inlined into it, so that they are compiled for its instruction set.
#define SO3KRATES_INLINE __attribute__((always_inline)) inline

// pass(job, begin, end) -> pass_avx2 and pass_baseline, for any job type.
#define SO3KRATES_VARIANTS(pass)                                                                       \
  template <typename Job>                                                                               \
  __attribute__((target("avx2"))) void pass##_avx2(const Job &job, int64_t begin, int64_t end) {       \
    pass(job, begin, end);                                                                              \
  }                                                                                                     \
  template <typename Job>                                                                               \
  void pass##_baseline(const Job &job, int64_t begin, int64_t end) {                                    \
    pass(job, begin, end);                                                                              \
  }

inline bool use_avx2() {
  static const bool has_avx2 = __builtin_cpu_supports("avx2");
  const char *forced = std::getenv("SO3KRATES_OPS_ISA");
  return has_avx2 && !(forced && std::strcmp(forced, "baseline") == 0);
}

// Grain size of at::parallel_for: atoms (or edges) per task.
constexpr int64_t GRAIN = 64;

// Runs a pass over [0, n) in parallel, in the variant for this CPU.
template <typename Job>
void run_pass(void (*avx2)(const Job &, int64_t, int64_t), void (*baseline)(const Job &, int64_t, int64_t),
              const Job &job, int64_t n) {
  const auto pass = use_avx2() ? avx2 : baseline;
  at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) { pass(job, begin, end); });
}
#define SO3KRATES_RUN(pass, Job, job, n) run_pass<Job>(pass##_avx2<Job>, pass##_baseline<Job>, job, n)

}  // namespace so3krates_ops
