// Fused DO-Conv kernel composition on CPU: W'[o, c, s] = sum_d D[c, s, d] W[o, c, d].
//
// The composition is C_out x C_in/groups tiny matrix-vector products with an
// inner dimension of M*N (paper Eq. 3).  Batched GEMMs run them at a few
// GFLOP/s and need transposed copies of W and its gradient; here each output
// channel's row of W is read and its row of W' written once, in their native
// layouts, with vector instructions over the whole row.
//
// Layouts (all contiguous), S = M*N, Dm = D_mul, Cg = C_in/groups:
//   weight  (C_out, Cg, Dm)   W
//   d_full  (C_in, S, Dm)     D = D' + I
//   output  (C_out, Cg, S)    W', the plain conv kernel
// Output channel o belongs to group o / (C_out/groups) and reads the rows
// g*Cg ... g*Cg + Cg - 1 of D.
//
// Row form (S == Dm, the default D_mul): with j = c*S + s and i = c*S + d,
// a row of W' is a sum of 2S-1 shifted copies of the row of W, each scaled
// element-wise by a table built from D once per call:
//   W'[o, j] = sum_k W[o, j + k] * E_k[j],   E_k[c*S + s] = D[c, s, s + k]
// (zero where s + k leaves [0, S)).  The gradients have the same form:
//   gW[o, i] = sum_k G[o, i + k] * F_k[i],   F_k[c*S + d] = D[c, d + k, d]
//   gD[c, s, s + k] = sum_o G[o, c*S + s] * W[o, c*S + s + k]
// so every inner loop is a contiguous multiply-add over a row.
//
// Position form (float32 on CPUs with AVX-512, M*N <= 9): the row form
// spends 2S-1 products per element where S are needed (the other tables are
// zero there).  Each element's S sources lie in its own channel, and for 16
// consecutive elements in 32 consecutive floats of the row: two vector loads
// and one two-source permute per product gather them, so every element costs
// S multiply-adds (about twice as fast as the row form at 64-512 channels,
// equal to it for finite W: the row form's extra products add exact zeros).
//
// D_mul > M*N, and groups of one input channel (depthwise), use per-channel
// loops (channel_forward, direct_forward).
//
// With `identity`, the `d_full` argument is D - I (the layer's parameter) and
// the kernels add the tiled identity I[s, d] = (d mod S == s, d < S * (Dm / S))
// themselves: into the tables of the row and position forms, and as W[o, c, s
// + t*S] terms in the per-channel loops.  D + I of a 7x7 depthwise layer is
// 49 times W's size; never materialising it saves a pass over that memory and
// a fresh allocation (page faults on CPU) per composition.
#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

// The hot loops are compiled three times (AVX-512, AVX2+FMA, baseline x86-64)
// and the widest the CPU supports is picked at run time, so a build cached on
// one x86 machine runs well on another.  (GCC's target_clones("arch=...")
// dispatches on the exact CPU model and falls back to the baseline on CPUs
// it does not name, such as virtual machines' "Intel Xeon Processor".)  The
// templates are forced inline so each variant compiles them for its target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DOCONV_X86 1
#define DOCONV_INLINE inline __attribute__((always_inline))
#define DOCONV_AVX2 __attribute__((target("avx2,fma")))
#define DOCONV_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#include <immintrin.h>
#else
#define DOCONV_X86 0
#define DOCONV_INLINE inline
#endif

struct Shape {
  int64_t out_channels, in_per_group, out_per_group, groups, positions, d_mul;
  int64_t row() const { return in_per_group * positions; }  // one row of W' (= of W when S == Dm)
};

Shape shape_of(const at::Tensor& weight, const at::Tensor& d_full, int64_t groups) {
  TORCH_CHECK(weight.dim() == 3 && d_full.dim() == 3,
              "weight must be (C_out, C_in/groups, D_mul) and D (C_in, M*N, D_mul)");
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0,
              "C_out=", weight.size(0), " is not divisible by groups=", groups);
  TORCH_CHECK(d_full.size(0) == weight.size(1) * groups && d_full.size(2) == weight.size(2),
              "D ", d_full.sizes(), " does not match W ", weight.sizes(), " with groups=", groups);
  TORCH_CHECK(weight.scalar_type() == d_full.scalar_type(), "W and D dtypes differ");
  TORCH_CHECK(weight.device().is_cpu() && d_full.device().is_cpu(), "CPU tensors expected");
  return {weight.size(0), weight.size(1), weight.size(0) / groups, groups, d_full.size(1),
          weight.size(2)};
}

// kBytes-wide vectors through GCC's vector extension: one register of the
// variant's instruction set (16 bytes SSE2, 32 AVX2, 64 AVX-512).
template <typename T, int kBytes>
struct Vec {
  typedef T type __attribute__((vector_size(kBytes)));
  static constexpr int64_t lanes = kBytes / sizeof(T);
};

template <typename V, typename T>
DOCONV_INLINE V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename V, typename T>
DOCONV_INLINE void store(T* p, V v) {
  std::memcpy(p, &v, sizeof(v));
}

// y[r, j] = sum_t x[r, j + t - R] * table[t, j] for the rows of one group,
// R = S - 1, t < 2S - 1.  Rows are taken kRows at a time so each table
// vector is loaded once for several rows.
template <typename T, int kBytes, int kRows>
DOCONV_INLINE void shift_rows(const T* const* x, const T* table, T* const* y, int64_t row,
                              int64_t positions) {
  using V = typename Vec<T, kBytes>::type;
  constexpr int64_t lanes = Vec<T, kBytes>::lanes;
  const int64_t reach = positions - 1, shifts = 2 * positions - 1;
  // Vector tiles never read outside the row; the ends are done one by one.
  const int64_t first = std::min(reach, row);
  int64_t j = 0;
  auto scalar = [&](int64_t jj) {
    for (int r = 0; r < kRows; ++r) {
      T sum = 0;
      for (int64_t t = 0; t < shifts; ++t) {
        const int64_t src = jj + t - reach;
        if (src >= 0 && src < row) sum += x[r][src] * table[t * row + jj];
      }
      y[r][jj] = sum;
    }
  };
  for (; j < first; ++j) scalar(j);
  for (; j + lanes + reach <= row; j += lanes) {
    V acc[kRows];
    for (int r = 0; r < kRows; ++r) acc[r] = V{};
    for (int64_t t = 0; t < shifts; ++t) {
      const V e = load<V>(table + t * row + j);
      for (int r = 0; r < kRows; ++r) acc[r] += load<V>(x[r] + j + t - reach) * e;
    }
    for (int r = 0; r < kRows; ++r) store<V>(y[r] + j, acc[r]);
  }
  for (; j < row; ++j) scalar(j);
}

// Rows [begin, end) of y = shift-apply(x, tables of each row's group); row
// o of the result goes to row o - y_first of y.
template <typename T, int kBytes>
DOCONV_INLINE void shift_apply(const Shape& sh, const T* x, const T* tables, T* y,
                               int64_t begin, int64_t end, int64_t y_first = 0) {
  constexpr int kRows = 4;
  const int64_t row = sh.row(), shifts = 2 * sh.positions - 1;
  int64_t o = begin;
  while (o < end) {
    const int64_t group = o / sh.out_per_group;
    const int64_t group_end = std::min(end, (group + 1) * sh.out_per_group);
    const T* table = tables + group * shifts * row;
    for (; o + kRows <= group_end; o += kRows) {
      const T* xs[kRows];
      T* ys[kRows];
      for (int r = 0; r < kRows; ++r) {
        xs[r] = x + (o + r) * row;
        ys[r] = y + (o + r - y_first) * row;
      }
      shift_rows<T, kBytes, kRows>(xs, table, ys, row, sh.positions);
    }
    for (; o < group_end; ++o) {
      const T* xs[1] = {x + o * row};
      T* ys[1] = {y + (o - y_first) * row};
      shift_rows<T, kBytes, 1>(xs, table, ys, row, sh.positions);
    }
  }
}

