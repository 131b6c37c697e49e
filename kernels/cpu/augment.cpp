#include "augment.h"
#include "isa.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastclr::FASTCLR_ISA_NS {  // one copy per instruction set (isa.h)
namespace {

constexpr float kGrayR = 0.299f, kGrayG = 0.587f, kGrayB = 0.114f;  // ITU-R BT.601 luma

inline float clamp01(float v) { return std::min(std::max(v, 0.0f), 1.0f); }

// Bilinear taps along one axis, as F.interpolate(align_corners=False): source coordinate
// (o + 0.5)·len/S − 0.5 clamped at 0, neighbours lo and min(lo + 1, len − 1). The coordinate is
// computed in double, like the float64 reference.
void axis_taps(int32_t start, int32_t len, int64_t S, int32_t* lo, int32_t* hi, float* w) {
  const double scale = static_cast<double>(len) / static_cast<double>(S);
  for (int64_t o = 0; o < S; ++o) {
    double pos = (static_cast<double>(o) + 0.5) * scale - 0.5;
    if (pos < 0.0) pos = 0.0;
    const double f = std::floor(pos);
    const int32_t l = static_cast<int32_t>(f);
    lo[o] = start + l;
    hi[o] = start + std::min(l + 1, len - 1);
    w[o] = static_cast<float>(pos - f);
  }
}

void brightness(float* x, int64_t n, float f) {
  for (int64_t i = 0; i < n; ++i) x[i] = clamp01(x[i] * f);
}

float mean_luma(const float* x, int64_t pixels) {
  double acc = 0.0;
  for (int64_t p = 0; p < pixels; ++p)
    acc += kGrayR * x[3 * p] + kGrayG * x[3 * p + 1] + kGrayB * x[3 * p + 2];
  return static_cast<float>(acc / static_cast<double>(pixels));
}

void contrast(float* x, int64_t pixels, float f) {
  const float bias = (1.0f - f) * mean_luma(x, pixels);
  for (int64_t i = 0; i < 3 * pixels; ++i) x[i] = clamp01(f * x[i] + bias);
}

void saturation(float* x, int64_t pixels, float f) {
  for (int64_t p = 0; p < pixels; ++p) {
    float* px = x + 3 * p;
    const float g = (1.0f - f) * (kGrayR * px[0] + kGrayG * px[1] + kGrayB * px[2]);
    for (int c = 0; c < 3; ++c) px[c] = clamp01(f * px[c] + g);
  }
}

// Hue rotation with torchvision's HSV convention in closed form: with V = max, C = max − min and
// h6 the hue in sixths (channel holding the max decides, R before G before B), output channel c
// is V − C·clamp(min(k, 4 − k), 0, 1), k = (n_c + h6 + 6·shift) mod 6, n = 5, 3, 1 for R, G, B.
void hue(float* x, int64_t pixels, float shift) {
  for (int64_t p = 0; p < pixels; ++p) {
    float* px = x + 3 * p;
    const float r = px[0], g = px[1], b = px[2];
    const float v = std::max(r, std::max(g, b));
    const float c = v - std::min(r, std::min(g, b));
    const float cs = std::max(c, 1e-12f);
    float h6;
    if (v == r) {
      h6 = (g - b) / cs;
    } else if (v == g) {
      h6 = (b - r) / cs + 2.0f;
    } else {
      h6 = (r - g) / cs + 4.0f;
    }
    h6 += 6.0f * shift;
    const float n[3] = {5.0f, 3.0f, 1.0f};
    for (int ch = 0; ch < 3; ++ch) {
      const float u = h6 + n[ch];
      const float k = u - 6.0f * std::floor(u * (1.0f / 6.0f));  // u mod 6, in [0, 6)
      const float t = std::min(std::max(std::min(k, 4.0f - k), 0.0f), 1.0f);
      px[ch] = clamp01(v - c * t);
    }
  }
}

void grayscale(float* x, int64_t pixels) {
  for (int64_t p = 0; p < pixels; ++p) {
    float* px = x + 3 * p;
    const float g = kGrayR * px[0] + kGrayG * px[1] + kGrayB * px[2];
    px[0] = px[1] = px[2] = g;
  }
}

inline int64_t reflect(int64_t j, int64_t S) {
  if (j < 0) j = -j;
  if (j > S - 1) j = 2 * (S - 1) - j;
  return j;
}

// Separable Gaussian blur with reflect padding: along rows (the H axis) first, then columns.
// Both passes run over contiguous spans of the interleaved (S, S, 3) buffer, so they vectorise;
// only the columns within K/2 of an edge take the reflected index.
void blur(float* x, float* tmp, int64_t S, const float* taps, int64_t K) {
  const int64_t half = K / 2, row = 3 * S;
  for (int64_t i = 0; i < S; ++i) {
    float* dst = tmp + i * row;
    std::fill(dst, dst + row, 0.0f);
    for (int64_t t = 0; t < K; ++t) {
      const float w = taps[t];
      const float* src = x + reflect(i + t - half, S) * row;
      for (int64_t q = 0; q < row; ++q) dst[q] += w * src[q];
    }
  }
  for (int64_t i = 0; i < S; ++i) {
    const float* src = tmp + i * row;
    float* dst = x + i * row;
    std::fill(dst, dst + row, 0.0f);
    for (int64_t t = 0; t < K; ++t) {
      const float w = taps[t];
      const int64_t off = t - half;
      const int64_t j0 = std::max<int64_t>(0, -off), j1 = std::min<int64_t>(S, S - off);
      for (int64_t q = 3 * j0; q < 3 * j1; ++q) dst[q] += w * src[q + 3 * off];
      for (int64_t j = 0; j < j0; ++j)
        for (int c = 0; c < 3; ++c) dst[3 * j + c] += w * src[3 * reflect(j + off, S) + c];
      for (int64_t j = std::max(j1, j0); j < S; ++j)
        for (int c = 0; c < 3; ++c) dst[3 * j + c] += w * src[3 * reflect(j + off, S) + c];
    }
  }
}

// Every value the kernel indexes memory with, checked before any pixel is read: sizes, the crop
// boxes (rows y0 .. y0+h-1 and columns x0 .. x0+w-1 of an H x W source, in int64 so that no sum
// wraps), the jitter orders (a permutation of 0..3; only 0..3 select an op) and the blur width
// (reflect padding reads at most K/2 pixels past an edge, so K/2 < S). Returns "" when all
// hold, else one sentence naming the first image and field that does not.
std::string check_view_args(int64_t N, int64_t H, int64_t W, const int32_t* crop,
                            const int32_t* order, int64_t K, int64_t S) {
  if (N < 0 || H < 1 || W < 1 || S < 1)
    return "sizes must be N >= 0, H, W, S >= 1, got N=" + std::to_string(N) +
           " H=" + std::to_string(H) + " W=" + std::to_string(W) + " S=" + std::to_string(S);
  if (K < 1 || K % 2 == 0 || (K > 1 && K / 2 >= S))
    return "blur width K must be odd, >= 1 and K/2 < S, got K=" + std::to_string(K) +
           " S=" + std::to_string(S);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t y0 = crop[4 * n], x0 = crop[4 * n + 1], h = crop[4 * n + 2],
                  w = crop[4 * n + 3];
    if (y0 < 0 || x0 < 0 || h < 1 || w < 1 || y0 + h > H || x0 + w > W)
      return "crop[" + std::to_string(n) + "] = (" + std::to_string(y0) + ", " +
             std::to_string(x0) + ", " + std::to_string(h) + ", " + std::to_string(w) +
             ") (y0, x0, h, w) does not fit the " + std::to_string(H) + "x" + std::to_string(W) +
             " source";
    unsigned seen = 0;
    for (int step = 0; step < 4; ++step) {
      const int32_t op = order[4 * n + step];
      if (op >= 0 && op < 4) seen |= 1u << op;
    }
    if (seen != 0xFu) return "order[" + std::to_string(n) + "] is not a permutation of 0..3";
  }
  return "";
}

}  // namespace

