// nanobind bindings of the native CPU kernels. Every function takes raw addresses (uintptr_t) of
// contiguous tensor storage plus sizes; the Python side (fastclr/_native.py) checks dtypes, shapes,
// contiguity and devices before calling. The GIL is released while a kernel runs.
#include <nanobind/nanobind.h>

#include <cstdint>

#ifdef FASTCLR_HAVE_OPENMP
#include <omp.h>
#endif

#include "normalize.h"

namespace nb = nanobind;

namespace {

int max_threads() {
#ifdef FASTCLR_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void set_threads(int n) {
#ifdef FASTCLR_HAVE_OPENMP
  if (n > 0) omp_set_num_threads(n);
#else
  (void)n;
#endif
}

}  // namespace

NB_MODULE(_cpu, m) {
  m.doc() = "fastclr native CPU kernels (C++, OpenMP), called on raw tensor storage.";
  m.def("max_threads", &max_threads, "Threads an OpenMP region uses by default.");
  m.def("set_threads", &set_threads, nb::arg("n"), "Set the OpenMP thread count (n > 0).");
#ifdef FASTCLR_HAVE_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  m.def(
      "normalize_rows_f32",
      [](uintptr_t src, uintptr_t dst, uintptr_t norms, int64_t M, int64_t D, float eps) {
        fastclr::normalize_rows_f32(reinterpret_cast<const float*>(src), reinterpret_cast<float*>(dst),
                                    reinterpret_cast<float*>(norms), M, D, eps);
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("norms"), nb::arg("M"), nb::arg("D"), nb::arg("eps"),
      nb::call_guard<nb::gil_scoped_release>(),
      "Row-wise L2 normalisation of an (M, D) fp32 matrix; norms may be 0 (null).");
}