// Elements ahead that grad D's row walk prefetches: 8 cache lines of floats.
// (Inline timing, C=512, 3x3, 2-core AMD EPYC: grad D about 25 % faster than
// without, 64 ahead less, 256 no better; no change at 128 and 256 channels,
// whose blocks stay in cache.)
constexpr int64_t kPrefetchAhead = 128;

// sums[k] += sum_o g[o, j:j+lanes] * w[o, j+t0+k-R : ...] for k < kShifts,
// with the kShifts accumulators in registers while the rows stream by.
template <typename T, int kBytes, int kShifts>
DOCONV_INLINE void correlate_tile(const T* g, const T* w, T* table, int64_t row, int64_t reach,
                                  int64_t j, int64_t t0, int64_t o0, int64_t o1) {
  using V = typename Vec<T, kBytes>::type;
  V sums[kShifts];
  for (int k = 0; k < kShifts; ++k) sums[k] = load<V>(table + (t0 + k) * row + j);
  for (int64_t o = o0; o < o1; ++o) {
    const V gv = load<V>(g + o * row + j);
    const T* wo = w + o * row + j + t0 - reach;
    if (t0 == 0) {
      // Two streams per row (G and W), a vector at a time, across a block of
      // rows: more streams than the hardware prefetcher follows once the
      // block no longer fits in cache.  Ask for the lines a few vectors
      // ahead (prefetches never fault past the end).
      __builtin_prefetch(g + o * row + j + kPrefetchAhead);
      __builtin_prefetch(wo + kPrefetchAhead);
    }
    for (int k = 0; k < kShifts; ++k) sums[k] += gv * load<V>(wo + k);
  }
  for (int k = 0; k < kShifts; ++k) store<V>(table + (t0 + k) * row + j, sums[k]);
}

// acc[group, t, j] += sum_o g[o, j] * w[o, j + t - R] over rows [begin, end).
template <typename T, int kBytes>
DOCONV_INLINE void shift_correlate(const Shape& sh, const T* g, const T* w, T* acc,
                                   int64_t begin, int64_t end) {
  constexpr int64_t lanes = Vec<T, kBytes>::lanes;
  const int64_t row = sh.row(), reach = sh.positions - 1, shifts = 2 * sh.positions - 1;
  for (int64_t o0 = begin; o0 < end;) {
    const int64_t group = o0 / sh.out_per_group;
    const int64_t o1 = std::min(end, (group + 1) * sh.out_per_group);
    T* table = acc + group * shifts * row;
    auto scalar = [&](int64_t j) {
      for (int64_t t = 0; t < shifts; ++t) {
        const int64_t src = j + t - reach;
        if (src < 0 || src >= row) continue;
        T sum = 0;
        for (int64_t o = o0; o < o1; ++o) sum += g[o * row + j] * w[o * row + src];
        table[t * row + j] += sum;
      }
    };
    const int64_t first = std::min(reach, row);
    int64_t j = 0;
    for (; j < first; ++j) scalar(j);
    for (; j + lanes + reach <= row; j += lanes) {
      // 2S-1 shifts in register-sized chunks: 17 = 9 + 8 for 3x3 kernels.
      int64_t t0 = 0;
      for (; shifts - t0 >= 9; t0 += 9) correlate_tile<T, kBytes, 9>(g, w, table, row, reach, j, t0, o0, o1);
      for (; shifts - t0 >= 8; t0 += 8) correlate_tile<T, kBytes, 8>(g, w, table, row, reach, j, t0, o0, o1);
      for (; shifts - t0 >= 4; t0 += 4) correlate_tile<T, kBytes, 4>(g, w, table, row, reach, j, t0, o0, o1);
      for (; t0 < shifts; ++t0) correlate_tile<T, kBytes, 1>(g, w, table, row, reach, j, t0, o0, o1);
    }
    for (; j < row; ++j) scalar(j);
    o0 = o1;
  }
}

// Rows of G and W per backward block.  grad D walks the block's rows a
// vector at a time (two streams per row), so fewer rows keep the walk within
// what the hardware prefetcher follows.  Inline timing, in-place backward,
// 3x3, 2-core AMD EPYC: 512 channels 1.4 ms with 8 rows against 1.6-2.0 ms
// with 32 (position form; row form 2.6-2.9 against 3.2-4.0 ms), 4 rows no
// better; no change at 64-256 channels.
constexpr int64_t kBackwardBlock = 8;

// Both gradients for rows [begin, end), a block of rows at a time so the
// block's rows of G, read for grad D, are still in cache for grad W.  With
// grad_weight == g (in place), each block of grad W is computed into
// `scratch` (kBackwardBlock rows) and copied over the block of G, which grad
// D has read by then.
template <typename T, int kBytes>
DOCONV_INLINE void shift_backward(const Shape& sh, const T* g, const T* w, const T* tables,
                                  T* grad_weight, T* acc, T* scratch, int64_t begin,
                                  int64_t end) {
  const int64_t row = sh.row();
  const bool in_place = grad_weight == g;
  for (int64_t o0 = begin; o0 < end; o0 += kBackwardBlock) {
    const int64_t o1 = std::min(end, o0 + kBackwardBlock);
    if (acc != nullptr) shift_correlate<T, kBytes>(sh, g, w, acc, o0, o1);
    if (grad_weight == nullptr) continue;
    if (in_place) {
      shift_apply<T, kBytes>(sh, g, tables, scratch, o0, o1, o0);
      std::memcpy(grad_weight + o0 * row, scratch, sizeof(T) * (o1 - o0) * row);
    } else {
      shift_apply<T, kBytes>(sh, g, tables, grad_weight, o0, o1);
    }
  }
}

struct PositionKernels {
  void (*forward)(const Shape&, const float*, const float*, float*, int64_t, int64_t);
  void (*backward)(const Shape&, const float*, const float*, const float*, float*, float*,
                   float*, int64_t, int64_t);
};

#if DOCONV_X86
// Position form (float32 on AVX-512, S == D_mul <= 9).  The row form above
// computes 2S-1 products per element of which S - 1 have a zero table
// entry.  Writing e = c*S + p (p = e mod S), each element needs exactly S:
//   y[o, e] = sum_k x[o, e - p + k] * T_k[e]
// forward x = W, T_k[c*S + s] = D[c, s, k]; grad W x = G, T_k[c*S + d] =
// D[c, k, d]; and grad D[c, s, k] = H_k[c*S + s] with
//   H_k[e] = sum_o G[o, e] * W[o, e - p + k].
// For the 16 elements e = j ... j+15 every source lies in
// [j - (S-1), j + 15 + (S-1)], at most 32 floats: two vector loads, then one
// two-source permute (vpermt2ps) per k puts each lane's source in place.
// The permute pattern depends only on j mod S.
#define DOCONV_AVX512_INLINE DOCONV_INLINE DOCONV_AVX512

constexpr int kMaxPositions = 9;
constexpr int64_t kLanes512 = 16;

struct PermuteIndex {
  // [j mod S][k][lane]: where lane's source sits in the 32 floats from j - (S-1).
  alignas(64) int32_t lanes[kMaxPositions][kMaxPositions][kLanes512];
};

