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

// Bilinear taps along one axis for a box [start, start + len) of ORIGINAL pixels, sampled S times
// as F.interpolate(align_corners=False) samples the cropped tensor: local coordinate
// p = (o + 0.5)·len/S − 0.5 clamped to [0, len − 1] (the box's edge pixels), neighbours floor and
// floor + 1 (kept inside the box). For a source decoded at 1/scale of the original (libjpeg DCT
// scaling), the original coordinate start + p maps to (start + p + 0.5)/scale − 0.5 on the reduced
// grid, clamped to its `limit` pixels (fastclr/data/decode.py, resize_box). Coordinates are
// computed in double, like the float64 reference.
void axis_taps(int64_t start, int64_t len, int64_t S, int64_t scale, int64_t limit, int32_t* lo,
               int32_t* hi, float* w) {
  const double step = static_cast<double>(len) / static_cast<double>(S);
  const double last_local = static_cast<double>(len - 1);
  for (int64_t o = 0; o < S; ++o) {
    double p = (static_cast<double>(o) + 0.5) * step - 0.5;
    p = std::min(std::max(p, 0.0), last_local);
    double c = static_cast<double>(start) + p;
    int64_t last = start + len - 1;
    if (scale > 1) {
      c = (c + 0.5) / static_cast<double>(scale) - 0.5;
      c = std::min(std::max(c, 0.0), static_cast<double>(limit - 1));
      last = limit - 1;
    }
    const double f = std::floor(c);
    const int64_t l = static_cast<int64_t>(f);
    lo[o] = static_cast<int32_t>(l);
    hi[o] = static_cast<int32_t>(std::min(l + 1, last));
    w[o] = static_cast<float>(c - f);
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

// Every value the kernel indexes memory with is checked before any pixel is read: sizes, the crop
// boxes (rows y0 .. y0+h-1 and columns x0 .. x0+w-1 of the ORIGINAL H x W image, in int64 so that
// no sum wraps), the jitter orders (a permutation of 0..3; only 0..3 select an op) and the blur
// width (reflect padding reads at most K/2 pixels past an edge, so K/2 < S). Each check returns ""
// when it holds, else one sentence naming the image and field that does not.
std::string check_out_args(int64_t N, int64_t K, int64_t S) {
  if (N < 0 || S < 1)
    return "sizes must be N >= 0, S >= 1, got N=" + std::to_string(N) + " S=" + std::to_string(S);
  if (K < 1 || K % 2 == 0 || (K > 1 && K / 2 >= S))
    return "blur width K must be odd, >= 1 and K/2 < S, got K=" + std::to_string(K) +
           " S=" + std::to_string(S);
  return "";
}

std::string check_view(int64_t n, int64_t H, int64_t W, const int32_t* box, const int32_t* order) {
  if (H < 1 || W < 1)
    return "image " + std::to_string(n) + " has size " + std::to_string(H) + "x" +
           std::to_string(W) + "; H, W must be >= 1";
  const int64_t y0 = box[0], x0 = box[1], h = box[2], w = box[3];
  if (y0 < 0 || x0 < 0 || h < 1 || w < 1 || y0 + h > H || x0 + w > W)
    return "crop[" + std::to_string(n) + "] = (" + std::to_string(y0) + ", " + std::to_string(x0) +
           ", " + std::to_string(h) + ", " + std::to_string(w) + ") (y0, x0, h, w) does not fit the " +
           std::to_string(H) + "x" + std::to_string(W) + " source";
  unsigned seen = 0;
  for (int step = 0; step < 4; ++step) {
    const int32_t op = order[step];
    if (op >= 0 && op < 4) seen |= 1u << op;
  }
  if (seen != 0xFu) return "order[" + std::to_string(n) + "] is not a permutation of 0..3";
  return "";
}

// Per-thread work buffers: one S x S x 3 image and the resize taps.
struct Scratch {
  std::vector<float> buf, tmp, wy, wx;
  std::vector<int32_t> ylo, yhi, xlo, xhi;
  explicit Scratch(int64_t S)
      : buf(3 * S * S), tmp(3 * S * S), wy(S), wx(S), ylo(S), yhi(S), xlo(S), xhi(S) {}
};

// The parameters of one view: rows of the caller's (N, .) arrays (augment.h).
struct View {
  const int32_t* box;     // (y0, x0, h, w) in ORIGINAL pixels
  const uint8_t* flags;   // flip, jitter, gray, blur, solarize
  const float* factors;   // brightness, contrast, saturation, hue
  const int32_t* order;   // jitter order
  const float* taps;      // K blur taps
};

struct Output {
  int64_t S, K;
  float solarize_threshold;
  const float* mean;
  float inv_std[3];
};

// Crop + bilinear resize (+ flip: output column j samples column S - 1 - j) of one view from img,
// an (H, W, 3) uint8 image decoded at 1/scale of the original, into x (S, S, 3) in [0, 1].
void crop_resize(const uint8_t* img, int64_t H, int64_t W, int64_t scale, const View& v,
                 int64_t S, Scratch& s) {
  axis_taps(v.box[0], v.box[2], S, scale, H, s.ylo.data(), s.yhi.data(), s.wy.data());
  axis_taps(v.box[1], v.box[3], S, scale, W, s.xlo.data(), s.xhi.data(), s.wx.data());
  float* x = s.buf.data();
  for (int64_t i = 0; i < S; ++i) {
    const uint8_t* top = img + static_cast<int64_t>(s.ylo[i]) * W * 3;
    const uint8_t* bot = img + static_cast<int64_t>(s.yhi[i]) * W * 3;
    const float a = s.wy[i];
    for (int64_t j = 0; j < S; ++j) {
      const int64_t jj = v.flags[0] ? S - 1 - j : j;
      const int64_t l = static_cast<int64_t>(s.xlo[jj]) * 3, h = static_cast<int64_t>(s.xhi[jj]) * 3;
      const float b = s.wx[jj];
      for (int c = 0; c < 3; ++c) {
        const float t = top[l + c] + b * (static_cast<float>(top[h + c]) - top[l + c]);
        const float u = bot[l + c] + b * (static_cast<float>(bot[h + c]) - bot[l + c]);
        x[(i * S + j) * 3 + c] = (t + a * (u - t)) * (1.0f / 255.0f);
      }
    }
  }
}

// One whole view: crop_resize, then jitter, gray, blur, solarize, normalise into out (S, S, 3).
void one_view(const uint8_t* img, int64_t H, int64_t W, int64_t scale, const View& v,
              const Output& o, Scratch& s, float* out) {
  const int64_t S = o.S, pixels = S * S;
  crop_resize(img, H, W, scale, v, S, s);
  float* x = s.buf.data();
  if (v.flags[1]) {
    for (int step = 0; step < 4; ++step) {
      switch (v.order[step]) {
        case 0: brightness(x, 3 * pixels, v.factors[0]); break;
        case 1: contrast(x, pixels, v.factors[1]); break;
        case 2: saturation(x, pixels, v.factors[2]); break;
        default: hue(x, pixels, v.factors[3]); break;
      }
    }
  }
  if (v.flags[2]) grayscale(x, pixels);
  if (v.flags[3] && o.K > 1) blur(x, s.tmp.data(), S, v.taps, o.K);
  for (int64_t p = 0; p < pixels; ++p)
    for (int c = 0; c < 3; ++c) {
      float val = x[3 * p + c];
      if (v.flags[4] && val >= o.solarize_threshold) val = 1.0f - val;
      out[3 * p + c] = (val - o.mean[c]) * o.inv_std[c];
    }
}

Output make_output(int64_t S, int64_t K, float solarize_threshold, const float* mean,
                   const float* std) {
  return Output{S, K, solarize_threshold, mean, {1.0f / std[0], 1.0f / std[1], 1.0f / std[2]}};
}

View view_at(int64_t n, const int32_t* crop, const uint8_t* flags, const float* factors,
             const int32_t* order, const float* taps, int64_t K) {
  return View{crop + 4 * n, flags + 5 * n, factors + 4 * n, order + 4 * n, taps + n * K};
}

// view(n, s) for every n < N on an OpenMP team, s being the thread's own Scratch for S×S views;
// views are handed out `chunk` at a time, dynamically (their costs differ with the box and source).
template <class Fn>
void for_each_view(int64_t N, int64_t S, int chunk, Fn&& view) {
#pragma omp parallel
  {
    Scratch s(S);
#pragma omp for schedule(dynamic, chunk)
    for (int64_t n = 0; n < N; ++n) view(n, s);
  }
}

}  // namespace

void simclr_view_f32(const uint8_t* src, int64_t N, int64_t H, int64_t W, const int32_t* crop,
                     const uint8_t* flags, const float* factors, const int32_t* order,
                     const float* taps, int64_t K, float solarize_threshold, const float* mean,
                     const float* std, int64_t S, float* out) {
  std::string bad = check_out_args(N, K, S);
  for (int64_t n = 0; n < N && bad.empty(); ++n)
    bad = check_view(n, H, W, crop + 4 * n, order + 4 * n);
  if (!bad.empty()) throw std::invalid_argument("simclr_view_f32: " + bad);
  const Output o = make_output(S, K, solarize_threshold, mean, std);
  for_each_view(N, S, 4, [&](int64_t n, Scratch& s) {
    one_view(src + n * H * W * 3, H, W, 1, view_at(n, crop, flags, factors, order, taps, K), o, s,
             out + n * S * S * 3);
  });
}

void simclr_view_ragged_f32(const uint64_t* srcs, const int64_t* shapes, int64_t N,
                            const int32_t* crop, const uint8_t* flags, const float* factors,
                            const int32_t* order, const float* taps, int64_t K,
                            float solarize_threshold, const float* mean, const float* std,
                            int64_t S, float* out) {
  std::string bad = check_out_args(N, K, S);
  for (int64_t n = 0; n < N && bad.empty(); ++n) {
    const int64_t H = shapes[3 * n], W = shapes[3 * n + 1], scale = shapes[3 * n + 2];
    if (scale < 1 || scale > kMaxDecodeScale) {
      bad = "scale[" + std::to_string(n) + "] = " + std::to_string(scale) + " is not in [1, " +
            std::to_string(kMaxDecodeScale) + "]";
    } else if (srcs[n] == 0) {
      bad = "source " + std::to_string(n) + " is a null pointer";
    } else {
      // the box is in original pixels; a 1/scale decode has ceil(original / scale) pixels, so
      // the original is at most scale times the decoded size (the sampling clamps to the image)
      bad = check_view(n, H * scale, W * scale, crop + 4 * n, order + 4 * n);
    }
  }
  if (!bad.empty()) throw std::invalid_argument("simclr_view_ragged_f32: " + bad);
  const Output o = make_output(S, K, solarize_threshold, mean, std);
  for_each_view(N, S, 1, [&](int64_t n, Scratch& s) {
    one_view(reinterpret_cast<const uint8_t*>(srcs[n]), shapes[3 * n], shapes[3 * n + 1],
             shapes[3 * n + 2], view_at(n, crop, flags, factors, order, taps, K), o, s,
             out + n * S * S * 3);
  });
}

}  // namespace fastclr::FASTCLR_ISA_NS
