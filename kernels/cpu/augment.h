// Fused SimCLR views on the CPU (fastclr.augment backend "native"): from decoded uint8 images to
// the normalised views in one pass per view, crop and resize included.
//
// Per view, with the parameters drawn by fastclr.augment.params.sample_params, in the order of
// fastclr/augment/reference.py (the definition):
//   crop (y0, x0, h, w) + bilinear resize to S×S (align_corners=False, no antialias, sampling
//   clamped to the box's edge pixels) + flip;
//   if jitter: brightness, contrast, saturation, hue in the per-image order, clamp to [0, 1]
//   after each (torchvision ColorJitter semantics; contrast blends with the mean luma of the
//   image as it is at that step); grayscale; Gaussian blur (K taps given, reflect padding, rows
//   then columns); solarize; normalise by mean/std.
// The crop box is always in ORIGINAL pixels (drawn on the original image, DESIGN: random resized
// crop). simclr_view_ragged_f32 also reads sources decoded at 1/scale of the original (libjpeg DCT
// scaling, scale <= kMaxDecodeScale): the box's sample positions are mapped to the reduced grid,
// x -> (x + 0.5)/scale - 0.5, clamped to it (fastclr/data/decode.py states the same rule).
// Each view is worked on in a private S×S×3 float buffer (L1/L2-resident for SimCLR sizes);
// images are independent, so OpenMP runs them in parallel with no shared writes.
// Bounds: before reading a pixel the kernel checks every value it indexes with (sizes, each crop
// box inside the H×W source, each order a permutation of 0..3, K odd with K/2 < S) and throws
// std::invalid_argument naming the first bad image and field, so no parameter makes it read
// outside src. It cannot check the buffers' lengths: the caller passes buffers of the shapes below.
#pragma once
#include <cstdint>

namespace fastclr {

// Largest decode scale a ragged source may have (libjpeg's smallest DCT scaling is 1/8).
constexpr int64_t kMaxDecodeScale = 8;

// src:     (N, H, W, 3) uint8, contiguous.
// crop:    (N, 4) int32 rows (y0, x0, h, w), inside the source (checked).
// flags:   (N, 5) uint8 rows (flip, jitter_apply, gray, blur_apply, solarize).
// factors: (N, 4) fp32 rows (brightness, contrast, saturation, hue in turns).
// order:   (N, 4) int32 rows, a permutation of 0..3 (0 brightness, 1 contrast, 2 saturation, 3 hue;
//          checked).
// taps:    (N, K) fp32 normalised blur taps (rows of images without blur are not read); K odd.
// mean, std: 3 fp32 each.  out: (N, S, S, 3) fp32, contiguous (NCHW channels_last memory).
void simclr_view_f32(const uint8_t* src, int64_t N, int64_t H, int64_t W, const int32_t* crop,
                     const uint8_t* flags, const float* factors, const int32_t* order,
                     const float* taps, int64_t K, float solarize_threshold, const float* mean,
                     const float* std, int64_t S, float* out);

// Views of a ragged set of sources (one pointer each; V views of one image repeat its pointer).
// srcs:    (N,) addresses of (H_n, W_n, 3) uint8 images, each contiguous.
// shapes:  (N, 3) int64 rows (H_n, W_n, scale_n): the decoded size and the decode scale (1: full
//          size); the box must fit the original, scale_n x (H_n, W_n) (checked), and every
//          sample position is clamped to the decoded image.
// Other arguments as simclr_view_f32, one row per view; out: (N, S, S, 3) fp32.
void simclr_view_ragged_f32(const uint64_t* srcs, const int64_t* shapes, int64_t N,
                            const int32_t* crop, const uint8_t* flags, const float* factors,
                            const int32_t* order, const float* taps, int64_t K,
                            float solarize_threshold, const float* mean, const float* std,
                            int64_t S, float* out);

}  // namespace fastclr