PermuteIndex permute_index(int64_t S) {
  PermuteIndex index{};
  for (int64_t phase = 0; phase < S; ++phase) {
    for (int64_t k = 0; k < S; ++k) {
      for (int64_t l = 0; l < kLanes512; ++l) {
        index.lanes[phase][k][l] = static_cast<int32_t>(l - (phase + l) % S + k + S - 1);
      }
    }
  }
  return index;
}

// y[r, e] = sum_k x[r, e - p + k] * table[k, e] for the rows of one group.
template <int S, int kRows>
DOCONV_AVX512_INLINE void position_rows(const float* const* x, const float* table,
                                        const PermuteIndex& index, float* const* y,
                                        int64_t row) {
  constexpr int64_t reach = S - 1;
  auto scalar = [&](int64_t e) {
    const int64_t base = e - e % S;
    for (int r = 0; r < kRows; ++r) {
      float sum = 0;
      for (int k = 0; k < S; ++k) sum += x[r][base + k] * table[k * row + e];
      y[r][e] = sum;
    }
  };
  int64_t j = std::min(reach, row);
  for (int64_t e = 0; e < j; ++e) scalar(e);
  int64_t phase = j % S;
  for (; j - reach + 2 * kLanes512 <= row; j += kLanes512) {
    const int32_t* lanes = &index.lanes[phase][0][0];
    __m512 lo[kRows], hi[kRows], acc[kRows];
    for (int r = 0; r < kRows; ++r) {
      lo[r] = _mm512_loadu_ps(x[r] + j - reach);
      hi[r] = _mm512_loadu_ps(x[r] + j - reach + kLanes512);
      acc[r] = _mm512_setzero_ps();
    }
    for (int k = 0; k < S; ++k) {
      const __m512i idx = _mm512_load_si512(lanes + k * kLanes512);
      const __m512 t = _mm512_loadu_ps(table + k * row + j);
      for (int r = 0; r < kRows; ++r) {
        acc[r] = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo[r], idx, hi[r]), t, acc[r]);
      }
    }
    for (int r = 0; r < kRows; ++r) _mm512_storeu_ps(y[r] + j, acc[r]);
    phase = (phase + kLanes512) % S;
  }
  for (int64_t e = j; e < row; ++e) scalar(e);
}

template <int S>
DOCONV_AVX512_INLINE void position_apply(const Shape& sh, const float* x, const float* tables,
                                         float* y, int64_t begin, int64_t end,
                                         int64_t y_first) {
  static const PermuteIndex index = permute_index(S);
  constexpr int kRows = 4;
  const int64_t row = sh.row();
  int64_t o = begin;
  while (o < end) {
    const int64_t group = o / sh.out_per_group;
    const int64_t group_end = std::min(end, (group + 1) * sh.out_per_group);
    const float* table = tables + group * S * row;
    for (; o + kRows <= group_end; o += kRows) {
      const float* xs[kRows];
      float* ys[kRows];
      for (int r = 0; r < kRows; ++r) {
        xs[r] = x + (o + r) * row;
        ys[r] = y + (o + r - y_first) * row;
      }
      position_rows<S, kRows>(xs, table, index, ys, row);
    }
    for (; o < group_end; ++o) {
      const float* xs[1] = {x + o * row};
      float* ys[1] = {y + (o - y_first) * row};
      position_rows<S, 1>(xs, table, index, ys, row);
    }
  }
}

// acc[group, k, e] += sum_o g[o, e] * w[o, e - p + k] over rows [begin, end).
template <int S>
DOCONV_AVX512_INLINE void position_correlate(const Shape& sh, const float* g, const float* w,
                                             float* acc, int64_t begin, int64_t end) {
  static const PermuteIndex index = permute_index(S);
  constexpr int64_t reach = S - 1;
  const int64_t row = sh.row();
  for (int64_t o0 = begin; o0 < end;) {
    const int64_t group = o0 / sh.out_per_group;
    const int64_t o1 = std::min(end, (group + 1) * sh.out_per_group);
    float* table = acc + group * S * row;
    auto scalar = [&](int64_t e) {
      const int64_t base = e - e % S;
      for (int k = 0; k < S; ++k) {
        float sum = 0;
        for (int64_t o = o0; o < o1; ++o) sum += g[o * row + e] * w[o * row + base + k];
        table[k * row + e] += sum;
      }
    };
    int64_t j = std::min(reach, row);
    for (int64_t e = 0; e < j; ++e) scalar(e);
    int64_t phase = j % S;
    for (; j - reach + 2 * kLanes512 <= row; j += kLanes512) {
      const int32_t* lanes = &index.lanes[phase][0][0];
      __m512i idx[S];
      __m512 sums[S];
      for (int k = 0; k < S; ++k) {
        idx[k] = _mm512_load_si512(lanes + k * kLanes512);
        sums[k] = _mm512_loadu_ps(table + k * row + j);
      }
      for (int64_t o = o0; o < o1; ++o) {
        const float* go = g + o * row + j;
        const float* wo = w + o * row + j - reach;
        // Two streams per row (G and W) across a block of rows, as in
        // correlate_tile: ask for the lines a few vectors ahead.
        __builtin_prefetch(go + kPrefetchAhead);
        __builtin_prefetch(wo + kPrefetchAhead);
        const __m512 gv = _mm512_loadu_ps(go);
        const __m512 lo = _mm512_loadu_ps(wo), hi = _mm512_loadu_ps(wo + kLanes512);
        for (int k = 0; k < S; ++k) {
          sums[k] = _mm512_fmadd_ps(gv, _mm512_permutex2var_ps(lo, idx[k], hi), sums[k]);
        }
      }
      for (int k = 0; k < S; ++k) _mm512_storeu_ps(table + k * row + j, sums[k]);
      phase = (phase + kLanes512) % S;
    }
    for (int64_t e = j; e < row; ++e) scalar(e);
    o0 = o1;
  }
}

template <int S>
DOCONV_AVX512 void position_forward_kernel(
    const Shape& sh, const float* x, const float* tables, float* y, int64_t begin,
    int64_t end) {
  position_apply<S>(sh, x, tables, y, begin, end, 0);
}

// As shift_backward, in the position form.
template <int S>
DOCONV_AVX512 void position_backward_kernel(
    const Shape& sh, const float* g, const float* w, const float* tables, float* grad_weight,
    float* acc, float* scratch, int64_t begin, int64_t end) {
  const int64_t row = sh.row();
  const bool in_place = grad_weight == g;
  for (int64_t o0 = begin; o0 < end; o0 += kBackwardBlock) {
    const int64_t o1 = std::min(end, o0 + kBackwardBlock);
    if (acc != nullptr) position_correlate<S>(sh, g, w, acc, o0, o1);
    if (grad_weight == nullptr) continue;
    if (in_place) {
      position_apply<S>(sh, g, tables, scratch, o0, o1, o0);
      std::memcpy(grad_weight + o0 * row, scratch, sizeof(float) * (o1 - o0) * row);
    } else {
      position_apply<S>(sh, g, tables, grad_weight, o0, o1, 0);
    }
  }
}

template <int S>
constexpr PositionKernels position_kernels_for() {
  return {position_forward_kernel<S>, position_backward_kernel<S>};
}
#endif  // DOCONV_X86

