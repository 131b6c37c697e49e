#include "normalize.h"

#include <algorithm>
#include <cmath>

namespace fastclr {

void normalize_rows_f32(const float* src, float* dst, float* norms, int64_t M, int64_t D, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t a = 0; a < M; ++a) {
    const float* x = src + a * D;
    float* y = dst + a * D;
    double ss = 0.0;  // fp64 sum of squares: exact enough for any D this library meets
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(x[d]) * x[d];
    const float n = std::max(static_cast<float>(std::sqrt(ss)), eps);
    const float inv = 1.0f / n;
    for (int64_t d = 0; d < D; ++d) y[d] = x[d] * inv;
    if (norms) norms[a] = n;
  }
}

}  // namespace fastclr
