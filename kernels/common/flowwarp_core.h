// FlowWarp's sampling rule (DESIGN.md "FlowWarp op"), shared by the CPU op, the CUDA kernel and the
// TensorRT plugin so that all three implement one definition:
//
//   Y = grid_sample(X, G, bilinear, zeros padding, align_corners)
//   G[n,y,x] = (bx + FLOW[n,0,y,x] / W,  by + FLOW[n,1,y,x] / H)
//
// Arithmetic follows PyTorch's grid sampler step by step (same formulas, same order) so that results agree
// to float rounding, including non-finite flow: a NaN or infinite coordinate gives NaN, as torch does.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define EDGESEG_HD __host__ __device__ __forceinline__
#else
#define EDGESEG_HD inline
#endif

namespace edgeseg {

// Base grid coordinate of output column/row i of n: linspace(-1, 1, n) (-1 when n == 1) with
// align_corners, pixel centres (2i+1)/n - 1 without. Same float expressions as layers._base_coords.
EDGESEG_HD float base_coord(int i, int n, bool align_corners) {
  if (align_corners) return (float)i * (2.0f / (float)(n > 1 ? n - 1 : 1)) - 1.0f;
  return (2.0f * (float)i + 1.0f) / (float)n - 1.0f;
}

// Normalised grid coordinate -> source pixel coordinate (torch's grid_sampler_unnormalize).
EDGESEG_HD float source_coord(float g, int size, bool align_corners) {
  if (align_corners) return ((g + 1.0f) / 2.0f) * (float)(size - 1);
  return ((g + 1.0f) * (float)size - 1.0f) / 2.0f;
}

// The four bilinear taps (nw, ne, sw, se) of source point (ix, iy) in an h x w plane.
// A tap outside the plane gets index 0 and weight w*0: zero for a finite coordinate (zeros padding), NaN
// for a non-finite one, so the caller's sum needs no branch and never reads out of bounds.
// Bounds are tested in float before any conversion: huge or non-finite coordinates never reach an int cast.
struct Taps {
  int32_t idx[4];
  float w[4];
};

EDGESEG_HD void bilinear_taps(float ix, float iy, int w, int h, Taps& t) {
  const float x0 = floorf(ix), y0 = floorf(iy);
  const float x1 = x0 + 1.0f, y1 = y0 + 1.0f;
  const float wx0 = x1 - ix, wx1 = ix - x0, wy0 = y1 - iy, wy1 = iy - y0;
  const float wmax = (float)(w - 1), hmax = (float)(h - 1);
  const bool vx0 = x0 >= 0.0f && x0 <= wmax, vx1 = x1 >= 0.0f && x1 <= wmax;
  const bool vy0 = y0 >= 0.0f && y0 <= hmax, vy1 = y1 >= 0.0f && y1 <= hmax;
  // Integer parts only where valid: converting a huge or non-finite float to int is undefined.
  const int32_t ix0 = vx0 ? (int32_t)x0 : 0, ix1 = vx1 ? (int32_t)x1 : 0;
  const int32_t iy0 = vy0 ? (int32_t)y0 : 0, iy1 = vy1 ? (int32_t)y1 : 0;
  const float nw = wx0 * wy0, ne = wx1 * wy0, sw = wx0 * wy1, se = wx1 * wy1;
  const bool v_nw = vx0 && vy0, v_ne = vx1 && vy0, v_sw = vx0 && vy1, v_se = vx1 && vy1;
  t.idx[0] = v_nw ? iy0 * w + ix0 : 0;  t.w[0] = v_nw ? nw : nw * 0.0f;
  t.idx[1] = v_ne ? iy0 * w + ix1 : 0;  t.w[1] = v_ne ? ne : ne * 0.0f;
  t.idx[2] = v_sw ? iy1 * w + ix0 : 0;  t.w[2] = v_sw ? sw : sw * 0.0f;
  t.idx[3] = v_se ? iy1 * w + ix1 : 0;  t.w[3] = v_se ? se : se * 0.0f;
}

// Taps of output pixel (x, y) of an H x W output, given its flow (fx, fy), sampling an h x w plane.
EDGESEG_HD void flowwarp_taps(int x, int y, int W, int H, float fx, float fy, int w, int h, bool align_corners, Taps& t) {
  const float gx = base_coord(x, W, align_corners) + fx / (float)W;
  const float gy = base_coord(y, H, align_corners) + fy / (float)H;
  bilinear_taps(source_coord(gx, w, align_corners), source_coord(gy, h, align_corners), w, h, t);
}

}  // namespace edgeseg