// Per-channel loops: W'[o, c, :] = D[c] W[o, c, :], one (S x Dm) matrix-vector
// product per (o, c).  The row forms above share each D matrix across a
// group's output rows and vectorize along them; where a group has one input
// channel (depthwise convs, 3x3 to 31x31 and strip kernels alike) or D_mul > M*N,
// rows are a single channel long and the tables of the row form would be twice D's
// size, so these loops read D once in place and vectorize along D_mul instead.

// sum_i a[i] b[i], in vector lanes and then across them.
template <typename T, int kBytes>
DOCONV_INLINE T dot(const T* a, const T* b, int64_t n) {
  using V = typename Vec<T, kBytes>::type;
  constexpr int64_t L = Vec<T, kBytes>::lanes;
  V acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    acc0 += load<V>(a + i) * load<V>(b + i);
    acc1 += load<V>(a + i + L) * load<V>(b + i + L);
  }
  if (i + L <= n) {
    acc0 += load<V>(a + i) * load<V>(b + i);
    i += L;
  }
  acc0 += acc1;
  T sum = 0;
  for (int64_t l = 0; l < L; ++l) sum += acc0[l];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y[i] (= or +=) alpha * x[i].
template <typename T, int kBytes, bool kAccumulate>
DOCONV_INLINE void axpy(T* y, T alpha, const T* x, int64_t n) {
  using V = typename Vec<T, kBytes>::type;
  constexpr int64_t L = Vec<T, kBytes>::lanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V v = load<V>(x + i) * alpha;
    store<V>(y + i, kAccumulate ? load<V>(y + i) + v : v);
  }
  for (; i < n; ++i) y[i] = kAccumulate ? y[i] + alpha * x[i] : alpha * x[i];
}

// Output rows [begin, end), for D_mul > M*N with few groups.
// y[s] = D[s, :] . w, plus sum_t w[s + t*S] (the tiled identity) with identity.
template <typename T, int kBytes>
DOCONV_INLINE void compose_channel(const T* dc, const T* w, T* y, int64_t S, int64_t Dm,
                                   bool identity) {
  for (int64_t s = 0; s < S; ++s) y[s] = dot<T, kBytes>(dc + s * Dm, w, Dm);
  if (!identity) return;
  for (int64_t d = 0; d + S <= Dm; d += S) {
    for (int64_t s = 0; s < S; ++s) y[s] += w[d + s];
  }
}

// gw += g tiled along D_mul (the identity's part of grad W = D^T g).
template <typename T>
DOCONV_INLINE void add_identity_gradient(T* gw, const T* g, int64_t S, int64_t Dm) {
  for (int64_t d = 0; d + S <= Dm; d += S) {
    for (int64_t s = 0; s < S; ++s) gw[d + s] += g[s];
  }
}

template <typename T, int kBytes>
DOCONV_INLINE void direct_forward(const Shape& sh, const T* weight, const T* d_full, T* out,
                                  int64_t begin, int64_t end, bool identity) {
  const int64_t S = sh.positions, Dm = sh.d_mul, Cg = sh.in_per_group;
  for (int64_t o = begin; o < end; ++o) {
    const int64_t group = o / sh.out_per_group;
    for (int64_t c = 0; c < Cg; ++c) {
      compose_channel<T, kBytes>(d_full + (group * Cg + c) * S * Dm, weight + (o * Cg + c) * Dm,
                                 out + (o * Cg + c) * S, S, Dm, identity);
    }
  }
}

// grad W[o, c, :] = D[c]^T g and grad_d[c] += g w^T, g = grad W'[o, c, :],
// for output rows [begin, end).
template <typename T, int kBytes>
DOCONV_INLINE void direct_backward(const Shape& sh, const T* grad, const T* weight,
                                   const T* d_full, T* grad_weight, T* grad_d, int64_t begin,
                                   int64_t end, bool identity) {
  const int64_t S = sh.positions, Dm = sh.d_mul, Cg = sh.in_per_group;
  for (int64_t o = begin; o < end; ++o) {
    const int64_t group = o / sh.out_per_group;
    for (int64_t c = 0; c < Cg; ++c) {
      const int64_t channel = group * Cg + c;
      const T* g = grad + (o * Cg + c) * S;
      const T* w = weight + (o * Cg + c) * Dm;
      const T* dc = d_full + channel * S * Dm;
      if (grad_weight != nullptr) {
        T* gw = grad_weight + (o * Cg + c) * Dm;
        axpy<T, kBytes, false>(gw, g[0], dc, Dm);
        for (int64_t s = 1; s < S; ++s) axpy<T, kBytes, true>(gw, g[s], dc + s * Dm, Dm);
        if (identity) add_identity_gradient(gw, g, S, Dm);
      }
      if (grad_d != nullptr) {
        T* gd = grad_d + channel * S * Dm;
        for (int64_t s = 0; s < S; ++s) axpy<T, kBytes, true>(gd + s * Dm, g[s], w, Dm);
      }
    }
  }
}

// Groups [begin, end): each D matrix is read once, while every output row of
// its group uses it, and its grad D is written once, by the one task that
// owns the group (no per-task buffers to zero and sum).
template <typename T, int kBytes>
DOCONV_INLINE void channel_forward(const Shape& sh, const T* weight, const T* d_full, T* out,
                                   int64_t begin, int64_t end, bool identity) {
  const int64_t S = sh.positions, Dm = sh.d_mul, Cg = sh.in_per_group;
  for (int64_t group = begin; group < end; ++group) {
    for (int64_t c = 0; c < Cg; ++c) {
      const T* dc = d_full + (group * Cg + c) * S * Dm;
      for (int64_t o = group * sh.out_per_group; o < (group + 1) * sh.out_per_group; ++o) {
        compose_channel<T, kBytes>(dc, weight + (o * Cg + c) * Dm, out + (o * Cg + c) * S, S,
                                   Dm, identity);
      }
    }
  }
}

template <typename T, int kBytes>
DOCONV_INLINE void channel_backward(const Shape& sh, const T* grad, const T* weight,
                                    const T* d_full, T* grad_weight, T* grad_d, int64_t begin,
                                    int64_t end, bool identity) {
  const int64_t S = sh.positions, Dm = sh.d_mul, Cg = sh.in_per_group;
  const int64_t per_group = sh.out_per_group;
  for (int64_t group = begin; group < end; ++group) {
    const int64_t o0 = group * per_group;
    for (int64_t c = 0; c < Cg; ++c) {
      const int64_t channel = group * Cg + c;
      const T* dc = d_full + channel * S * Dm;
      T* gdc = grad_d != nullptr ? grad_d + channel * S * Dm : nullptr;
      // One pass over the rows of D[c]: each row feeds grad W of every
      // output of the group and is replaced by its row of grad D.
      for (int64_t s = 0; s < S; ++s) {
        const T* d_row = dc + s * Dm;
        for (int64_t o = o0; o < o0 + per_group; ++o) {
          const T g = grad[(o * Cg + c) * S + s];
          if (grad_weight != nullptr) {
            T* gw = grad_weight + (o * Cg + c) * Dm;
            if (s == 0) {
              axpy<T, kBytes, false>(gw, g, d_row, Dm);
            } else {
              axpy<T, kBytes, true>(gw, g, d_row, Dm);
            }
          }
          if (gdc != nullptr) {
            const T* w = weight + (o * Cg + c) * Dm;
            if (o == o0) {
              axpy<T, kBytes, false>(gdc + s * Dm, g, w, Dm);
            } else {
              axpy<T, kBytes, true>(gdc + s * Dm, g, w, Dm);
            }
          }
        }
      }
      if (identity && grad_weight != nullptr) {
        for (int64_t o = o0; o < o0 + per_group; ++o) {
          add_identity_gradient(grad_weight + (o * Cg + c) * Dm, grad + (o * Cg + c) * S, S, Dm);
        }
      }
    }
  }
}

