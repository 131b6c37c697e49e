// The public kernel entry points (ntxent.h, augment.h): each forwards to the instruction-set copy
// chosen once per process (isa.h describes the copies and the rule).
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "augment.h"
#include "isa.h"
#include "ntxent.h"

// The functions every copy defines, declared once for each copy's namespace.
#define FASTCLR_KERNEL_DECLARATIONS                                                                \
  bool ntxent_uses_constant_shift(float inv_tau);                                                 \
  void ntxent_lse_sym_fwd_f32(const float* z, int64_t M, int64_t D, float inv_tau, float* lse,    \
                              int nthreads);                                                      \
  void ntxent_lse_sym_bwd_f32(const float* z, int64_t M, int64_t D, float inv_tau,                \
                              const float* lse, const float* g, float* dz, int nthreads);         \
  void ntxent_lse_rect_fwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D, \
                               int64_t q_offset, float inv_tau, float* lse, int nthreads);        \
  void ntxent_lse_rect_bwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D, \
                               int64_t q_offset, float inv_tau, const float* lse, const float* g, \
                               float* dq, float* dk, int nthreads);                               \
  void simclr_view_f32(const uint8_t* src, int64_t N, int64_t H, int64_t W, const int32_t* crop,  \
                       const uint8_t* flags, const float* factors, const int32_t* order,          \
                       const float* taps, int64_t K, float solarize_threshold, const float* mean, \
                       const float* std, int64_t S, float* out);                          \
  void simclr_view_ragged_f32(const uint64_t* srcs, const int64_t* shapes, int64_t N,              \
                              const int32_t* crop, const uint8_t* flags, const float* factors,    \
                              const int32_t* order, const float* taps, int64_t K,                 \
                              float solarize_threshold, const float* mean, const float* std,      \
                              int64_t S, float* out);

// The baseline copy's name: with FASTCLR_NATIVE_ARCH it is the one copy, built for this machine.
#ifdef FASTCLR_NATIVE_ARCH
#define FASTCLR_BASELINE_NAME "native"
#else
#define FASTCLR_BASELINE_NAME "baseline"
#endif

namespace fastclr {
namespace baseline {
FASTCLR_KERNEL_DECLARATIONS
}
#ifdef FASTCLR_HAVE_AVX2
namespace avx2 {
FASTCLR_KERNEL_DECLARATIONS
}
#endif
#ifdef FASTCLR_HAVE_AVX512
namespace avx512 {
FASTCLR_KERNEL_DECLARATIONS
}
#endif

namespace {

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

const char* name_of(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return FASTCLR_BASELINE_NAME;
  }
}

// The best copy that is both compiled in and supported by this CPU.
Isa best_supported() {
  Isa best = Isa::kBaseline;
#if defined(FASTCLR_HAVE_AVX2) || defined(FASTCLR_HAVE_AVX512)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
#ifdef FASTCLR_HAVE_AVX2
  if (avx2) best = Isa::kAvx2;
#endif
#ifdef FASTCLR_HAVE_AVX512
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
    best = Isa::kAvx512;
  }
#endif
  return best;
}

// best_supported(), lowered to FASTCLR_ISA when that names a lower set.
Isa choose() {
  const Isa best = best_supported();
  const char* env = std::getenv("FASTCLR_ISA");
  if (env == nullptr || *env == '\0') return best;
  const std::string want(env);
  Isa asked;
  if (want == "baseline") {
    asked = Isa::kBaseline;
  } else if (want == "avx2") {
    asked = Isa::kAvx2;
  } else if (want == "avx512") {
    asked = Isa::kAvx512;
  } else {
    throw std::invalid_argument("FASTCLR_ISA must be one of baseline, avx2, avx512; got '" + want +
                                "'");
  }
  return asked < best ? asked : best;
}

Isa active() {
  static const Isa isa = choose();  // thread-safe one-time initialisation
  return isa;
}

}  // namespace

// Calls the chosen copy of `fn` with the caller's arguments.
#ifdef FASTCLR_HAVE_AVX512
#define FASTCLR_CASE_AVX512(fn, ...) \
  case Isa::kAvx512:                 \
    return avx512::fn(__VA_ARGS__);
#else
#define FASTCLR_CASE_AVX512(fn, ...)
#endif
#ifdef FASTCLR_HAVE_AVX2
#define FASTCLR_CASE_AVX2(fn, ...) \
  case Isa::kAvx2:                 \
    return avx2::fn(__VA_ARGS__);
#else
#define FASTCLR_CASE_AVX2(fn, ...)
#endif
#define FASTCLR_DISPATCH(fn, ...)           \
  switch (active()) {                       \
    FASTCLR_CASE_AVX512(fn, __VA_ARGS__)    \
    FASTCLR_CASE_AVX2(fn, __VA_ARGS__)      \
    default:                                \
      return baseline::fn(__VA_ARGS__);     \
  }

const char* active_isa() { return name_of(active()); }

const char* compiled_isas() {
  return FASTCLR_BASELINE_NAME
#ifdef FASTCLR_HAVE_AVX2
         ",avx2"
#endif
#ifdef FASTCLR_HAVE_AVX512
         ",avx512"
#endif
      ;
}

bool ntxent_uses_constant_shift(float inv_tau) {
  return baseline::ntxent_uses_constant_shift(inv_tau);  // the same rule in every copy
}

void ntxent_lse_sym_fwd_f32(const float* z, int64_t M, int64_t D, float inv_tau, float* lse,
                            int nthreads) {
  FASTCLR_DISPATCH(ntxent_lse_sym_fwd_f32, z, M, D, inv_tau, lse, nthreads)
}

void ntxent_lse_sym_bwd_f32(const float* z, int64_t M, int64_t D, float inv_tau, const float* lse,
                            const float* g, float* dz, int nthreads) {
  FASTCLR_DISPATCH(ntxent_lse_sym_bwd_f32, z, M, D, inv_tau, lse, g, dz, nthreads)
}

void ntxent_lse_rect_fwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D,
                             int64_t q_offset, float inv_tau, float* lse, int nthreads) {
  FASTCLR_DISPATCH(ntxent_lse_rect_fwd_f32, q, Mq, k, Mk, D, q_offset, inv_tau, lse, nthreads)
}

void ntxent_lse_rect_bwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D,
                             int64_t q_offset, float inv_tau, const float* lse, const float* g,
                             float* dq, float* dk, int nthreads) {
  FASTCLR_DISPATCH(ntxent_lse_rect_bwd_f32, q, Mq, k, Mk, D, q_offset, inv_tau, lse, g, dq, dk,
                   nthreads)
}

void simclr_view_f32(const uint8_t* src, int64_t N, int64_t H, int64_t W, const int32_t* crop,
                     const uint8_t* flags, const float* factors, const int32_t* order,
                     const float* taps, int64_t K, float solarize_threshold, const float* mean,
                     const float* std, int64_t S, float* out) {
  FASTCLR_DISPATCH(simclr_view_f32, src, N, H, W, crop, flags, factors, order, taps, K,
                   solarize_threshold, mean, std, S, out)
}

void simclr_view_ragged_f32(const uint64_t* srcs, const int64_t* shapes, int64_t N,
                            const int32_t* crop, const uint8_t* flags, const float* factors,
                            const int32_t* order, const float* taps, int64_t K,
                            float solarize_threshold, const float* mean, const float* std,
                            int64_t S, float* out) {
  FASTCLR_DISPATCH(simclr_view_ragged_f32, srcs, shapes, N, crop, flags, factors, order, taps, K,
                   solarize_threshold, mean, std, S, out)
}

}  // namespace fastclr
