// Tiled NT-Xent log-sum-exp on the CPU: fp32, OpenMP, nothing M×M stored.
//
// Maths (docs/design.md, "The NT-Xent loss"). Rows ẑ_a are already L2-normalised (the
// precondition every function below relies on: |s_ak| ≤ 1/τ). With s_ak = ẑ_a·ẑ_k / τ:
//
//   forward   LSE_a = log Σ_{k≠a} exp(s_ak)                 natural log (base e), fp32 out
//   backward  W_ak  = g_a · exp(s_ak − LSE_a)   (k ≠ a)     g = upstream gradient of LSE
//             symmetric op:  dẑ = (W + Wᵀ) ẑ / τ
//             rect op:       dq = W k / τ,   dk = Wᵀ q / τ
//
// Symmetric op, constant shift (fast path): with c = 1/τ, e_ak = exp(s_ak − c) ∈ [exp(−2/τ), 1] is
// the same number for (a,k) and (k,a), so one tile (I,J), I ≤ J, of ẑẑᵀ feeds the row sums of
// block I and of block J and each exp is computed once; LSE_a = c + log Σ_k e_ak. In the backward
// (W + Wᵀ)_ak = e_ak · (r_a + r_k) with r_a = g_a · exp(c − LSE_a), so again one exp per pair.
//
// Switch rule (data-independent): the constant shift is used iff 2/τ ≤ kConstShiftMaxSpan = 80.
// Every e_ak is then ≥ exp(−80) ≈ 1.8e-35, above FLT_MIN = exp(−87.3) with 7.3 nats to spare (room
// for rows whose norm is off 1 by bf16/fp16 rounding), so no term underflows or turns denormal and
// no row sum can be 0 or lose accuracy. For τ < 0.025 the forward takes the online running-max
// path (the rect kernel with q = k, offset 0) and the backward the two-exp symmetric form
// (W + Wᵀ)_ak = g_a exp(s_ak − LSE_a) + g_k exp(s_ak − LSE_k), where every exponent is ≤ 0.
// The backward also takes the two-exp form when some |r_a| exceeds kMaxRowFactor (r_a + r_k could
// overflow fp32; only for large upstream gradients with τ near the switch), a check on M numbers.
//
// Threads: `nthreads` OpenMP threads. Work is split statically by tile index and every thread
// accumulates into its own buffer; buffers are reduced in thread order, so results are bitwise
// reproducible for a given thread count. (A schedule of conflict-free rounds of tiles, the same
// for any thread count, was tried: its barriers cost 1.5-2× on this shared 2-core machine.)
// Extra memory: O(M·D), never O(M²): padded and packed copies of the inputs, and one padded
// (M, D) fp32 gradient buffer per thread in the backwards, at most 512 MiB of them in all (the
// backward uses fewer threads beyond that).
//
// All pointers are dense row-major fp32: z (M, D); q (Mq, D); k (Mk, D); lse, g (rows,);
// dz/dq/dk like their inputs. Outputs are overwritten. Rect ops need 0 ≤ q_offset ≤ Mk − Mq
// (query i is key q_offset + i, which is excluded).
#pragma once
#include <cstdint>

namespace fastclr {

// Largest exp range 2/τ (nats) the constant-shift path accepts; see the switch rule above.
constexpr float kConstShiftMaxSpan = 80.0f;

// True when the symmetric op uses the constant shift c = 1/τ for this inverse temperature.
bool ntxent_uses_constant_shift(float inv_tau);

void ntxent_lse_sym_fwd_f32(const float* z, int64_t M, int64_t D, float inv_tau, float* lse,
                            int nthreads);
void ntxent_lse_sym_bwd_f32(const float* z, int64_t M, int64_t D, float inv_tau, const float* lse,
                            const float* g, float* dz, int nthreads);
void ntxent_lse_rect_fwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D,
                             int64_t q_offset, float inv_tau, float* lse, int nthreads);
void ntxent_lse_rect_bwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D,
                             int64_t q_offset, float inv_tau, const float* lse, const float* g,
                             float* dq, float* dk, int nthreads);

}  // namespace fastclr
