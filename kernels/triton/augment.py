"""Fused SimCLR augmentation: crop, resize, flip, colour jitter, gray, blur, solarize, normalise.

Pure ``@triton.jit`` code; the launcher is ``fastclr.augment.triton_backend``. The maths is the
definition in ``fastclr.augment.reference`` (module docstring there), evaluated in fp32.

Vocabulary
----------
R         output rows (images × views) of one launch; row ``r`` is one augmented view.
S         output side; every row is (S, S, 3) in memory (NCHW channels_last = NHWC memory).
src       flat uint8 buffer holding every source image, each (H, W, C) contiguous, C ∈ {1, 3, 4}:
          channel c of a pixel reads byte c when C ≥ 3 (alpha ignored) and byte 0 when C = 1
          (gray repeated into R = G = B), as fastclr.augment.inputs.to_rgb.

Pointers, shapes and strides (all tensors contiguous)
-----------------------------------------------------
src_ptr    uint8 (total_bytes,)     the packed sources.
img_ptr    int64 (R, 4)             per row: byte offset of its source in src, H, W, C.
prm_ptr    float32 (R, PRM_COLS)    per row, columns (PRM_* constants below): crop y0, x0, h, w;
                                    flip; jitter_apply; brightness, contrast, saturation, hue
                                    factors; gray; blur_apply; sigma; solarize; the position of
                                    contrast in the order (0..3); order[0..3] (op ids 0..3:
                                    brightness, contrast, saturation, hue). Integers are exact in
                                    fp32 (crop boxes < 2^24 pixels).
part_ptr   float32 (R, n_chunks)    per row and chunk of BLOCK output pixels: the sum of gray(x)
                                    just before the contrast step (written by pass 1; pass 2 sums
                                    a row's chunks in a fixed order and divides by S²).
tmp_ptr    float32 (R, S, S, 3)     scratch in [0, 1] between the colour pass and the blur passes.
out_ptr    out dtype (R, S, S, 3)   the result; the launcher views it as (R, 3, S, S) channels_last.

Pass structure
--------------
Every grid is one-dimensional, R × chunks programs (program p: row p // chunks, chunk p % chunks),
so no axis is limited to 65,535 by the batch size (grid axes y and z are; x holds 2^31 − 1).

1. ``augment_contrast_mean_kernel``, grid (R · n_chunks,): each program takes BLOCK output pixels
   of a row, recomputes crop + resize + flip and the jitter ops that come BEFORE contrast in that
   row's order, and stores the sum of gray(x). This is exact for any order: torchvision takes the
   contrast mean on the image as it is at that step, and every op before it is pixel-wise, so
   recomputing them is cheaper than storing the intermediate image. Rows without jitter skip the
   work. Partial sums reduced in a fixed order keep the mean deterministic (no atomics) while a
   small batch still fills the GPU.
2. ``augment_color_kernel``, grid (R · cdiv(S², BLOCK),): crop + resize + flip, the four jitter ops
   in the row's order (clamp after each, contrast using the mean of pass 1's partial sums),
   grayscale; then either solarize + normalise + cast straight to ``out`` (FUSE_TAIL, when the
   blur kernel side is 1) or a store of the fp32 [0, 1] image to ``tmp``.
3. ``augment_blur_kernel`` twice (when the blur kernel side is > 1): AXIS=0 (rows, vertical taps)
   tmp → tmp2, then AXIS=1 (columns) tmp2 → out with solarize + normalise + cast (FINISH). Taps
   exp(−t²/2σ²), t = −RADIUS … RADIUS, normalised by their sum, reflect padding (edge not
   repeated); rows without blur copy the centre tap. σ is clamped to ≥ ``SIGMA_MIN`` (σ = 0
   would give 0·∞ = NaN at the centre tap; a σ that small leaves only the centre tap, the
   identity, which is the σ → 0 limit).
"""

import triton
import triton.language as tl

