// nanobind bindings of the native CPU kernels (module fastclr._cpu, loaded by fastclr/_native.py).
// Every function takes raw addresses (uintptr_t) of contiguous tensor storage plus sizes; the
// callers, fastclr/ops/native_ntxent.py (loss) and fastclr/augment/native_backend.py
// (augmentation), check dtypes, shapes, contiguity and devices first. The GIL is released while a
// kernel runs.
#include <nanobind/nanobind.h>

#include <cstdint>

#ifdef FASTCLR_HAVE_OPENMP
#include <omp.h>
#endif

#include "augment.h"
#include "isa.h"
#include "ntxent.h"

namespace nb = nanobind;

namespace {

const float* cptr(uintptr_t p) { return reinterpret_cast<const float*>(p); }
float* mptr(uintptr_t p) { return reinterpret_cast<float*>(p); }

// The fused view kernels' thread count: n OpenMP threads (n <= 0: OpenMP's default).
void use_threads(int n) {
#ifdef FASTCLR_HAVE_OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace

NB_MODULE(_cpu, m) {
  m.doc() = "fastclr native CPU kernels (C++, OpenMP), called on raw tensor storage.";
#ifdef FASTCLR_HAVE_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  // Instruction-set copies of the kernels (isa.h).
  m.attr("compiled_isas") = fastclr::compiled_isas();
  m.def("active_isa", &fastclr::active_isa,
        "Instruction set the kernels run with here (best supported, lowered by FASTCLR_ISA).");
  // NT-Xent log-sum-exp kernels (ntxent.h): dense row-major fp32 storage, natural-log LSE.
  m.attr("ntxent_const_shift_max_span") = fastclr::kConstShiftMaxSpan;
  m.def("ntxent_uses_constant_shift", &fastclr::ntxent_uses_constant_shift, nb::arg("inv_tau"),
        "True when lse_sym uses the constant shift c = 1/tau (2/tau <= max span).");
  m.def(
      "ntxent_lse_sym_fwd_f32",
      [](uintptr_t z, int64_t M, int64_t D, float inv_tau, uintptr_t lse, int nthreads) {
        fastclr::ntxent_lse_sym_fwd_f32(cptr(z), M, D, inv_tau, mptr(lse), nthreads);
      },
      nb::arg("z"), nb::arg("M"), nb::arg("D"), nb::arg("inv_tau"), nb::arg("lse"),
      nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "lse[a] = logsumexp_{k != a} z_a.z_k * inv_tau for unit rows z (M, D).");
  m.def(
      "ntxent_lse_sym_bwd_f32",
      [](uintptr_t z, int64_t M, int64_t D, float inv_tau, uintptr_t lse, uintptr_t g,
         uintptr_t dz, int nthreads) {
        fastclr::ntxent_lse_sym_bwd_f32(cptr(z), M, D, inv_tau, cptr(lse), cptr(g), mptr(dz),
                                        nthreads);
      },
      nb::arg("z"), nb::arg("M"), nb::arg("D"), nb::arg("inv_tau"), nb::arg("lse"), nb::arg("g"),
      nb::arg("dz"), nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "dz = (W + W^T) z * inv_tau, W_ak = g_a softmax_ak (self excluded).");
  m.def(
      "ntxent_lse_rect_fwd_f32",
      [](uintptr_t q, int64_t Mq, uintptr_t k, int64_t Mk, int64_t D, int64_t q_offset,
         float inv_tau, uintptr_t lse, int nthreads) {
        fastclr::ntxent_lse_rect_fwd_f32(cptr(q), Mq, cptr(k), Mk, D, q_offset, inv_tau,
                                         mptr(lse), nthreads);
      },
      nb::arg("q"), nb::arg("Mq"), nb::arg("k"), nb::arg("Mk"), nb::arg("D"), nb::arg("q_offset"),
      nb::arg("inv_tau"), nb::arg("lse"), nb::arg("nthreads"),
      nb::call_guard<nb::gil_scoped_release>(),
      "lse[i] = logsumexp_{j != q_offset + i} q_i.k_j * inv_tau (online running max).");
  m.def(
      "ntxent_lse_rect_bwd_f32",
      [](uintptr_t q, int64_t Mq, uintptr_t k, int64_t Mk, int64_t D, int64_t q_offset,
         float inv_tau, uintptr_t lse, uintptr_t g, uintptr_t dq, uintptr_t dk, int nthreads) {
        fastclr::ntxent_lse_rect_bwd_f32(cptr(q), Mq, cptr(k), Mk, D, q_offset, inv_tau, cptr(lse),
                                         cptr(g), mptr(dq), mptr(dk), nthreads);
      },
      nb::arg("q"), nb::arg("Mq"), nb::arg("k"), nb::arg("Mk"), nb::arg("D"), nb::arg("q_offset"),
      nb::arg("inv_tau"), nb::arg("lse"), nb::arg("g"), nb::arg("dq"), nb::arg("dk"),
      nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "dq = W k * inv_tau, dk = W^T q * inv_tau, W_ij = g_i softmax_ij (self excluded).");
  m.def(
      "simclr_view_f32",
      [](uintptr_t src, int64_t N, int64_t H, int64_t W, uintptr_t crop, uintptr_t flags,
         uintptr_t factors, uintptr_t order, uintptr_t taps, int64_t K, float solarize_threshold,
         uintptr_t mean, uintptr_t std, int64_t S, uintptr_t out, int nthreads) {
        use_threads(nthreads);
        fastclr::simclr_view_f32(
            reinterpret_cast<const uint8_t*>(src), N, H, W, reinterpret_cast<const int32_t*>(crop),
            reinterpret_cast<const uint8_t*>(flags), reinterpret_cast<const float*>(factors),
            reinterpret_cast<const int32_t*>(order), reinterpret_cast<const float*>(taps), K,
            solarize_threshold, reinterpret_cast<const float*>(mean),
            reinterpret_cast<const float*>(std), S, reinterpret_cast<float*>(out));
      },
      nb::arg("src"), nb::arg("N"), nb::arg("H"), nb::arg("W"), nb::arg("crop"), nb::arg("flags"),
      nb::arg("factors"), nb::arg("order"), nb::arg("taps"), nb::arg("K"),
      nb::arg("solarize_threshold"), nb::arg("mean"), nb::arg("std"), nb::arg("S"), nb::arg("out"),
      nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "One fused SimCLR view of a dense uint8 NHWC batch into (N, S, S, 3) fp32 (augment.h).");
  m.attr("max_decode_scale") = fastclr::kMaxDecodeScale;
  m.def(
      "simclr_view_ragged_f32",
      [](uintptr_t srcs, uintptr_t shapes, int64_t N, uintptr_t crop, uintptr_t flags,
         uintptr_t factors, uintptr_t order, uintptr_t taps, int64_t K, float solarize_threshold,
         uintptr_t mean, uintptr_t std, int64_t S, uintptr_t out, int nthreads) {
        use_threads(nthreads);
        fastclr::simclr_view_ragged_f32(
            reinterpret_cast<const uint64_t*>(srcs), reinterpret_cast<const int64_t*>(shapes), N,
            reinterpret_cast<const int32_t*>(crop), reinterpret_cast<const uint8_t*>(flags),
            reinterpret_cast<const float*>(factors), reinterpret_cast<const int32_t*>(order),
            reinterpret_cast<const float*>(taps), K, solarize_threshold,
            reinterpret_cast<const float*>(mean), reinterpret_cast<const float*>(std), S,
            reinterpret_cast<float*>(out));
      },
      nb::arg("srcs"), nb::arg("shapes"), nb::arg("N"), nb::arg("crop"), nb::arg("flags"),
      nb::arg("factors"), nb::arg("order"), nb::arg("taps"), nb::arg("K"),
      nb::arg("solarize_threshold"), nb::arg("mean"), nb::arg("std"), nb::arg("S"), nb::arg("out"),
      nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "SimCLR views of ragged uint8 sources decoded at 1/scale, boxes in original pixels "
      "(augment.h).");
}