// One entry point per loop nest, dtype and instruction set.
template <typename T>
struct Kernels {
  void (*shift_apply)(const Shape&, const T*, const T*, T*, int64_t, int64_t);
  void (*shift_backward)(const Shape&, const T*, const T*, const T*, T*, T*, T*, int64_t,
                         int64_t);
  void (*direct_forward)(const Shape&, const T*, const T*, T*, int64_t, int64_t, bool);
  void (*direct_backward)(const Shape&, const T*, const T*, const T*, T*, T*, int64_t,
                          int64_t, bool);
  void (*channel_forward)(const Shape&, const T*, const T*, T*, int64_t, int64_t, bool);
  void (*channel_backward)(const Shape&, const T*, const T*, const T*, T*, T*, int64_t,
                           int64_t, bool);
};

#define DOCONV_VARIANT(T, ATTR, BYTES, SUFFIX)                                           \
  ATTR void shift_apply_##SUFFIX(const Shape& sh, const T* x, const T* tables, T* y,    \
                                 int64_t b, int64_t e) {                                 \
    shift_apply<T, BYTES>(sh, x, tables, y, b, e);                                       \
  }                                                                                      \
  ATTR void shift_backward_##SUFFIX(const Shape& sh, const T* g, const T* w,            \
                                    const T* tables, T* gw, T* acc, T* scratch,          \
                                    int64_t b, int64_t e) {                              \
    shift_backward<T, BYTES>(sh, g, w, tables, gw, acc, scratch, b, e);                  \
  }                                                                                      \
  ATTR void direct_forward_##SUFFIX(const Shape& sh, const T* w, const T* d, T* y,      \
                                    int64_t b, int64_t e, bool i) {                      \
    direct_forward<T, BYTES>(sh, w, d, y, b, e, i);                                      \
  }                                                                                      \
  ATTR void direct_backward_##SUFFIX(const Shape& sh, const T* g, const T* w,           \
                                     const T* d, T* gw, T* gd, int64_t b, int64_t e,     \
                                     bool i) {                                           \
    direct_backward<T, BYTES>(sh, g, w, d, gw, gd, b, e, i);                             \
  }                                                                                      \
  ATTR void channel_forward_##SUFFIX(const Shape& sh, const T* w, const T* d, T* y,     \
                                     int64_t b, int64_t e, bool i) {                     \
    channel_forward<T, BYTES>(sh, w, d, y, b, e, i);                                     \
  }                                                                                      \
  ATTR void channel_backward_##SUFFIX(const Shape& sh, const T* g, const T* w,          \
                                      const T* d, T* gw, T* gd, int64_t b, int64_t e,    \
                                      bool i) {                                          \
    channel_backward<T, BYTES>(sh, g, w, d, gw, gd, b, e, i);                            \
  }                                                                                      \
  const Kernels<T> kernels_##SUFFIX = {shift_apply_##SUFFIX,     shift_backward_##SUFFIX,  \
                                       direct_forward_##SUFFIX,  direct_backward_##SUFFIX, \
                                       channel_forward_##SUFFIX, channel_backward_##SUFFIX};

DOCONV_VARIANT(float, , 16, f32_base)
DOCONV_VARIANT(double, , 16, f64_base)
#if DOCONV_X86
DOCONV_VARIANT(float, DOCONV_AVX2, 32, f32_avx2)
DOCONV_VARIANT(double, DOCONV_AVX2, 32, f64_avx2)
DOCONV_VARIANT(float, DOCONV_AVX512, 32, f32_avx512)
DOCONV_VARIANT(double, DOCONV_AVX512, 64, f64_avx512)
#endif
#undef DOCONV_VARIANT

const char* const kInstructionSets[] = {"baseline", "avx2", "avx512"};  // narrow to wide