# Column layout of the per-row parameter table (prm_ptr).
PRM_Y0 = tl.constexpr(0)
PRM_X0 = tl.constexpr(1)
PRM_H = tl.constexpr(2)
PRM_W = tl.constexpr(3)
PRM_FLIP = tl.constexpr(4)
PRM_JITTER = tl.constexpr(5)
PRM_BRIGHTNESS = tl.constexpr(6)
PRM_CONTRAST = tl.constexpr(7)
PRM_SATURATION = tl.constexpr(8)
PRM_HUE = tl.constexpr(9)
PRM_GRAY = tl.constexpr(10)
PRM_BLUR = tl.constexpr(11)
PRM_SIGMA = tl.constexpr(12)
# Smallest σ the blur uses: exp(−1/(2·SIGMA_MIN²)) underflows to 0, so only the centre tap is left.
SIGMA_MIN = tl.constexpr(1e-3)
PRM_SOLARIZE = tl.constexpr(13)
PRM_CONTRAST_POS = tl.constexpr(14)
PRM_ORDER = tl.constexpr(15)  # four columns: 15..18
PRM_COLS = tl.constexpr(19)

# Jitter op ids (fastclr.augment.params.JitterOp numbering).
OP_BRIGHTNESS = tl.constexpr(0)
OP_CONTRAST = tl.constexpr(1)
OP_SATURATION = tl.constexpr(2)
OP_HUE = tl.constexpr(3)

# ITU-R BT.601 luma weights, as fastclr.augment.reference.GRAY_WEIGHTS.
GRAY_R = tl.constexpr(0.299)
GRAY_G = tl.constexpr(0.587)
GRAY_B = tl.constexpr(0.114)


@triton.jit
def _clamp01(x):
    return tl.minimum(tl.maximum(x, 0.0), 1.0)


@triton.jit
def _gray(r, g, b):
    return GRAY_R * r + GRAY_G * g + GRAY_B * b


@triton.jit
def _sample(src_ptr, img_row, prm_row, pix, mask, S):
    """Crop box → bilinear (align_corners=False, no antialias) → flip, for output pixels ``pix``.

    Output pixel (i, j), after the flip j' = S − 1 − j, samples the crop at
    sy = max((i + ½)·h/S − ½, 0) between rows ⌊sy⌋ and min(⌊sy⌋ + 1, h − 1); x likewise.
    Returns R, G, B in [0, 1] as fp32 blocks.
    """
    off = tl.load(img_row + 0)
    W = tl.load(img_row + 2)
    C = tl.load(img_row + 3)
    cstep = tl.minimum(C - 1, 1)  # 0 for gray sources: all three channels read byte 0
    y0 = tl.load(prm_row + PRM_Y0).to(tl.int32)
    x0 = tl.load(prm_row + PRM_X0).to(tl.int32)
    ch = tl.load(prm_row + PRM_H)
    cw = tl.load(prm_row + PRM_W)
    flip = tl.load(prm_row + PRM_FLIP)

    oy = pix // S
    ox = pix % S
    ox = tl.where(flip != 0.0, S - 1 - ox, ox)
    sy = tl.maximum((oy.to(tl.float32) + 0.5) * (ch / S) - 0.5, 0.0)
    sx = tl.maximum((ox.to(tl.float32) + 0.5) * (cw / S) - 0.5, 0.0)
    iy0 = sy.to(tl.int32)  # floor: sy >= 0
    ix0 = sx.to(tl.int32)
    ly = sy - iy0.to(tl.float32)
    lx = sx - ix0.to(tl.float32)
    iy1 = tl.minimum(iy0 + 1, ch.to(tl.int32) - 1)
    ix1 = tl.minimum(ix0 + 1, cw.to(tl.int32) - 1)

    # Clamping into the source only matters for an invalid crop box (never drawn by
    # sample_params): it keeps every read inside the image instead of faulting.
    H = tl.load(img_row + 1)
    row0 = off + (tl.minimum(tl.maximum(y0 + iy0, 0), H - 1) * W) * C
    row1 = off + (tl.minimum(tl.maximum(y0 + iy1, 0), H - 1) * W) * C
    col0 = tl.minimum(tl.maximum(x0 + ix0, 0), W - 1) * C
    col1 = tl.minimum(tl.maximum(x0 + ix1, 0), W - 1) * C
    w00 = (1.0 - ly) * (1.0 - lx)
    w01 = (1.0 - ly) * lx
    w10 = ly * (1.0 - lx)
    w11 = ly * lx

    r = (
        w00 * tl.load(src_ptr + row0 + col0, mask=mask, other=0).to(tl.float32)
        + w01 * tl.load(src_ptr + row0 + col1, mask=mask, other=0).to(tl.float32)
        + w10 * tl.load(src_ptr + row1 + col0, mask=mask, other=0).to(tl.float32)
        + w11 * tl.load(src_ptr + row1 + col1, mask=mask, other=0).to(tl.float32)
    )
    gofs = cstep
    g = (
        w00 * tl.load(src_ptr + row0 + col0 + gofs, mask=mask, other=0).to(tl.float32)
        + w01 * tl.load(src_ptr + row0 + col1 + gofs, mask=mask, other=0).to(tl.float32)
        + w10 * tl.load(src_ptr + row1 + col0 + gofs, mask=mask, other=0).to(tl.float32)
        + w11 * tl.load(src_ptr + row1 + col1 + gofs, mask=mask, other=0).to(tl.float32)
    )
    bofs = 2 * cstep
    b = (
        w00 * tl.load(src_ptr + row0 + col0 + bofs, mask=mask, other=0).to(tl.float32)
        + w01 * tl.load(src_ptr + row0 + col1 + bofs, mask=mask, other=0).to(tl.float32)
        + w10 * tl.load(src_ptr + row1 + col0 + bofs, mask=mask, other=0).to(tl.float32)
        + w11 * tl.load(src_ptr + row1 + col1 + bofs, mask=mask, other=0).to(tl.float32)
    )
    inv = 1.0 / 255.0
    return r * inv, g * inv, b * inv


