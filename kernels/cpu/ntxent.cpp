// Tiled NT-Xent log-sum-exp kernels; the maths, the constant-shift switch rule and the threading
// contract are in ntxent.h.
//
// Structure: the (padded) inputs are cut into kBlock×kBlock tiles. A tile of S = ẑ_I ẑ_Jᵀ / τ is
// computed by a register-blocked micro-kernel (kMR×kNR outputs in registers, B operand packed)
// into a per-thread buffer, an epilogue turns it into exps / gradient weights (vectorised exp
// polynomial below), and the backwards push the weight tile through a second register-blocked
// micro-kernel (kMR2 rows × kNV2 vectors of D). The vector code uses GCC/Clang vector extensions;
// its width and the two micro-kernels' blocking follow the instruction set this copy is compiled
// for (isa.h), so that the accumulators and operands fit the register file:
//
//   copy      vector        registers   S micro-kernel           gradient micro-kernel
//   avx512    16 fp32 (zmm)  32         12×32: 24 acc + 2 B + 1  6×64: 24 acc + 4 B + 1
//   avx2       8 fp32 (ymm)  16          6×16: 12 acc + 2 B + 1  6×16: 12 acc + 2 B + 1
//   baseline   4 fp32 (xmm)  16          6×8:  12 acc + 2 B + 1  6×8:  12 acc + 2 B + 1
//
// (SSE2 has no FMA: a product takes one more register before it is added.)
#include "ntxent.h"
#include "isa.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <utility>
#include <vector>

#ifdef FASTCLR_HAVE_OPENMP
#include <omp.h>
#endif

namespace fastclr::FASTCLR_ISA_NS {  // one copy per instruction set (isa.h)
namespace {

// Tile side. A multiple of every copy's kMR, kNR and kMR2 (and of 16 lanes); a 96×96 fp32 tile
// (36 KiB) and its two 96×128 operand blocks (48 KiB each) stay in L2 while the tile is worked on.
constexpr int64_t kBlock = 96;
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;  // fp32 lanes per vector (one zmm)
// S micro-kernel: 12 rows × 32 columns = 24 zmm accumulators, 2 B loads, 1 broadcast (of 32).
constexpr int kMR = 12;
constexpr int kNR = 32;
// Gradient micro-kernel: 6 rows × 64 columns of D = 24 accumulators, 4 B loads, 1 broadcast.
constexpr int kMR2 = 6;
constexpr int kNV2 = 4;
#elif defined(__AVX2__)
constexpr int64_t kLanes = 8;  // one ymm
// S: 6 rows × 16 columns = 12 ymm accumulators, 2 B loads, 1 broadcast (of 16).
constexpr int kMR = 6;
constexpr int kNR = 16;
// Gradient: 6 rows × 16 columns of D = 12 accumulators, 2 B loads, 1 broadcast.
constexpr int kMR2 = 6;
constexpr int kNV2 = 2;
#else
constexpr int64_t kLanes = 4;  // one xmm (SSE2, the x86-64 baseline; or any other target)
// S: 6 rows × 8 columns = 12 xmm accumulators, 2 B loads, 1 broadcast, 1 product (of 16).
constexpr int kMR = 6;
constexpr int kNR = 8;
// Gradient: 6 rows × 8 columns of D = 12 accumulators, 2 B loads, 1 broadcast, 1 product.
constexpr int kMR2 = 6;
constexpr int kNV2 = 2;
#endif
constexpr int kNV = kNR / kLanes;           // vectors per S micro-kernel row
constexpr int kTileVecs = kBlock / kLanes;  // vectors per tile row
// Largest |r_a| = |g_a|·exp(c − LSE_a) the one-exp backward accepts: r_a + r_k stays finite.
constexpr double kMaxRowFactor = 1e37;
// Total bytes of the per-thread gradient buffers of a backward (each a full padded (M, D) fp32
// copy); past it the backward runs on fewer threads, so memory stays O(M·D) on many-core machines.
constexpr int64_t kGradBufferBudget = int64_t{512} << 20;
static_assert(kBlock % kMR == 0 && kBlock % kNR == 0 && kBlock % kMR2 == 0, "tile side");
static_assert(kBlock % 16 == 0 && kNR % kLanes == 0, "tile side");

typedef float vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t veci __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vec vload(const float* p) {
  vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, vec v) { std::memcpy(p, &v, sizeof v); }
// (an explicit initialiser, not vec{} + x: that costs an add and a register broadcast on the FMA
// port instead of one broadcast load)
template <size_t... L>
inline vec vbcast_(float x, std::index_sequence<L...>) {
  return vec{((void)L, x)...};
}
inline vec vbcast(float x) { return vbcast_(x, std::make_index_sequence<kLanes>()); }
template <size_t... L>
constexpr veci lane_index(std::index_sequence<L...>) {
  return veci{static_cast<int32_t>(L)...};
}
const veci kLaneIndex = lane_index(std::make_index_sequence<kLanes>());

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));
// Horizontal sum as a fixed tree (halves added pairwise): short dependency chain, same order
// every call.
inline float hsum4(v4 b) { return (b[0] + b[2]) + (b[1] + b[3]); }
inline float hsum8(v8 a) {
  return hsum4(__builtin_shufflevector(a, a, 0, 1, 2, 3) +
               __builtin_shufflevector(a, a, 4, 5, 6, 7));
}
inline float hsum(vec v) {
#if defined(__AVX512F__)
  return hsum8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
               __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
#elif defined(__AVX2__)
  return hsum8(v);
#else
  return hsum4(v);
#endif
}
inline float hmax(vec v) {
  float m = v[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, v[l]);
  return m;
}

