// Row-wise L2 normalisation of a dense (M, D) fp32 matrix: dst[a] = src[a] / max(||src[a]||, eps).
#pragma once
#include <cstdint>

namespace fastclr {

// src, dst: (M, D) row-major fp32, row stride D; may alias. norms (optional, may be null): (M,)
// fp32, receives max(||src[a]||, eps) so a backward pass can reuse it.
void normalize_rows_f32(const float* src, float* dst, float* norms, int64_t M, int64_t D, float eps);

}  // namespace fastclr
