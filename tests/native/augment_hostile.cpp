// Feeds fastclr::simclr_view_f32 (kernels/cpu/augment.cpp) random hostile parameters. Built by
// tests/test_faults_native.py with AddressSanitizer: every buffer is a separate heap block of its
// exact size, so a read one byte outside any input aborts the run with a report.
//
// For each case the driver decides by itself whether the parameters are admissible (the rule of
// augment.h) and requires the kernel to throw std::invalid_argument exactly for the inadmissible
// ones and to run cleanly on the others (also with NaN, inf and huge factors and taps).
//
// Usage: augment_hostile CASES SEED      run CASES random cases; prints "ok <valid> <refused>"
//        augment_hostile --self-test     read one byte past a heap block (ASan must report it)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "augment.h"

namespace {

// A heap block of exactly n elements (never rounded up, so ASan's redzone starts at element n).
template <typename T>
struct Block {
  explicit Block(size_t n) : n(n), p(new T[n == 0 ? 1 : n]) {}
  ~Block() { delete[] p; }
  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  size_t n;
  T* p;
};

int64_t pick(std::mt19937_64& g, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(g);
}

float wild_float(std::mt19937_64& g) {
  switch (pick(g, 0, 7)) {
    case 0: return std::numeric_limits<float>::quiet_NaN();
    case 1: return std::numeric_limits<float>::infinity();
    case 2: return -std::numeric_limits<float>::infinity();
    case 3: return 1e30f;
    case 4: return -1e30f;
    default: return std::uniform_real_distribution<float>(-3.0f, 3.0f)(g);
  }
}

int32_t wild_int(std::mt19937_64& g, int64_t extent) {
  switch (pick(g, 0, 9)) {
    case 0: return std::numeric_limits<int32_t>::max();
    case 1: return std::numeric_limits<int32_t>::min();
    case 2: return static_cast<int32_t>(-pick(g, 1, 3));
    default: return static_cast<int32_t>(pick(g, 0, extent + 2));
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "--self-test") == 0) {
    Block<uint8_t> b(16);
    std::memset(b.p, 0, b.n);
    uint8_t* volatile q = b.p;  // hides the block's size from compile-time checks
    volatile uint8_t x = q[b.n];  // one past the end: ASan must abort here
    std::printf("not detected %d\n", static_cast<int>(x));
    return 0;
  }
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CASES SEED | --self-test\n", argv[0]);
    return 2;
  }
  const long cases = std::atol(argv[1]);
  std::mt19937_64 g(std::strtoull(argv[2], nullptr, 10));
  long valid = 0, refused = 0;
  for (long c = 0; c < cases; ++c) {
    const int64_t N = pick(g, 0, 3), H = pick(g, 1, 9), W = pick(g, 1, 9), S = pick(g, 1, 12);
    const bool hostile = pick(g, 0, 1) == 1;  // half the cases break the rule somewhere
    const int64_t kmax = std::max<int64_t>(1, 2 * S - 1);
    int64_t K = 2 * pick(g, 0, (kmax - 1) / 2) + 1;  // odd, K/2 < S
    if (hostile && pick(g, 0, 3) == 0) K = pick(g, -2, 3 * S + 2);
    Block<uint8_t> src(static_cast<size_t>(N * H * W * 3));
    Block<int32_t> crop(static_cast<size_t>(4 * N)), order(static_cast<size_t>(4 * N));
    Block<uint8_t> flags(static_cast<size_t>(5 * N));
    Block<float> factors(static_cast<size_t>(4 * N));
    Block<float> taps(static_cast<size_t>(N * std::max<int64_t>(K, 1)));
    Block<float> mean(3), stdv(3), out(static_cast<size_t>(N * S * S * 3));
    for (size_t i = 0; i < src.n; ++i) src.p[i] = static_cast<uint8_t>(pick(g, 0, 255));
    for (int ch = 0; ch < 3; ++ch) {
      mean.p[ch] = 0.5f;
      stdv.p[ch] = 0.25f;
    }
    for (int64_t n = 0; n < N; ++n) {
      const int64_t h = pick(g, 1, H), w = pick(g, 1, W);
      int32_t* box = crop.p + 4 * n;
      box[0] = static_cast<int32_t>(pick(g, 0, H - h));
      box[1] = static_cast<int32_t>(pick(g, 0, W - w));
      box[2] = static_cast<int32_t>(h);
      box[3] = static_cast<int32_t>(w);
      int32_t perm[4] = {0, 1, 2, 3};
      std::shuffle(perm, perm + 4, g);
      for (int k = 0; k < 4; ++k) order.p[4 * n + k] = perm[k];
      if (hostile && pick(g, 0, 1) == 0) box[pick(g, 0, 3)] = wild_int(g, std::max(H, W));
      if (hostile && pick(g, 0, 2) == 0) order.p[4 * n + pick(g, 0, 3)] = wild_int(g, 4);
      for (int f = 0; f < 5; ++f) flags.p[5 * n + f] = static_cast<uint8_t>(pick(g, 0, 255) & 1 ? 255 : 0);
      flags.p[5 * n + 3] = 1;  // always blur: the widest reads
      for (int f = 0; f < 4; ++f) factors.p[4 * n + f] = hostile ? wild_float(g) : 1.0f;
    }
    for (size_t i = 0; i < taps.n; ++i) taps.p[i] = hostile ? wild_float(g) : 1.0f / K;
    // The rule of augment.h, restated independently of the kernel's own check.
    bool ok = K >= 1 && K % 2 == 1 && (K == 1 || K / 2 < S);
    for (int64_t n = 0; n < N && ok; ++n) {
      const int64_t y0 = crop.p[4 * n], x0 = crop.p[4 * n + 1], h = crop.p[4 * n + 2],
                    w = crop.p[4 * n + 3];
      ok = y0 >= 0 && x0 >= 0 && h >= 1 && w >= 1 && y0 + h <= H && x0 + w <= W;
      int seen[4] = {0, 0, 0, 0};
      for (int k = 0; k < 4 && ok; ++k) {
        const int32_t op = order.p[4 * n + k];
        ok = op >= 0 && op < 4 && seen[op]++ == 0;
      }
    }
    bool threw = false;
    try {
      fastclr::simclr_view_f32(src.p, N, H, W, crop.p, flags.p, factors.p, order.p, taps.p, K,
                               0.5f, mean.p, stdv.p, S, out.p);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    if (threw == ok) {
      std::fprintf(stderr, "case %ld: N=%lld H=%lld W=%lld S=%lld K=%lld admissible=%d threw=%d\n",
                   c, static_cast<long long>(N), static_cast<long long>(H),
                   static_cast<long long>(W), static_cast<long long>(S),
                   static_cast<long long>(K), ok ? 1 : 0, threw ? 1 : 0);
      return 1;
    }
    (ok ? valid : refused) += 1;
  }
  std::printf("ok %ld %ld\n", valid, refused);
  return 0;
}