@triton.jit
def _blend(r, g, b, f, other_r, other_g, other_b):
    """clamp(f·x + (1 − f)·other): torchvision's ``_blend``."""
    r2 = _clamp01(f * r + (1.0 - f) * other_r)
    g2 = _clamp01(f * g + (1.0 - f) * other_g)
    b2 = _clamp01(f * b + (1.0 - f) * other_b)
    return r2, g2, b2


@triton.jit
def _hue_shift(r, g, b, shift):
    """RGB → HSV (hue in turns, 0 on gray pixels; ties R before G before B), h ← (h + shift) mod 1,
    HSV → RGB by the sector formula, clamp. Same formulas as reference.rgb_to_hsv / hsv_to_rgb."""
    maxc = tl.maximum(tl.maximum(r, g), b)
    minc = tl.minimum(tl.minimum(r, g), b)
    chroma = maxc - minc
    flat = chroma == 0.0
    sat = chroma / tl.where(maxc == 0.0, 1.0, maxc)
    c = tl.where(flat, 1.0, chroma)
    rc = (maxc - r) / c
    gc = (maxc - g) / c
    bc = (maxc - b) / c
    is_r = maxc == r
    is_g = (maxc == g) & (maxc != r)
    h6 = tl.where(is_r, bc - gc, tl.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = h6 / 6.0
    h = h - tl.floor(h)
    h = tl.where(flat, 0.0, h)
    h = h + shift
    h = h - tl.floor(h)

    v = maxc
    hh = h * 6.0
    i = tl.floor(hh)
    f = hh - i
    sector = i - 6.0 * tl.floor(i / 6.0)
    p = v * (1.0 - sat)
    q = v * (1.0 - sat * f)
    t = v * (1.0 - sat * (1.0 - f))
    # Per sector 0..5: (R, G, B) = (v,t,p) (q,v,p) (p,v,t) (p,q,v) (t,p,v) (v,p,q).
    r2 = tl.where(
        sector < 1.0,
        v,
        tl.where(
            sector < 2.0,
            q,
            tl.where(sector < 3.0, p, tl.where(sector < 4.0, p, tl.where(sector < 5.0, t, v))),
        ),
    )
    g2 = tl.where(
        sector < 1.0,
        t,
        tl.where(
            sector < 2.0,
            v,
            tl.where(sector < 3.0, v, tl.where(sector < 4.0, q, tl.where(sector < 5.0, p, p))),
        ),
    )
    b2 = tl.where(
        sector < 1.0,
        p,
        tl.where(
            sector < 2.0,
            p,
            tl.where(sector < 3.0, t, tl.where(sector < 4.0, v, tl.where(sector < 5.0, v, q))),
        ),
    )
    return _clamp01(r2), _clamp01(g2), _clamp01(b2)


@triton.jit
def _jitter(r, g, b, prm_row, contrast_mean, BEFORE_CONTRAST: tl.constexpr):
    """The four ColorJitter ops in the row's drawn order, clamp after each.

    BEFORE_CONTRAST: apply only the ops that precede contrast (pass 1); otherwise all four, with
    contrast blending towards ``contrast_mean``.
    """
    limit = 4
    if BEFORE_CONTRAST:
        limit = tl.load(prm_row + PRM_CONTRAST_POS).to(tl.int32)
    for k in tl.static_range(4):
        op = tl.load(prm_row + PRM_ORDER + k).to(tl.int32)
        if k < limit:
            if op == OP_BRIGHTNESS:
                f = tl.load(prm_row + PRM_BRIGHTNESS)
                r = _clamp01(r * f)
                g = _clamp01(g * f)
                b = _clamp01(b * f)
            elif op == OP_CONTRAST:
                f = tl.load(prm_row + PRM_CONTRAST)
                r, g, b = _blend(r, g, b, f, contrast_mean, contrast_mean, contrast_mean)
            elif op == OP_SATURATION:
                f = tl.load(prm_row + PRM_SATURATION)
                y = _gray(r, g, b)
                r, g, b = _blend(r, g, b, f, y, y, y)
            else:
                r, g, b = _hue_shift(r, g, b, tl.load(prm_row + PRM_HUE))
    return r, g, b


@triton.jit
def _finish(r, g, b, prm_row, solarize_threshold, m0, m1, m2, s0, s1, s2):
    """Solarize (x ← 1 − x where x ≥ threshold, per row) and normalise (x − mean) / std."""
    # A row that does not solarize gets a threshold above every pixel value (x ≤ 1).
    thr = tl.where(tl.load(prm_row + PRM_SOLARIZE) != 0.0, solarize_threshold, 2.0)
    r = tl.where(r >= thr, 1.0 - r, r)
    g = tl.where(g >= thr, 1.0 - g, g)
    b = tl.where(b >= thr, 1.0 - b, b)
    return (r - m0) / s0, (g - m1) / s1, (b - m2) / s2


@triton.jit
def _row_pixels(S, BLOCK: tl.constexpr):
    """This program's image row, its BLOCK pixels (int32, row-major in S × S) and their mask, for
    the per-pixel kernels' grid: cdiv(S·S, BLOCK) programs per image row."""
    npix = S * S
    pid = tl.program_id(0).to(tl.int64)
    per_row = tl.cdiv(npix, BLOCK)
    pix = (pid % per_row).to(tl.int32) * BLOCK + tl.arange(0, BLOCK)
    return pid // per_row, pix, pix < npix


@triton.jit
def _store_rgb(dst_ptr, row, pix, mask, S, r, g, b):
    """Pixels ``pix`` of image ``row`` of the (R, S, S, 3) ``dst_ptr``, cast to its dtype."""
    base = dst_ptr + row * (S * S) * 3 + pix.to(tl.int64) * 3
    out_ty = dst_ptr.dtype.element_ty
    tl.store(base + 0, r.to(out_ty), mask=mask)
    tl.store(base + 1, g.to(out_ty), mask=mask)
    tl.store(base + 2, b.to(out_ty), mask=mask)


@triton.jit
def augment_contrast_mean_kernel(
    src_ptr,
    img_ptr,
    prm_ptr,
    part_ptr,
    S,
    n_chunks,
    BLOCK: tl.constexpr,
):
    """Pass 1: per (chunk, row), the sum of gray(x) just before the contrast step."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = (pid % n_chunks).to(tl.int32)
    img_row = img_ptr + row * 4
    prm_row = prm_ptr + row * PRM_COLS
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    if tl.load(prm_row + PRM_JITTER) != 0.0:
        pix = chunk * BLOCK + tl.arange(0, BLOCK)
        mask = pix < S * S
        r, g, b = _sample(src_ptr, img_row, prm_row, pix, mask, S)
        r, g, b = _jitter(r, g, b, prm_row, 0.0, True)
        total = tl.where(mask, _gray(r, g, b), 0.0)
    tl.store(part_ptr + row * n_chunks + chunk, tl.sum(total, axis=0))


@triton.jit
def augment_color_kernel(
    src_ptr,
    img_ptr,
    prm_ptr,
    part_ptr,
    dst_ptr,
    S,
    n_chunks,
    solarize_threshold,
    m0,
    m1,
    m2,
    s0,
    s1,
    s2,
    FUSE_TAIL: tl.constexpr,
    CHUNKS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pass 2: everything up to grayscale; with FUSE_TAIL also solarize, normalise and cast.

    dst_ptr is ``out`` (FUSE_TAIL) or ``tmp`` (fp32, for the blur passes); both (R, S, S, 3).
    CHUNKS: a power of two ≥ n_chunks, the width of the partial-sum load.
    """
    row, pix, mask = _row_pixels(S, BLOCK)
    img_row = img_ptr + row * 4
    prm_row = prm_ptr + row * PRM_COLS

    r, g, b = _sample(src_ptr, img_row, prm_row, pix, mask, S)
    if tl.load(prm_row + PRM_JITTER) != 0.0:
        c = tl.arange(0, CHUNKS)
        part = tl.load(part_ptr + row * n_chunks + c, mask=c < n_chunks, other=0.0)
        mean = tl.sum(part, axis=0) / (S * S)
        r, g, b = _jitter(r, g, b, prm_row, mean, False)
    if tl.load(prm_row + PRM_GRAY) != 0.0:
        y = _gray(r, g, b)
        r = y
        g = y
        b = y
    if FUSE_TAIL:
        r, g, b = _finish(r, g, b, prm_row, solarize_threshold, m0, m1, m2, s0, s1, s2)
    _store_rgb(dst_ptr, row, pix, mask, S, r, g, b)


@triton.jit
def augment_blur_kernel(
    src_ptr,
    prm_ptr,
    dst_ptr,
    S,
    solarize_threshold,
    m0,
    m1,
    m2,
    s0,
    s1,
    s2,
    RADIUS: tl.constexpr,
    AXIS: tl.constexpr,
    FINISH: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pass 3: one separable Gaussian pass along AXIS (0: vertical, 1: horizontal).

    src_ptr fp32 (R, S, S, 3); dst_ptr fp32 (R, S, S, 3), or ``out`` when FINISH (then solarize,
    normalise and cast follow). Reflect padding: index −t ↦ t, S − 1 + t ↦ S − 1 − t (needs
    RADIUS < S, true for a kernel side of 10% of S).
    """
    row, pix, mask = _row_pixels(S, BLOCK)
    prm_row = prm_ptr + row * PRM_COLS
    oy = pix // S
    ox = pix % S
    if AXIS == 0:
        pos = oy
    else:
        pos = ox
    src_row = src_ptr + row * (S * S) * 3

    if tl.load(prm_row + PRM_BLUR) != 0.0:
        sigma = tl.maximum(tl.abs(tl.load(prm_row + PRM_SIGMA)), SIGMA_MIN)
        neg_half_inv_var = -0.5 / (sigma * sigma)
        acc_r = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_g = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_b = tl.zeros((BLOCK,), dtype=tl.float32)
        wsum = 0.0
        for t in tl.static_range(-RADIUS, RADIUS + 1):
            w = tl.exp(neg_half_inv_var * (t * t))
            q = pos + t
            q = tl.where(q < 0, -q, q)
            q = tl.where(q > S - 1, 2 * (S - 1) - q, q)
            if AXIS == 0:
                idx = (q * S + ox).to(tl.int64) * 3
            else:
                idx = (oy * S + q).to(tl.int64) * 3
            acc_r += w * tl.load(src_row + idx + 0, mask=mask, other=0.0)
            acc_g += w * tl.load(src_row + idx + 1, mask=mask, other=0.0)
            acc_b += w * tl.load(src_row + idx + 2, mask=mask, other=0.0)
            wsum += w
        r = acc_r / wsum
        g = acc_g / wsum
        b = acc_b / wsum
    else:
        idx = pix.to(tl.int64) * 3
        r = tl.load(src_row + idx + 0, mask=mask, other=0.0)
        g = tl.load(src_row + idx + 1, mask=mask, other=0.0)
        b = tl.load(src_row + idx + 2, mask=mask, other=0.0)
    if FINISH:
        r, g, b = _finish(r, g, b, prm_row, solarize_threshold, m0, m1, m2, s0, s1, s2)
    _store_rgb(dst_ptr, row, pix, mask, S, r, g, b)