void simclr_view_f32(const uint8_t* src, int64_t N, int64_t H, int64_t W, const int32_t* crop,
                     const uint8_t* flags, const float* factors, const int32_t* order,
                     const float* taps, int64_t K, float solarize_threshold, const float* mean,
                     const float* std, int64_t S, float* out) {
  const std::string bad = check_view_args(N, H, W, crop, order, K, S);
  if (!bad.empty()) throw std::invalid_argument("simclr_view_f32: " + bad);
  const int64_t pixels = S * S;
  const float inv_std[3] = {1.0f / std[0], 1.0f / std[1], 1.0f / std[2]};
#pragma omp parallel
  {
    std::vector<float> buf(3 * pixels), tmp(3 * pixels), wy(S), wx(S);
    std::vector<int32_t> ylo(S), yhi(S), xlo(S), xhi(S);
#pragma omp for schedule(dynamic, 4)
    for (int64_t n = 0; n < N; ++n) {
      const int32_t* box = crop + 4 * n;
      const uint8_t* fl = flags + 5 * n;
      const uint8_t* img = src + n * H * W * 3;
      axis_taps(box[0], box[2], S, ylo.data(), yhi.data(), wy.data());
      axis_taps(box[1], box[3], S, xlo.data(), xhi.data(), wx.data());
      float* x = buf.data();
      // crop + bilinear resize (+ flip: output column j samples source column S − 1 − j)
      for (int64_t i = 0; i < S; ++i) {
        const uint8_t* top = img + static_cast<int64_t>(ylo[i]) * W * 3;
        const uint8_t* bot = img + static_cast<int64_t>(yhi[i]) * W * 3;
        const float a = wy[i];
        for (int64_t j = 0; j < S; ++j) {
          const int64_t jj = fl[0] ? S - 1 - j : j;
          const int64_t l = static_cast<int64_t>(xlo[jj]) * 3, h = static_cast<int64_t>(xhi[jj]) * 3;
          const float b = wx[jj];
          for (int c = 0; c < 3; ++c) {
            const float t = top[l + c] + b * (static_cast<float>(top[h + c]) - top[l + c]);
            const float u = bot[l + c] + b * (static_cast<float>(bot[h + c]) - bot[l + c]);
            x[(i * S + j) * 3 + c] = (t + a * (u - t)) * (1.0f / 255.0f);
          }
        }
      }
      if (fl[1]) {
        const float* f = factors + 4 * n;
        for (int step = 0; step < 4; ++step) {
          switch (order[4 * n + step]) {
            case 0: brightness(x, 3 * pixels, f[0]); break;
            case 1: contrast(x, pixels, f[1]); break;
            case 2: saturation(x, pixels, f[2]); break;
            default: hue(x, pixels, f[3]); break;
          }
        }
      }
      if (fl[2]) grayscale(x, pixels);
      if (fl[3] && K > 1) blur(x, tmp.data(), S, taps + n * K, K);
      float* o = out + n * pixels * 3;
      for (int64_t p = 0; p < pixels; ++p)
        for (int c = 0; c < 3; ++c) {
          float v = x[3 * p + c];
          if (fl[4] && v >= solarize_threshold) v = 1.0f - v;
          o[3 * p + c] = (v - mean[c]) * inv_std[c];
        }
    }
  }
}

}  // namespace fastclr::FASTCLR_ISA_NS