// Index in kInstructionSets of the widest variant this CPU runs.
int cpu_instruction_set() {
#if DOCONV_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

// "avx512", "avx2" or "baseline": the widest variant this CPU runs, or a
// narrower one named by the environment variable MMDOCONV_CPU_ISA (to time
// or test the variants on one machine, as oneDNN's ONEDNN_MAX_CPU_ISA does).
const char* choose_instruction_set() {
  const int supported = cpu_instruction_set();
  const char* cap = std::getenv("MMDOCONV_CPU_ISA");
  if (cap == nullptr || *cap == '\0') return kInstructionSets[supported];
  for (int i = 0; i < 3; ++i) {
    if (std::string(cap) == kInstructionSets[i]) return kInstructionSets[std::min(i, supported)];
  }
  TORCH_CHECK(false, "MMDOCONV_CPU_ISA must be avx512, avx2 or baseline, but got '", cap, "'");
}

// Chosen once per process, when the kernels are first used.
const char* instruction_set() {
  static const char* const chosen = choose_instruction_set();
  return chosen;
}

// The position-form kernels for float32 rows of S <= 9 positions on a CPU
// with AVX-512, or nullptr where the row form runs.
const PositionKernels* position_kernels(const Shape& sh, at::ScalarType dtype) {
#if DOCONV_X86
  static const bool avx512 = std::string(instruction_set()) == "avx512";
  static const PositionKernels by_positions[kMaxPositions] = {
      position_kernels_for<1>(), position_kernels_for<2>(), position_kernels_for<3>(),
      position_kernels_for<4>(), position_kernels_for<5>(), position_kernels_for<6>(),
      position_kernels_for<7>(), position_kernels_for<8>(), position_kernels_for<9>()};
  if (avx512 && dtype == at::kFloat && sh.positions == sh.d_mul &&
      sh.positions <= kMaxPositions) {
    return &by_positions[sh.positions - 1];
  }
#endif
  return nullptr;
}

template <typename T>
const Kernels<T>& kernels();

template <>
const Kernels<float>& kernels<float>() {
  static const Kernels<float>& chosen = [] () -> const Kernels<float>& {
    const std::string isa = instruction_set();
#if DOCONV_X86
    if (isa == "avx512") return kernels_f32_avx512;
    if (isa == "avx2") return kernels_f32_avx2;
#endif
    return kernels_f32_base;
  }();
  return chosen;
}

template <>
const Kernels<double>& kernels<double>() {
  static const Kernels<double>& chosen = [] () -> const Kernels<double>& {
    const std::string isa = instruction_set();
#if DOCONV_X86
    if (isa == "avx512") return kernels_f64_avx512;
    if (isa == "avx2") return kernels_f64_avx2;
#endif
    return kernels_f64_base;
  }();
  return chosen;
}

// Tables E (transpose=false) or F (transpose=true), (groups, 2S-1, Cg*S):
// E[t][c*S + s] = D[c, s, s + k], F[t][c*S + d] = D[c, d + k, d], k = t - (S-1).
at::Tensor shift_tables(const at::Tensor& d_full, const Shape& sh, bool transpose,
                        bool identity) {
  const int64_t S = sh.positions, shifts = 2 * S - 1, row = sh.row();
  at::Tensor tables = at::zeros({sh.groups, shifts, row}, d_full.options());
  AT_DISPATCH_FLOATING_TYPES(d_full.scalar_type(), "doconv_shift_tables", [&] {
    const scalar_t* d = d_full.data_ptr<scalar_t>();
    scalar_t* out = tables.data_ptr<scalar_t>();
    for (int64_t channel = 0; channel < sh.groups * sh.in_per_group; ++channel) {
      const int64_t group = channel / sh.in_per_group, c = channel % sh.in_per_group;
      const scalar_t* dc = d + channel * S * S;
      for (int64_t a = 0; a < S; ++a) {      // s for E, d for F
        for (int64_t b = 0; b < S; ++b) {    // s + k for E, d + k for F
          const int64_t t = b - a + S - 1;
          out[(group * shifts + t) * row + c * S + a] =
              (transpose ? dc[b * S + a] : dc[a * S + b]) + (identity && a == b ? 1 : 0);
        }
      }
    }
  });
  return tables;
}

// Position-form tables (groups, S, Cg*S): T[k][c*S + p] = D[c, p, k] for
// the forward, D[c, k, p] for grad W (transpose).
at::Tensor position_tables(const at::Tensor& d_full, const Shape& sh, bool transpose,
                           bool identity) {
  const int64_t S = sh.positions, row = sh.row();
  at::Tensor tables = at::empty({sh.groups, S, row}, d_full.options());
  const float* d = d_full.data_ptr<float>();
  float* out = tables.data_ptr<float>();
  for (int64_t channel = 0; channel < sh.groups * sh.in_per_group; ++channel) {
    const int64_t group = channel / sh.in_per_group, c = channel % sh.in_per_group;
    const float* dc = d + channel * S * S;
    for (int64_t p = 0; p < S; ++p) {
      for (int64_t k = 0; k < S; ++k) {
        out[(group * S + k) * row + c * S + p] =
            (transpose ? dc[k * S + p] : dc[p * S + k]) + (identity && p == k ? 1.0f : 0.0f);
      }
    }
  }
  return tables;
}

// About 32k multiply-adds per task: small layers stay on one thread.
int64_t grain_size(const Shape& sh) {
  const int64_t per_row = std::max<int64_t>(1, sh.in_per_group * sh.positions * sh.d_mul);
  return std::max<int64_t>(1, 32768 / per_row);
}

// Groups per task of the channel form, by the same measure.
int64_t group_grain_size(const Shape& sh) {
  return std::max<int64_t>(1, grain_size(sh) / sh.out_per_group);
}

// Whether the per-channel loops (channel_forward) run: grouped convs whose
// groups have one input channel, or D_mul > M*N.  Independent of the thread
// count, so a shape always takes the same loops.  (2-core AMD EPYC, AVX2,
// depthwise layer train step, batch 8: 7x7 768@7 52 ms in the row form
// against 14 ms here, plain conv 11 ms.)
bool channel_form(const Shape& sh) {
  return sh.groups > 1 && (sh.in_per_group == 1 || sh.positions != sh.d_mul);
}

// `out_in`, when given, is memory for W' (a contiguous tensor of W's dtype
// with at least C_out * C_in/groups * M*N elements): W' is written into its
// first elements and returned as a view of it.
at::Tensor compose_forward(const at::Tensor& weight_in, const at::Tensor& d_in,
                           int64_t groups, const c10::optional<at::Tensor>& out_in,
                           bool identity) {
  // Named in torch.profiler's traces (and counted by the tests).
  RECORD_FUNCTION("mmdoconv::compose_forward", std::vector<c10::IValue>());
  const Shape sh = shape_of(weight_in, d_in, groups);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor d_full = d_in.contiguous();
  const bool channel = channel_form(sh);
  const bool rows = !channel && sh.positions == sh.d_mul;
  const PositionKernels* position = rows ? position_kernels(sh, weight.scalar_type()) : nullptr;
  const at::Tensor tables = position != nullptr ? position_tables(d_full, sh, false, identity)
                            : rows              ? shift_tables(d_full, sh, false, identity)
                                                : at::Tensor();
  const int64_t numel = sh.out_channels * sh.in_per_group * sh.positions;
  at::Tensor out;
  if (out_in.has_value()) {
    TORCH_CHECK(out_in->is_contiguous() && out_in->scalar_type() == weight.scalar_type() &&
                    out_in->device().is_cpu() && out_in->numel() >= numel,
                "out must be a contiguous CPU tensor of W's dtype with at least ", numel,
                " elements");
    out = out_in->view({-1}).narrow(0, 0, numel).view(
        {sh.out_channels, sh.in_per_group, sh.positions});
  } else {
    out = at::empty({sh.out_channels, sh.in_per_group, sh.positions}, weight.options());
  }
  if (position != nullptr) {
    const float* w = weight.data_ptr<float>();
    const float* tab = tables.data_ptr<float>();
    float* y = out.data_ptr<float>();
    at::parallel_for(0, sh.out_channels, grain_size(sh), [&](int64_t b, int64_t e) {
      position->forward(sh, w, tab, y, b, e);
    });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "doconv_compose_forward", [&] {
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const scalar_t* tab = rows ? tables.data_ptr<scalar_t>() : nullptr;
    const scalar_t* d = d_full.data_ptr<scalar_t>();
    if (channel) {
      at::parallel_for(0, sh.groups, group_grain_size(sh), [&](int64_t b, int64_t e) {
        kernels<scalar_t>().channel_forward(sh, w, d, y, b, e, identity);
      });
      return;
    }
    at::parallel_for(0, sh.out_channels, grain_size(sh), [&](int64_t b, int64_t e) {
      if (rows) {
        kernels<scalar_t>().shift_apply(sh, w, tab, y, b, e);
      } else {
        kernels<scalar_t>().direct_forward(sh, w, d, y, b, e, identity);
      }
    });
  });
  return out;
}

// Sum of the per-task correlations, as grad D (C_in, S, S): tables of the
// row form (2S-1 shifts, k = d - s) or of the position form (S, k = d).
at::Tensor grad_d_from_correlations(const at::Tensor& correlations, const Shape& sh,
                                    bool position) {
  const int64_t S = sh.positions, shifts = position ? S : 2 * S - 1, row = sh.row();
  const at::Tensor summed = correlations.sum(0).contiguous();  // (groups, shifts, row)
  at::Tensor grad_d = at::empty({sh.groups * sh.in_per_group, S, S}, summed.options());
  AT_DISPATCH_FLOATING_TYPES(summed.scalar_type(), "doconv_grad_d", [&] {
    const scalar_t* h = summed.data_ptr<scalar_t>();
    scalar_t* gd = grad_d.data_ptr<scalar_t>();
    for (int64_t channel = 0; channel < sh.groups * sh.in_per_group; ++channel) {
      const int64_t group = channel / sh.in_per_group, c = channel % sh.in_per_group;
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t d = 0; d < S; ++d) {
          const int64_t t = position ? d : d - s + S - 1;
          gd[(channel * S + s) * S + d] = h[(group * shifts + t) * row + c * S + s];
        }
      }
    }
  });
  return grad_d;
}