inline vec vexp(vec x) {
  const vec lo = vbcast(-87.33f);
  const vec hi = vbcast(88.3f);
  vec xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vec magic = vbcast(12582912.0f);  // 1.5·2²³: adding it rounds to an integer
  const vec n = (xc * 1.44269504088896341f + magic) - magic;
  vec r = xc - n * 0.693145751953125f;  // ln2 split in a high part exact in fp32 ...
  r = r - n * 1.42860682030941723212e-6f;  // ... and the low remainder
  vec p = vbcast(1.0f / 5040.0f);
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const veci bits = (__builtin_convertvector(n, veci) + 127) << 23;
  vec scale;
  std::memcpy(&scale, &bits, sizeof scale);
  const vec y = p * scale;
  return x < lo ? vec{} : y;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

int thread_id() {
#ifdef FASTCLR_HAVE_OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
int team_size() {
#ifdef FASTCLR_HAVE_OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// 64-byte aligned fp32 buffer (not initialised).
class Buf {
 public:
  explicit Buf(int64_t n) {
    size_t bytes = (static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
    p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p_) throw std::bad_alloc();
  }
  ~Buf() { std::free(p_); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  float* get() const { return p_; }

 private:
  float* p_;
};

// Runs body(tid, nt, S) once on each thread of an OpenMP team of (at most) nthreads, S being that
// thread's own kBlock×kBlock tile buffer; the body may hold an orphaned `omp for`. Returns the
// team's size: how many per-thread buffers a body indexed by tid has filled.
template <class Body>
int tile_team(int nthreads, Body&& body) {
  Buf tiles(nthreads * kBlock * kBlock);
  int used = 1;
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = thread_id(), nt = team_size();
    if (tid == 0) used = nt;
    body(tid, nt, tiles.get() + tid * kBlock * kBlock);
  }
  return used;
}

// (M, D) → zero-padded (Mp, Dp) copy.
void pad_rows(const float* src, int64_t M, int64_t D, int64_t Mp, int64_t Dp, float* dst,
              int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t a = 0; a < Mp; ++a) {
    float* y = dst + a * Dp;
    if (a < M) {
      std::memcpy(y, src + a * D, static_cast<size_t>(D) * sizeof(float));
      std::fill(y + D, y + Dp, 0.0f);
    } else {
      std::fill(y, y + Dp, 0.0f);
    }
  }
}

// Padded (Mp, Dp) rows → panels of `width` rows, each stored transposed: panel[p][d][jj] =
// rows[p·width + jj][d], so a micro-kernel reads one contiguous run per step of d. The panels of
// block J start at J·kBlock·Dp.
void pack_panels(const float* rows, int64_t Mp, int64_t Dp, int64_t width, float* dst,
                 int nthreads) {
  const int64_t np = Mp / width;
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t p = 0; p < np; ++p) {
    float* out = dst + p * width * Dp;
    const float* in = rows + p * width * Dp;
    for (int64_t jj = 0; jj < width; ++jj)
      for (int64_t d = 0; d < Dp; ++d) out[d * width + jj] = in[jj * Dp + d];
  }
}

// C (kMR×kNR, row stride kBlock) = scale · A (K×kMR panel) · B (K×kNR panel).
inline void micro_s(const float* A, int64_t K, const float* panel, float scale, float* C) {
  vec c[kMR][kNV];
  for (int r = 0; r < kMR; ++r)
    for (int v = 0; v < kNV; ++v) c[r][v] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    vec b[kNV];
    for (int v = 0; v < kNV; ++v) b[v] = vload(panel + k * kNR + v * kLanes);
#pragma GCC unroll 12
    for (int r = 0; r < kMR; ++r) {
      const vec a = vbcast(A[k * kMR + r]);
      for (int v = 0; v < kNV; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < kMR; ++r)
    for (int v = 0; v < kNV; ++v) vstore(C + r * kBlock + v * kLanes, c[r][v] * scale);
}

// S (kBlock×kBlock) = scale · rows_I · rows_Jᵀ, both given as packed panels (kMR / kNR wide).
void tile_dot(const float* panels_i, const float* panels_j, int64_t Dp, float scale, float* S) {
  for (int64_t jp = 0; jp < kBlock; jp += kNR) {
    const float* panel = panels_j + jp * Dp;
    for (int64_t ip = 0; ip < kBlock; ip += kMR)
      micro_s(panels_i + ip * Dp, Dp, panel, scale, S + ip * kBlock + jp);
  }
}

// C (kMR2 rows, stride ldc; NV vectors) += Σ_k A[r·ars + k·acs] · B[k·ldb + ·], k < kBlock.
template <int NV>
inline void micro_acc(const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb,
                      float* C, int64_t ldc) {
  vec c[kMR2][NV];
  for (int r = 0; r < kMR2; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = vload(C + r * ldc + v * kLanes);
  for (int64_t k = 0; k < kBlock; ++k) {
    vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = vload(B + k * ldb + v * kLanes);
#pragma GCC unroll 6
    for (int r = 0; r < kMR2; ++r) {
      const vec a = vbcast(A[r * ars + k * acs]);
      for (int v = 0; v < NV; ++v) c[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < kMR2; ++r)
    for (int v = 0; v < NV; ++v) vstore(C + r * ldc + v * kLanes, c[r][v]);
}

// micro_acc<NV> for the last nv < kNV2 vectors of a row of D (NV counts down to 1).
template <int NV>
inline void micro_acc_tail(int64_t nv, const float* A, int64_t ars, int64_t acs, const float* B,
                           int64_t ldb, float* C, int64_t ldc) {
  if constexpr (NV > 0) {
    if (nv == NV)
      micro_acc<NV>(A, ars, acs, B, ldb, C, ldc);
    else
      micro_acc_tail<NV - 1>(nv, A, ars, acs, B, ldb, C, ldc);
  }
}

// C (kBlock, Dp) += A (kBlock×kBlock, element (i,k) at i·ars + k·acs) · B (kBlock, Dp).
void tile_acc(const float* A, int64_t ars, int64_t acs, const float* B, int64_t Dp, float* C) {
  for (int64_t ip = 0; ip < kBlock; ip += kMR2) {
    const float* a = A + ip * ars;
    float* c = C + ip * Dp;
    int64_t d = 0;
    for (; d + kNV2 * kLanes <= Dp; d += kNV2 * kLanes)
      micro_acc<kNV2>(a, ars, acs, B + d, Dp, c + d, Dp);
    micro_acc_tail<kNV2 - 1>((Dp - d) / kLanes, a, ars, acs, B + d, Dp, c + d, Dp);
  }
}

// Mask of the tile entries that are not pairs: the self pair (column gk == row gi) and padded
// columns (gk ≥ valid_cols).
inline veci excluded(int64_t gi, int64_t k0, int64_t valid_cols) {
  const veci gk = kLaneIndex + static_cast<int32_t>(k0);
  return (gk == static_cast<int32_t>(gi)) | (gk >= static_cast<int32_t>(valid_cols));
}

// Padded inputs shared by the kernels of one call.
struct Padded {
  int64_t M, Mp, Dp, nb;
  Buf rows, panels, row_panels;
  Padded(const float* z, int64_t M_, int64_t D, int nthreads)
      : M(M_),
        Mp(round_up(std::max<int64_t>(M_, 1), kBlock)),
        Dp(round_up(std::max<int64_t>(D, 1), kLanes)),
        nb(Mp / kBlock),
        rows(Mp * Dp),
        panels(Mp * Dp),
        row_panels(Mp * Dp) {
    pad_rows(z, M, D, Mp, Dp, rows.get(), nthreads);
    pack_panels(rows.get(), Mp, Dp, kNR, panels.get(), nthreads);
    pack_panels(rows.get(), Mp, Dp, kMR, row_panels.get(), nthreads);
  }
  const float* block(int64_t I) const { return rows.get() + I * kBlock * Dp; }
  const float* block_panels(int64_t J) const { return panels.get() + J * kBlock * Dp; }
  const float* block_row_panels(int64_t I) const { return row_panels.get() + I * kBlock * Dp; }
};

// The upper-triangle tile pairs (I, J), I ≤ J, in a fixed order; thread t takes pairs t, t+T, …
std::vector<std::pair<int32_t, int32_t>> upper_pairs(int64_t nb) {
  std::vector<std::pair<int32_t, int32_t>> pairs;
  pairs.reserve(static_cast<size_t>(nb * (nb + 1) / 2));
  for (int64_t J = 0; J < nb; ++J)
    for (int64_t I = 0; I <= J; ++I)
      pairs.emplace_back(static_cast<int32_t>(I), static_cast<int32_t>(J));
  return pairs;
}

// ---------------------------------------------------------------------------------------------
// symmetric forward, constant shift c = 1/τ

// Adds Σ_k e_ik to acc[row i] for the rows of block I and, when I ≠ J, Σ_i e_ik to acc[col k].
// kMask: the tile holds self pairs (I == J) or padded columns; other tiles skip the mask.
template <bool kMask>
void sym_fwd_epilogue(const float* S, int64_t I, int64_t J, int64_t M, float c, double* acc) {
  const int64_t i0 = I * kBlock, j0 = J * kBlock;
  vec col[kTileVecs];
  for (int v = 0; v < kTileVecs; ++v) col[v] = vec{};
  for (int64_t i = 0; i < kBlock; ++i) {
    vec rs = vec{};
    for (int v = 0; v < kTileVecs; ++v) {
      vec e = vexp(vload(S + i * kBlock + v * kLanes) - c);
      if (kMask) e = excluded(i0 + i, j0 + v * kLanes, M) ? vec{} : e;
      rs += e;
      col[v] += e;
    }
    acc[i0 + i] += hsum(rs);
  }
  if (I != J)
    for (int v = 0; v < kTileVecs; ++v)
      for (int l = 0; l < kLanes; ++l) acc[j0 + v * kLanes + l] += col[v][l];
}

void sym_fwd_const(const float* z, int64_t M, int64_t D, float inv_tau, float* lse, int nthreads) {
  const Padded zp(z, M, D, nthreads);
  const auto pairs = upper_pairs(zp.nb);
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  std::vector<double> acc(static_cast<size_t>(nthreads * zp.Mp), 0.0);
  const int used = tile_team(nthreads, [&](int tid, int nt, float* S) {
    double* mine = acc.data() + tid * zp.Mp;
    for (int64_t t = tid; t < npairs; t += nt) {
      const auto [I, J] = pairs[static_cast<size_t>(t)];
      tile_dot(zp.block_row_panels(I), zp.block_panels(J), zp.Dp, inv_tau, S);
      if (I == J || (J + 1) * kBlock > M)
        sym_fwd_epilogue<true>(S, I, J, M, inv_tau, mine);
      else
        sym_fwd_epilogue<false>(S, I, J, M, inv_tau, mine);
    }
  });
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t a = 0; a < M; ++a) {
    double s = 0.0;
    for (int t = 0; t < used; ++t) s += acc[static_cast<size_t>(t * zp.Mp + a)];
    // natural log; s == 0 only when M == 1 (no k ≠ a): LSE = -inf, as the definition says
    lse[a] = static_cast<float>(static_cast<double>(inv_tau) + std::log(s));
  }
}

// ---------------------------------------------------------------------------------------------
// rect forward, online running max (also the symmetric forward for 2/τ > kConstShiftMaxSpan)

void rect_fwd(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D, int64_t q_offset,
              float inv_tau, float* lse, int nthreads) {
  const Padded qp(q, Mq, D, nthreads);
  const Padded kp(k, Mk, D, nthreads);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  tile_team(nthreads, [&](int, int, float* S) {
    float run_max[kBlock];
    double run_sum[kBlock];
#pragma omp for schedule(static)
    for (int64_t I = 0; I < qp.nb; ++I) {
      std::fill(run_max, run_max + kBlock, neg_inf);
      std::fill(run_sum, run_sum + kBlock, 0.0);
      for (int64_t J = 0; J < kp.nb; ++J) {
        tile_dot(qp.block_row_panels(I), kp.block_panels(J), qp.Dp, inv_tau, S);
        for (int64_t i = 0; i < kBlock; ++i) {
          const int64_t gi = I * kBlock + i;
          const int64_t self = gi < Mq ? gi + q_offset : -1;
          float* row = S + i * kBlock;
          vec vmax = vbcast(neg_inf);
          for (int v = 0; v < kTileVecs; ++v) {
            vec s = vload(row + v * kLanes);
            s = excluded(self, J * kBlock + v * kLanes, Mk) ? vbcast(neg_inf) : s;
            vstore(row + v * kLanes, s);
            vmax = s > vmax ? s : vmax;
          }
          const float m_new = std::max(run_max[i], hmax(vmax));
          if (m_new == neg_inf) continue;  // nothing seen yet in this row
          vec rs = vec{};
          for (int v = 0; v < kTileVecs; ++v) rs += vexp(vload(row + v * kLanes) - m_new);
          run_sum[i] = run_sum[i] * std::exp(static_cast<double>(run_max[i]) - m_new) + hsum(rs);
          run_max[i] = m_new;
        }
      }
      for (int64_t i = 0; i < kBlock && I * kBlock + i < Mq; ++i)
        lse[I * kBlock + i] = run_sum[i] > 0.0
                                  ? static_cast<float>(run_max[i] + std::log(run_sum[i]))
                                  : neg_inf;  // natural log; -inf only when there is no key
    }
  });
}

// ---------------------------------------------------------------------------------------------
// backwards

// Per-row factors of the backward: rows without a finite LSE (M == 1: no pair) and padded rows
// get g = 0 and LSE = +inf, so every weight of theirs is exactly 0.
void row_factors(const float* lse, const float* g, int64_t M, int64_t Mp, std::vector<float>& gp,
                 std::vector<float>& lp) {
  gp.assign(static_cast<size_t>(Mp), 0.0f);
  lp.assign(static_cast<size_t>(Mp), std::numeric_limits<float>::infinity());
  for (int64_t a = 0; a < M; ++a) {
    if (std::isfinite(lse[a])) {
      gp[static_cast<size_t>(a)] = g[a];
      lp[static_cast<size_t>(a)] = lse[a];
    }
  }
}

// Symmetric weight tile T = (W + Wᵀ) restricted to (I, J), one exp per pair:
// T_ik = exp(s_ik − c) · (r_i + r_k).
void sym_bwd_epilogue_shift(float* S, int64_t I, int64_t J, float c, const float* r) {
  const int64_t i0 = I * kBlock, j0 = J * kBlock;
  for (int64_t i = 0; i < kBlock; ++i) {
    const vec ri = vbcast(r[i0 + i]);
    float* row = S + i * kBlock;
    for (int v = 0; v < kTileVecs; ++v) {
      const vec t = vexp(vload(row + v * kLanes) - c) * (ri + vload(r + j0 + v * kLanes));
      // only the self pair needs masking: padded rows/columns meet zero rows of ẑ
      vstore(row + v * kLanes, excluded(i0 + i, j0 + v * kLanes, INT32_MAX) ? vec{} : t);
    }
  }
}

// The same tile with two exps per pair, safe for any τ: T_ik = g_i e^{s_ik−L_i} + g_k e^{s_ik−L_k}.
void sym_bwd_epilogue_two_exp(float* S, int64_t I, int64_t J, const float* g, const float* L) {
  const int64_t i0 = I * kBlock, j0 = J * kBlock;
  for (int64_t i = 0; i < kBlock; ++i) {
    const vec gi = vbcast(g[i0 + i]);
    const vec li = vbcast(L[i0 + i]);
    float* row = S + i * kBlock;
    for (int v = 0; v < kTileVecs; ++v) {
      const vec s = vload(row + v * kLanes);
      const vec t = gi * vexp(s - li) +
                    vload(g + j0 + v * kLanes) * vexp(s - vload(L + j0 + v * kLanes));
      vstore(row + v * kLanes, excluded(i0 + i, j0 + v * kLanes, INT32_MAX) ? vec{} : t);
    }
  }
}

// Threads a backward with per-thread buffers of `slot` floats may use (see kGradBufferBudget).
int buffer_threads(int nthreads, int64_t slot) {
  const int64_t cap = kGradBufferBudget / (slot * static_cast<int64_t>(sizeof(float)));
  return static_cast<int>(std::clamp<int64_t>(cap, 1, nthreads));
}

// out (M, D) = scale · Σ_t bufs[t] (rows of stride Dp), threads summed in order.
void reduce_rows(const float* bufs, int used, int64_t buf_stride, int64_t M, int64_t D,
                 int64_t Dp, float scale, float* out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t a = 0; a < M; ++a) {
    for (int64_t d = 0; d < D; ++d) {
      float s = 0.0f;
      for (int t = 0; t < used; ++t) s += bufs[t * buf_stride + a * Dp + d];
      out[a * D + d] = s * scale;
    }
  }
}

void sym_bwd(const float* z, int64_t M, int64_t D, float inv_tau, const float* lse,
             const float* g, float* dz, int nthreads) {
  const Padded zp(z, M, D, nthreads);
  std::vector<float> gp, lp;
  row_factors(lse, g, M, zp.Mp, gp, lp);
  // r_a = g_a · exp(c − LSE_a); the one-exp form is used when every r_a is representable.
  bool shift = ntxent_uses_constant_shift(inv_tau);
  std::vector<float> r(static_cast<size_t>(zp.Mp), 0.0f);
  for (int64_t a = 0; a < M && shift; ++a) {
    const size_t i = static_cast<size_t>(a);
    const double ra = static_cast<double>(gp[i]) *
                      std::exp(static_cast<double>(inv_tau) - static_cast<double>(lp[i]));
    // (false for NaN too: the two-exp form then carries the NaN into the gradient)
    if (!(std::fabs(ra) < kMaxRowFactor)) shift = false;
    r[i] = static_cast<float>(ra);
  }
  const auto pairs = upper_pairs(zp.nb);
  const int64_t npairs = static_cast<int64_t>(pairs.size());
  const int64_t slot = zp.Mp * zp.Dp;
  nthreads = buffer_threads(nthreads, slot);
  Buf grads(nthreads * slot);
  const int used = tile_team(nthreads, [&](int tid, int nt, float* S) {
    float* mine = grads.get() + tid * slot;
    std::fill(mine, mine + slot, 0.0f);
    for (int64_t t = tid; t < npairs; t += nt) {
      const auto [I, J] = pairs[static_cast<size_t>(t)];
      tile_dot(zp.block_row_panels(I), zp.block_panels(J), zp.Dp, inv_tau, S);
      if (shift)
        sym_bwd_epilogue_shift(S, I, J, inv_tau, r.data());
      else
        sym_bwd_epilogue_two_exp(S, I, J, gp.data(), lp.data());
      tile_acc(S, kBlock, 1, zp.block(J), zp.Dp, mine + I * kBlock * zp.Dp);  // dẑ_I += T ẑ_J
      if (I != J)
        tile_acc(S, 1, kBlock, zp.block(I), zp.Dp, mine + J * kBlock * zp.Dp);  // dẑ_J += Tᵀ ẑ_I
    }
  });
  reduce_rows(grads.get(), used, slot, M, D, zp.Dp, inv_tau, dz, nthreads);
}

void rect_bwd(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D, int64_t q_offset,
              float inv_tau, const float* lse, const float* g, float* dq, float* dk,
              int nthreads) {
  const Padded qp(q, Mq, D, nthreads);
  const Padded kp(k, Mk, D, nthreads);
  std::vector<float> gp, lp;
  row_factors(lse, g, Mq, qp.Mp, gp, lp);
  const int64_t kslot = kp.Mp * kp.Dp;
  nthreads = buffer_threads(nthreads, kslot);
  Buf dq_buf(qp.Mp * qp.Dp);
  Buf dk_bufs(nthreads * kslot);
  const int used = tile_team(nthreads, [&](int tid, int, float* S) {
    float* mine = dk_bufs.get() + tid * kslot;
    std::fill(mine, mine + kslot, 0.0f);
#pragma omp for schedule(static)
    for (int64_t I = 0; I < qp.nb; ++I) {
      float* dq_rows = dq_buf.get() + I * kBlock * qp.Dp;
      std::fill(dq_rows, dq_rows + kBlock * qp.Dp, 0.0f);
      for (int64_t J = 0; J < kp.nb; ++J) {
        tile_dot(qp.block_row_panels(I), kp.block_panels(J), qp.Dp, inv_tau, S);
        // W_ik = g_i · exp(s_ik − L_i), 0 on the self pair and padded keys
        for (int64_t i = 0; i < kBlock; ++i) {
          const int64_t gi = I * kBlock + i;
          const int64_t self = gi < Mq ? gi + q_offset : -1;
          const vec g_i = vbcast(gp[static_cast<size_t>(gi)]);
          const vec l_i = vbcast(lp[static_cast<size_t>(gi)]);
          float* row = S + i * kBlock;
          for (int v = 0; v < kTileVecs; ++v) {
            const vec w = g_i * vexp(vload(row + v * kLanes) - l_i);
            vstore(row + v * kLanes, excluded(self, J * kBlock + v * kLanes, Mk) ? vec{} : w);
          }
        }
        tile_acc(S, kBlock, 1, kp.block(J), kp.Dp, dq_rows);                     // dq_I += W k_J
        tile_acc(S, 1, kBlock, qp.block(I), qp.Dp, mine + J * kBlock * kp.Dp);  // dk_J += Wᵀ q_I
      }
    }
  });
  reduce_rows(dq_buf.get(), 1, 0, Mq, D, qp.Dp, inv_tau, dq, nthreads);
  reduce_rows(dk_bufs.get(), used, kslot, Mk, D, kp.Dp, inv_tau, dk, nthreads);
}

}  // namespace

bool ntxent_uses_constant_shift(float inv_tau) { return 2.0f * inv_tau <= kConstShiftMaxSpan; }

void ntxent_lse_sym_fwd_f32(const float* z, int64_t M, int64_t D, float inv_tau, float* lse,
                            int nthreads) {
  if (M <= 0) return;
  nthreads = std::max(nthreads, 1);
  if (ntxent_uses_constant_shift(inv_tau))
    sym_fwd_const(z, M, D, inv_tau, lse, nthreads);
  else
    rect_fwd(z, M, z, M, D, 0, inv_tau, lse, nthreads);
}

void ntxent_lse_sym_bwd_f32(const float* z, int64_t M, int64_t D, float inv_tau, const float* lse,
                            const float* g, float* dz, int nthreads) {
  if (M <= 0) return;
  sym_bwd(z, M, D, inv_tau, lse, g, dz, std::max(nthreads, 1));
}

void ntxent_lse_rect_fwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D,
                             int64_t q_offset, float inv_tau, float* lse, int nthreads) {
  if (Mq <= 0) return;
  rect_fwd(q, Mq, k, Mk, D, q_offset, inv_tau, lse, std::max(nthreads, 1));
}

void ntxent_lse_rect_bwd_f32(const float* q, int64_t Mq, const float* k, int64_t Mk, int64_t D,
                             int64_t q_offset, float inv_tau, const float* lse, const float* g,
                             float* dq, float* dk, int nthreads) {
  if (Mk <= 0) return;
  if (Mq <= 0) {
    std::fill(dk, dk + Mk * D, 0.0f);
    return;
  }
  rect_bwd(q, Mq, k, Mk, D, q_offset, inv_tau, lse, g, dq, dk, std::max(nthreads, 1));
}

}  // namespace fastclr::FASTCLR_ISA_NS
