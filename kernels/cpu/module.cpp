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

// A kernel parameter as Python passes it: a pointer as the raw address of tensor storage
// (uintptr_t), anything else as it is.
template <class T>
struct FromPython {
  using type = T;
  static T get(T v) { return v; }
};
template <class T>
struct FromPython<T*> {
  using type = uintptr_t;
  static T* get(uintptr_t p) { return reinterpret_cast<T*>(p); }
};

// The fused view kernels' thread count: n OpenMP threads (n <= 0: OpenMP's default).
void use_threads(int n) {
#ifdef FASTCLR_HAVE_OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

// Kernel F as bound: `raw` takes F's arguments with every pointer as an address; `threaded` takes
// them plus a trailing OpenMP thread count for a kernel that has none (the fused view kernels).
template <class Fn, Fn F>
struct Bind;
template <class R, class... A, R (*F)(A...)>
struct Bind<R (*)(A...), F> {
  static R raw(typename FromPython<A>::type... a) { return F(FromPython<A>::get(a)...); }
  static R threaded(typename FromPython<A>::type... a, int nthreads) {
    use_threads(nthreads);
    return F(FromPython<A>::get(a)...);
  }
};
template <auto F>
constexpr auto raw = &Bind<decltype(F), F>::raw;
template <auto F>
constexpr auto threaded = &Bind<decltype(F), F>::threaded;

// Binds a fused view kernel (augment.h): its own leading arguments (`lead`, the source), then the
// per-view parameters and output both kernels share, then the thread count.
template <class Fn, class... Lead>
void def_view(nb::module_& m, const char* name, Fn fn, const char* doc, Lead... lead) {
  m.def(name, fn, lead..., nb::arg("crop"), nb::arg("flags"), nb::arg("factors"), nb::arg("order"),
        nb::arg("taps"), nb::arg("K"), nb::arg("solarize_threshold"), nb::arg("mean"),
        nb::arg("std"), nb::arg("S"), nb::arg("out"), nb::arg("nthreads"),
        nb::call_guard<nb::gil_scoped_release>(), doc);
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
      "ntxent_lse_sym_fwd_f32", raw<&fastclr::ntxent_lse_sym_fwd_f32>,
      nb::arg("z"), nb::arg("M"), nb::arg("D"), nb::arg("inv_tau"), nb::arg("lse"),
      nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "lse[a] = logsumexp_{k != a} z_a.z_k * inv_tau for unit rows z (M, D).");
  m.def(
      "ntxent_lse_sym_bwd_f32", raw<&fastclr::ntxent_lse_sym_bwd_f32>,
      nb::arg("z"), nb::arg("M"), nb::arg("D"), nb::arg("inv_tau"), nb::arg("lse"), nb::arg("g"),
      nb::arg("dz"), nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "dz = (W + W^T) z * inv_tau, W_ak = g_a softmax_ak (self excluded).");
  m.def(
      "ntxent_lse_rect_fwd_f32", raw<&fastclr::ntxent_lse_rect_fwd_f32>,
      nb::arg("q"), nb::arg("Mq"), nb::arg("k"), nb::arg("Mk"), nb::arg("D"), nb::arg("q_offset"),
      nb::arg("inv_tau"), nb::arg("lse"), nb::arg("nthreads"),
      nb::call_guard<nb::gil_scoped_release>(),
      "lse[i] = logsumexp_{j != q_offset + i} q_i.k_j * inv_tau (online running max).");
  m.def(
      "ntxent_lse_rect_bwd_f32", raw<&fastclr::ntxent_lse_rect_bwd_f32>,
      nb::arg("q"), nb::arg("Mq"), nb::arg("k"), nb::arg("Mk"), nb::arg("D"), nb::arg("q_offset"),
      nb::arg("inv_tau"), nb::arg("lse"), nb::arg("g"), nb::arg("dq"), nb::arg("dk"),
      nb::arg("nthreads"), nb::call_guard<nb::gil_scoped_release>(),
      "dq = W k * inv_tau, dk = W^T q * inv_tau, W_ij = g_i softmax_ij (self excluded).");
  def_view(m, "simclr_view_f32", threaded<&fastclr::simclr_view_f32>,
           "One fused SimCLR view of a dense uint8 NHWC batch into (N, S, S, 3) fp32 (augment.h).",
           nb::arg("src"), nb::arg("N"), nb::arg("H"), nb::arg("W"));
  m.attr("max_decode_scale") = fastclr::kMaxDecodeScale;
  def_view(m, "simclr_view_ragged_f32", threaded<&fastclr::simclr_view_ragged_f32>,
           "SimCLR views of ragged uint8 sources decoded at 1/scale, boxes in original pixels "
           "(augment.h).",
           nb::arg("srcs"), nb::arg("shapes"), nb::arg("N"));
}