// With in_place, the caller hands `grad_in` over: where the row form applies
// grad W is written over it (one allocation of W's size less per call).
std::vector<at::Tensor> compose_backward(const at::Tensor& grad_in, const at::Tensor& weight_in,
                                         const at::Tensor& d_in, int64_t groups,
                                         bool need_weight, bool need_d, bool in_place,
                                         bool identity) {
  RECORD_FUNCTION("mmdoconv::compose_backward", std::vector<c10::IValue>());
  const Shape sh = shape_of(weight_in, d_in, groups);
  TORCH_CHECK(grad_in.numel() == sh.out_channels * sh.in_per_group * sh.positions,
              "grad of W' has ", grad_in.numel(), " elements, expected ",
              sh.out_channels * sh.in_per_group * sh.positions);
  const at::Tensor grad = grad_in.contiguous().to(weight_in.scalar_type());
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor d_full = d_in.contiguous();
  at::Tensor grad_weight, grad_d;
  if (channel_form(sh)) {
    // Each task owns whole groups and writes their grad D directly.
    if (need_weight) grad_weight = at::empty_like(weight);
    if (need_d) grad_d = at::empty_like(d_full);
    if (need_weight || need_d) {
      AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "doconv_channel_backward", [&] {
        const scalar_t* g = grad.data_ptr<scalar_t>();
        const scalar_t* w = weight.data_ptr<scalar_t>();
        const scalar_t* d = d_full.data_ptr<scalar_t>();
        scalar_t* gw = need_weight ? grad_weight.data_ptr<scalar_t>() : nullptr;
        scalar_t* gd = need_d ? grad_d.data_ptr<scalar_t>() : nullptr;
        at::parallel_for(0, sh.groups, group_grain_size(sh), [&](int64_t b, int64_t e) {
          kernels<scalar_t>().channel_backward(sh, g, w, d, gw, gd, b, e, identity);
        });
      });
    }
    return {grad_weight, grad_d};
  }
  const bool rows = sh.positions == sh.d_mul;
  const bool write_over_grad = in_place && rows && need_weight;
  if (write_over_grad) {
    grad_weight = grad.view(weight.sizes());
  } else if (need_weight) {
    grad_weight = at::empty_like(weight);
  }
  // grad D sums over output channels: each task adds into its own buffer and
  // the buffers are summed at the end (deterministic for a given shape and
  // thread count, no atomics).  Small layers stay on one task, as in the
  // forward (16 channels, 3x3: 13 us on one thread against 28 us on two).
  const int64_t rows_per_task = grain_size(sh);
  const int64_t tasks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(),
                           (sh.out_channels + rows_per_task - 1) / rows_per_task));
  const PositionKernels* position = position_kernels(sh, weight.scalar_type());
  at::Tensor partial;
  if (need_d) {
    const int64_t tables_per_group = position != nullptr ? sh.positions : 2 * sh.positions - 1;
    partial = rows ? at::zeros({tasks, sh.groups, tables_per_group, sh.row()}, weight.options())
                   : at::zeros({tasks, d_full.size(0), sh.positions, sh.d_mul}, weight.options());
  }
  const at::Tensor tables = !(rows && need_weight) ? at::Tensor()
                            : position != nullptr  ? position_tables(d_full, sh, true, identity)
                                                   : shift_tables(d_full, sh, true, identity);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "doconv_compose_backward", [&] {
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    const scalar_t* d = d_full.data_ptr<scalar_t>();
    scalar_t* gw = need_weight ? grad_weight.data_ptr<scalar_t>() : nullptr;
    scalar_t* acc = need_d ? partial.data_ptr<scalar_t>() : nullptr;
    const int64_t per_task = need_d ? partial.numel() / tasks : 0;
    if (rows) {
      const scalar_t* tab = need_weight ? tables.data_ptr<scalar_t>() : nullptr;
      at::parallel_for(0, tasks, 1, [&](int64_t tb, int64_t te) {
        // Uninitialised (every element is written before it is read): a
        // std::vector would zero the block on every call.
        std::unique_ptr<scalar_t[]> scratch(
            write_over_grad ? new scalar_t[kBackwardBlock * sh.row()] : nullptr);
        for (int64_t t = tb; t < te; ++t) {
          const int64_t begin = t * sh.out_channels / tasks;
          const int64_t end = (t + 1) * sh.out_channels / tasks;
          scalar_t* task_acc = need_d ? acc + t * per_task : nullptr;
          if (position != nullptr) {  // float32 only: the casts are no-ops
            position->backward(sh, reinterpret_cast<const float*>(g),
                               reinterpret_cast<const float*>(w),
                               reinterpret_cast<const float*>(tab), reinterpret_cast<float*>(gw),
                               reinterpret_cast<float*>(task_acc),
                               reinterpret_cast<float*>(scratch.get()), begin, end);
            continue;
          }
          kernels<scalar_t>().shift_backward(sh, g, w, tab, gw, task_acc, scratch.get(), begin,
                                             end);
        }
      });
    }
    if (!rows && (need_weight || need_d)) {
      at::parallel_for(0, tasks, 1, [&](int64_t tb, int64_t te) {
        for (int64_t t = tb; t < te; ++t) {
          kernels<scalar_t>().direct_backward(sh, g, w, d, gw, need_d ? acc + t * per_task : nullptr,
                                              t * sh.out_channels / tasks,
                                              (t + 1) * sh.out_channels / tasks, identity);
        }
      });
    }
  });
  if (need_d) {
    grad_d = rows ? grad_d_from_correlations(partial, sh, position != nullptr) : partial.sum(0);
  }
  return {grad_weight, grad_d};
}


}  // namespace

namespace mmdoconv {
// ---------------------------------------------------------------------------
// The recomposing conv's training step in one call per pass.
//
// RecomposingConv2d (mmdoconv/cnn/recomposing_conv.py) is conv2d(x, W') with
// W' composed again in the backward instead of kept.  As a Python
// autograd.Function every layer pays Python glue in both passes (argument
// checks, reshapes, dispatch between the backends, the Function machinery).
// Where the arithmetic is nil (4-channel depthwise 3x3 on a 3x3 map, 2-core
// AMD EPYC) a train step cost 314 us more than nn.Conv2d's through it and
// 135 us more through this node (benchmark.py --shapes 4x3:dw --batch 1
// --python-glue) -- a network of 272 small layers (HRNet-W18) pays the
// difference 272 times.  This is the same function as a
// C++ autograd node for the case most training takes (CPU, float32/64, no
// autocast, the tiled identity): the same kernels, the same memory reuse,
// bit-identical results.  Everything else stays on the Python path.

// Memory for a W' that lives only inside one forward or backward call,
// reused by every layer of the thread (as _kernel_memory in Python: a freed
// W' of several MB goes back to the OS and its pages fault in again).
at::Tensor kernel_memory(const at::Tensor& like, int64_t numel) {
  thread_local at::Tensor buffers[2];
  at::Tensor& buffer = buffers[like.scalar_type() == at::kDouble ? 1 : 0];
  if (!buffer.defined() || buffer.numel() < numel) {
    buffer = at::Tensor();  // drop the old one before the larger one exists
    buffer = at::empty({numel}, like.options());
  }
  return buffer;
}

at::Tensor compose_kernel_into_memory(const at::Tensor& weight, const at::Tensor& d_minus_identity,
                                      at::IntArrayRef kernel_size, int64_t groups) {
  const int64_t out_channels = weight.size(0), in_per_group = weight.size(1);
  const at::Tensor rows = weight.reshape({out_channels, in_per_group, d_minus_identity.size(2)});
  const at::Tensor memory =
      kernel_memory(weight, out_channels * in_per_group * kernel_size[0] * kernel_size[1]);
  return compose_forward(rows, d_minus_identity, groups, memory, /*identity=*/true)
      .view({out_channels, in_per_group, kernel_size[0], kernel_size[1]});
}

// D + I with autograd (double backward only): the tiled identity of
// compose.doconv_identity, I[s, d] = (d mod S == s, d < S * (Dm / S)).
at::Tensor differentiable_kernel(const at::Tensor& weight, const at::Tensor& d_minus_identity,
                                 at::IntArrayRef kernel_size, int64_t groups) {
  const int64_t S = d_minus_identity.size(1), Dm = d_minus_identity.size(2);
  const int64_t repeats = Dm / S;
  at::Tensor identity = at::eye(S, d_minus_identity.options()).repeat({1, repeats});
  if (Dm > repeats * S) {
    identity = at::cat({identity, at::zeros({S, Dm - repeats * S}, identity.options())}, 1);
  }
  const at::Tensor d = d_minus_identity + identity;
  const int64_t out_channels = weight.size(0), in_per_group = weight.size(1);
  const at::Tensor w = weight.reshape({groups, out_channels / groups, in_per_group, Dm});
  const at::Tensor dg = d.reshape({groups, in_per_group, S, Dm});
  return at::einsum("gocd,gcsd->gocs", {w, dg})
      .reshape({out_channels, in_per_group, kernel_size[0], kernel_size[1]});
}

struct ConvArgs {
  std::vector<int64_t> kernel_size, stride, padding, dilation;
  int64_t groups;
};

ConvArgs conv_args(torch::autograd::AutogradContext* ctx) {
  return {ctx->saved_data["kernel_size"].toIntVector(), ctx->saved_data["stride"].toIntVector(),
          ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(),
          ctx->saved_data["groups"].toInt()};
}

at::Tensor conv(const at::Tensor& input, const at::Tensor& kernel, const at::Tensor& bias,
                const ConvArgs& a) {
  return at::convolution(input, kernel, bias.defined() ? c10::optional<at::Tensor>(bias)
                                                       : c10::optional<at::Tensor>(),
                         a.stride, a.padding, a.dilation, false, {0, 0}, a.groups);
}

struct RecomposingConv2d : public torch::autograd::Function<RecomposingConv2d> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& weight, const at::Tensor& d_minus_identity,
                            const c10::optional<at::Tensor>& bias_in,
                            std::vector<int64_t> kernel_size,
                            std::vector<int64_t> stride, std::vector<int64_t> padding,
                            std::vector<int64_t> dilation, int64_t groups) {
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    // Optional, not an undefined tensor: autograd records a device for every
    // tensor argument of a node.
    const at::Tensor bias = bias_in.has_value() ? *bias_in : at::Tensor();
    ctx->save_for_backward({input, weight, d_minus_identity, bias});
    const at::Tensor kernel = compose_kernel_into_memory(weight, d_minus_identity, kernel_size, groups);
    return conv(input, kernel, bias, {kernel_size, stride, padding, dilation, groups});
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &weight = saved[1], &d_minus_identity = saved[2],
                     &bias = saved[3];
    const ConvArgs a = conv_args(ctx);
    const bool need_input = ctx->needs_input_grad(0), need_weight = ctx->needs_input_grad(1),
               need_d = ctx->needs_input_grad(2), need_bias = bias.defined() && ctx->needs_input_grad(3);
    at::Tensor grad_input, grad_weight, grad_d, grad_bias;
    if (at::GradMode::is_enabled()) {
      // create_graph=True: differentiate a differentiable recomputation (its
      // graph reaches the saved inputs' own graphs).
      const at::Tensor output =
          conv(input, differentiable_kernel(weight, d_minus_identity, a.kernel_size, a.groups), bias, a);
      torch::autograd::variable_list wanted;
      const bool needs[4] = {need_input, need_weight, need_d, need_bias};
      for (int i = 0; i < 4; ++i) {
        if (needs[i]) wanted.push_back(saved[i]);
      }
      torch::autograd::variable_list grads;
      if (!wanted.empty()) {
        grads = torch::autograd::grad({output}, wanted, {grad_outputs[0]}, /*retain_graph=*/true,
                                      /*create_graph=*/true);
      }
      at::Tensor results[4];
      for (int i = 0, next = 0; i < 4; ++i) {
        if (needs[i]) results[i] = grads[next++];
      }
      return {results[0], results[1], results[2], results[3], at::Tensor(), at::Tensor(),
              at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const bool need_kernel = need_weight || need_d;
    const std::vector<int64_t> kernel_shape = {weight.size(0), weight.size(1), a.kernel_size[0],
                                               a.kernel_size[1]};
    at::Tensor kernel;
    if (need_input) {
      kernel = compose_kernel_into_memory(weight, d_minus_identity, a.kernel_size, a.groups);
    } else if (weight.size(2) * weight.size(3) == a.kernel_size[0] * a.kernel_size[1]) {
      // No input gradient: the weight gradient reads only the input and
      // grad_output, so the conv gets a stand-in of W''s shape it never reads.
      kernel = weight.view(kernel_shape);
    } else {
      kernel = at::empty(kernel_shape, weight.options());
    }
    at::Tensor grad_kernel;
    std::tie(grad_input, grad_kernel, grad_bias) = at::convolution_backward(
        grad_outputs[0], input, kernel,
        bias.defined() ? c10::OptionalIntArrayRef(bias.sizes()) : c10::OptionalIntArrayRef(),
        a.stride, a.padding, a.dilation, false, {0, 0}, a.groups,
        {need_input, need_kernel, need_bias});
    kernel = at::Tensor();
    if (need_kernel) {
      // grad W' is this backward's own tensor: grad W may take its memory.
      const auto grads = compose_backward(
          grad_kernel.view({weight.size(0), weight.size(1), -1}),
          weight.reshape({weight.size(0), weight.size(1), d_minus_identity.size(2)}),
          d_minus_identity, a.groups, need_weight, need_d, /*in_place=*/true, /*identity=*/true);
      if (need_weight) grad_weight = grads[0].view(weight.sizes());
      if (need_d) grad_d = grads[1];
    }
    return {need_input ? grad_input : at::Tensor(), grad_weight, grad_d,
            need_bias ? grad_bias : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor recomposing_conv2d(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& d_minus_identity,
                              const c10::optional<at::Tensor>& bias,
                              std::vector<int64_t> kernel_size, std::vector<int64_t> stride,
                              std::vector<int64_t> padding, std::vector<int64_t> dilation,
                              int64_t groups) {
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu() && d_minus_identity.device().is_cpu(),
              "recomposing_conv2d runs on CPU tensors");
  TORCH_CHECK(weight.dim() == 4 && d_minus_identity.dim() == 3 && kernel_size.size() == 2 &&
                  stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "recomposing_conv2d takes a 4-d W, a 3-d D - I and int pairs");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type() &&
                  d_minus_identity.scalar_type() == weight.scalar_type() &&
                  (weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kDouble),
              "recomposing_conv2d takes input, W and D of one dtype, float32 or float64");
  return RecomposingConv2d::apply(input, weight, d_minus_identity, bias, kernel_size, stride,
                                  padding, dilation, groups);
}

}  // namespace mmdoconv

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused DO-Conv kernel composition (CPU)";
  m.def("compose_forward", &compose_forward,
        "W' = D^T o W (D = d_full, or d_full + the tiled identity with identity=True)",
        py::arg("weight"), py::arg("d_full"), py::arg("groups"), py::arg("out") = py::none(),
        py::arg("identity") = false);
  m.def("compose_backward", &compose_backward, "grad W and grad D of W' = D^T o W",
        py::arg("grad"), py::arg("weight"), py::arg("d_full"), py::arg("groups"),
        py::arg("need_weight"), py::arg("need_d"), py::arg("in_place") = false,
        py::arg("identity") = false);
  m.def("recomposing_conv2d", &mmdoconv::recomposing_conv2d,
        "conv2d(input, W') for W' = (D - I + I)^T o W, W' composed again in the backward",
        py::arg("input"), py::arg("weight"), py::arg("d_minus_identity"), py::arg("bias"),
        py::arg("kernel_size"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"));
  m.def("instruction_set", &instruction_set, "the vector instructions the kernels use here");
}
