// Lockstep's portable GEMM: a fixed summation order that no vector width, tiling or thread
// count changes. Each output element is one chain of fused multiply-adds over k in order,
// from zero; a lane of a vector register computes exactly the chain the scalar path computes
// with fmaf (IEEE fma is correctly rounded, so hardware and library give the same bits).
// Tiles only choose which chains run side by side; k is never split.
#include "portable_gemm.h"
#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_X86 1
#define HAVE_LANES 1
#define LANES_TARGET __attribute__((target("avx2,fma")))
#elif defined(__aarch64__)
#include <arm_neon.h>
#define HAVE_NEON 1
#define HAVE_LANES 1
#define LANES_TARGET
#endif

static inline float A_at(const float *a, long lda, int transA, long i, long p) {
    return transA ? a[p * lda + i] : a[i * lda + p];
}
static inline float B_at(const float *b, long ldb, int transB, long p, long j) {
    return transB ? b[j * ldb + p] : b[p * ldb + j];
}

static void gemm_scalar(int transA, int transB, long i0, long i1, long j0, long j1, long k,
                        const float *a, long lda, const float *b, long ldb, int accumulate, float *c, long ldc) {
    for (long i = i0; i < i1; i++) {
        for (long j = j0; j < j1; j++) {
            float acc = 0.0f;
            for (long p = 0; p < k; p++) acc = fmaf(A_at(a, lda, transA, i, p), B_at(b, ldb, transB, p, j), acc);
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + acc : acc;
        }
    }
}

#ifdef HAVE_LANES
// The lanes paths split k into chunks of KC so the packed panels stay in cache. A chunk
// continues each element's chain from the float the previous chunk stored: storing and
// reloading a float does not change it, so the chain is the unsplit one.
// 512 rows: the recurrences' backward product (k = 4H = 512) and dx stay one chunk.
#define KC 512
#define MR 4

// op(B)'s columns j0..j0+w-1, rows p0..p0+kc-1, packed as [kc][w]; columns from `valid` on
// (past n) are zeros, whose chains are computed and never stored.
static void pack_b(float *dst, const float *b, long ldb, int transB, long p0, long kc, long j0, int w, int valid) {
    if (!transB) {
        for (long p = 0; p < kc; p++) {
            const float *row = b + (p0 + p) * ldb + j0;
            float *d = dst + p * w;
            int jj = 0;
            for (; jj < valid; jj++) d[jj] = row[jj];
            for (; jj < w; jj++) d[jj] = 0.0f;
        }
    } else {
        for (int jj = 0; jj < w; jj++) {
            const float *col = b + (j0 + jj) * ldb + p0;
            for (long p = 0; p < kc; p++) dst[p * w + jj] = jj < valid ? col[p] : 0.0f;
        }
    }
}

// The most rows a tile holds on any path (AVX-512's), and the rows of a tile on a lanes width.
#define MR_MAX 8
static inline int tile_rows(int width) {
#ifdef HAVE_X86
    return width == 32 ? 8 : 6;    // 8x32 zmm and 6x16 ymm tiles: 16 and 12 accumulators
#else
    (void)width; return MR;
#endif
}

// Each tile continues the chains of an r x w block (r <= MR rows, w = 8·h columns) over one
// chunk of k, op(A)'s element (i, p) at pa[i·ars + p·acs], op(B)'s panel packed [kc][w]: from `src` (the chains so far) or from zero when src is NULL, and stores them to
// `dst`, or, with `add`, stores dst + chain: the one rounded addition of `c + acc`.
#ifdef HAVE_X86
// R rows x H registers of LANES lanes (H = 1 or 2): R and H are constants where it is inlined,
// so the accumulators stay in registers for every row count, the edges included. One body for
// AVX2 (8 lanes) and AVX-512F (16).
#define TILE_BODY(NAME, TARGET, V, LANES, LOAD, STORE, ZERO, SET1, FMA, ADD)                          \
__attribute__((target(TARGET), always_inline))                                                     \
static inline void NAME(const int R, const int H, long kc, const float *pa, long ars, long acs,    \
                        const float *pb, const float *src, long lds, float *dst, long ldd, int add) { \
    V acc[8][2];                                                                                   \
    for (int i = 0; i < R; i++)                                                                    \
        for (int v = 0; v < H; v++) acc[i][v] = src ? LOAD(src + i * lds + LANES * v) : ZERO();    \
    for (long p = 0; p < kc; p++) {                                                                \
        V b[2];                                                                                    \
        for (int v = 0; v < H; v++) b[v] = LOAD(pb + p * LANES * H + LANES * v);                   \
        for (int i = 0; i < R; i++) {                                                              \
            V av = SET1(pa[p * acs + i * ars]);                                                    \
            for (int v = 0; v < H; v++) acc[i][v] = FMA(av, b[v], acc[i][v]);                      \
        }                                                                                          \
    }                                                                                              \
    for (int i = 0; i < R; i++)                                                                    \
        for (int v = 0; v < H; v++) {                                                              \
            float *d = dst + i * ldd + LANES * v;                                                  \
            STORE(d, add ? ADD(LOAD(d), acc[i][v]) : acc[i][v]);                                   \
        }                                                                                          \
}
TILE_BODY(tile_avx2_body, "avx2,fma", __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_setzero_ps,
          _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps)
TILE_BODY(tile512_body, "avx512f", __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_setzero_ps,
          _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps)

#define AVX2_CASE(R) case R: if (h == 2) tile_avx2_body(R, 2, kc, pa, ars, acs, pb, src, lds, dst, ldd, add); \
                             else tile_avx2_body(R, 1, kc, pa, ars, acs, pb, src, lds, dst, ldd, add); break;
__attribute__((target("avx2,fma")))
static void tile(int r, int h, long kc, const float *pa, long ars, long acs, const float *pb, const float *src, long lds,
                 float *dst, long ldd, int add) {
    // Up to 6 rows on the AVX2 path; 7 and 8 for the last 8 columns of an AVX-512 product.
    switch (r) { AVX2_CASE(1) AVX2_CASE(2) AVX2_CASE(3) AVX2_CASE(4) AVX2_CASE(5) AVX2_CASE(6) AVX2_CASE(7) AVX2_CASE(8) }
}

#define AVX512_CASE(R) case R: if (h == 2) tile512_body(R, 2, kc, pa, ars, acs, pb, src, lds, dst, ldd, add); \
                               else tile512_body(R, 1, kc, pa, ars, acs, pb, src, lds, dst, ldd, add); break;
__attribute__((target("avx512f")))
static void tile512(int r, int h, long kc, const float *pa, long ars, long acs, const float *pb, const float *src, long lds,
                    float *dst, long ldd, int add) {
    switch (r) { AVX512_CASE(1) AVX512_CASE(2) AVX512_CASE(3) AVX512_CASE(4) AVX512_CASE(5) AVX512_CASE(6) AVX512_CASE(7) AVX512_CASE(8) }
}
#endif

#ifdef HAVE_NEON
// The same tile in NEON: 8 columns are two 4-lane registers, and each lane's vfmaq_f32 is the
// fmaf of the scalar chain (a fused multiply-add, rounded once), so the bits are the same.
static void tile(int r, int h, long kc, const float *pa, long ars, long acs, const float *pb, const float *src, long lds,
                 float *dst, long ldd, int add) {
    float32x4_t acc[MR][4];   // NEON's tiles are MR = 4 rows
    const int q = 2 * h, w = 8 * h;   // registers a row, columns a row
    for (int i = 0; i < r; i++)
        for (int v = 0; v < q; v++) acc[i][v] = src ? vld1q_f32(src + i * lds + 4 * v) : vdupq_n_f32(0.0f);
    if (r == MR) {
        for (long p = 0; p < kc; p++) {
            float32x4_t bv[4];
            for (int v = 0; v < q; v++) bv[v] = vld1q_f32(pb + p * w + 4 * v);
            for (int i = 0; i < MR; i++) {
                float32x4_t av = vdupq_n_f32(pa[p * acs + i * ars]);
                for (int v = 0; v < q; v++) acc[i][v] = vfmaq_f32(acc[i][v], av, bv[v]);
            }
        }
    } else {
        for (long p = 0; p < kc; p++)
            for (int i = 0; i < r; i++)
                for (int v = 0; v < q; v++)
                    acc[i][v] = vfmaq_f32(acc[i][v], vdupq_n_f32(pa[p * acs + i * ars]), vld1q_f32(pb + p * w + 4 * v));
    }
    for (int i = 0; i < r; i++)
        for (int v = 0; v < q; v++) {
            float *d = dst + i * ldd + 4 * v;
            vst1q_f32(d, add ? vaddq_f32(vld1q_f32(d), acc[i][v]) : acc[i][v]);
        }
}
#endif

// The widest panel of `width` (32: AVX-512's two 16-lane registers a row; 16 and 8: two and one
// 8-lane registers, AVX2 or NEON) that fits in the `left` columns, a multiple of 8.
static inline int panel(int width, long left) {
    if (width >= 32 && left >= 32) return 32;
    if (width >= 16 && left >= 16) return 16;
    return 8;
}

// Columns of the packed op(B): n rounded up to a multiple of 8 (the last panel zero-padded).
static inline long padded(long n) { return (n + 7) / 8 * 8; }

// Rows p0..p0+kc-1 of op(B) [k x n] packed for `width`: panel by panel of the widths `panel`
// picks, [kc][w], so the panel at column j starts at kc·j.
static void pack_b_chunk(int width, float *dst, const float *b, long ldb, int transB, long p0, long kc, long n) {
    long np = padded(n), j = 0;
    while (j < np) {
        int w = panel(width, np - j);
        pack_b(dst + kc * j, b, ldb, transB, p0, kc, j, w, n - j < w ? (int)(n - j) : w);
        j += w;
    }
}

// op(B) [k x n] packed whole: chunk by chunk of KC rows, chunk p0 at p0·np (np = padded(n)).
static void pack_b_all(int width, float *dst, const float *b, long ldb, int transB, long k, long n) {
    for (long p0 = 0; p0 < k; p0 += KC)
        pack_b_chunk(width, dst + p0 * padded(n), b, ldb, transB, p0, k - p0 < KC ? k - p0 : KC, n);
}

// Rows of op(A) a block takes (whole tiles), and the packed B a block sweeps before the next:
// about 256 KiB of B (kc x nc floats), so it stays in L2 while the block's rows use it.
#define MC 96
static inline long group_cols(long kc) { long nc = 65536 / kc / 32 * 32; return nc < 32 ? 32 : nc; }

// Buffers per thread, grown to the largest call and kept: 0 a chunk of packed op(B), 1 the
// chains between chunks.
static float *scratch(int which, size_t floats) {
    static __thread float *buf[2];
    static __thread size_t cap[2];
    if (floats > cap[which]) { free(buf[which]); buf[which] = malloc(floats * sizeof(float)); cap[which] = floats; }
    return buf[which];
}

// One chunk of k (rows p0..p0+kc-1) of C[m x n] = op(A) · op(B) (+ C), `chunk` its packed
// op(B) rows: the chains start from zero (p0 = 0) or continue from s [m x np], and the last
// chunk stores them to C (an addition when accumulating), the others to s. A panel that runs
// past n is computed into `edge` and only its n columns stored; with `ct` every tile goes through
// `edge` and is stored transposed: C is [n x m] at ldc. op(A) is read where it is: a tile
// broadcasts its elements (packing it measured 4-5% slower in training, on both paths).
// Blocking (MC rows, group_cols columns) only orders the tiles: each chain still runs its
// chunks in order.
LANES_TARGET
static void lanes_chunk(int width, int transA, long m, long n, long p0, long kc, int last,
                        const float *a, long lda, const float *chunk, float *s,
                        int accumulate, float *c, long ldc, int ct) {
    float edge[MR_MAX * 32];
    const int mr = tile_rows(width);
    const long np = padded(n);
    const long mc = m < MC ? m : MC / mr * mr;
    const long nc = group_cols(kc);
    for (long i0 = 0; i0 < m; i0 += mc) {
        long i1 = i0 + mc < m ? i0 + mc : m;
        // The block's rows in tiles of nearly equal height (32 rows: 6,6,5,5,5,5, not 6x5 and a 2):
        // a short tile has too few chains in flight to cover the multiply-add latency.
        const long tiles = (i1 - i0 + mr - 1) / mr, base = (i1 - i0) / tiles, extra = (i1 - i0) % tiles;
        for (long j0 = 0; j0 < np; j0 += nc) {
            long j1 = j0 + nc < np ? j0 + nc : np;
            for (long t = 0; t < tiles; t++) {
                const long i = i0 + t * base + (t < extra ? t : extra);
                const int r = (int)(base + (t < extra));
                // op(A) read where it is: element (i + ii, p0 + p) at ta[ii·ars + p·acs]
                const float *ta = transA ? a + p0 * lda + i : a + i * lda + p0;
                const long ars = transA ? 1 : lda, acs = transA ? lda : 1;
                for (long j = j0; j < j1; ) {
                    int w = panel(width, np - j);
                    int cut = last && (ct || j + w > n);   // through `edge`
                    const float *src = p0 == 0 ? NULL : s + i * np + j;
                    float *dst = cut ? edge : last ? c + i * ldc + j : s + i * np + j;
                    long ldd = cut ? w : last ? ldc : np;
                    int add = last && accumulate && !cut;
                    const float *tb = chunk + kc * j;   // the panels before j hold kc·j floats
#ifdef HAVE_X86
                    if (width == 32 && w >= 16) tile512(r, w / 16, kc, ta, ars, acs, tb, src, np, dst, ldd, add); else
#endif
                    tile(r, w / 8, kc, ta, ars, acs, tb, src, np, dst, ldd, add);
                    if (cut) {
                        long cols = n - j < w ? n - j : w;
                        for (int ii = 0; ii < r; ii++)
                            for (long jj = 0; jj < cols; jj++) {
                                float *d = ct ? c + (j + jj) * ldc + i + ii : c + (i + ii) * ldc + j + jj;
                                *d = accumulate ? *d + edge[ii * w + jj] : edge[ii * w + jj];
                            }
                    }
                    j += w;
                }
            }
        }
    }
}

// k = 0: every chain is the empty sum, +0.
static void empty_product(long m, long n, int accumulate, float *c, long ldc) {
    for (long i = 0; i < m; i++)
        for (long j = 0; j < n; j++) c[i * ldc + j] = accumulate ? c[i * ldc + j] + 0.0f : 0.0f;
}

// C = op(A) · op(B) with op(B) packed whole (pack_b_all): chunk by chunk.
LANES_TARGET
static void lanes_packed(int width, int transA, long m, long n, long k, const float *a, long lda,
                         const float *pb, int accumulate, float *c, long ldc) {
    if (k == 0) { empty_product(m, n, accumulate, c, ldc); return; }
    const long np = padded(n);
    float *s = k > KC ? scratch(1, (size_t)(m * np)) : NULL;
    for (long p0 = 0; p0 < k; p0 += KC) {
        long kc = k - p0 < KC ? k - p0 : KC;
        lanes_chunk(width, transA, m, n, p0, kc, p0 + kc >= k, a, lda, pb + p0 * np, s, accumulate, c, ldc, 0);
    }
}

// C = op(A) · op(B), op(B) packed a chunk at a time while it is used. A weight gradient
// (aᵀ·b over k = every frame, n < m) is computed as Cᵀ = bᵀ·a: the operand read across rows is
// then the narrow one, and the wide one is packed in contiguous panels. Element (i, j) is the
// same chain: fma(a, b, acc) == fma(b, a, acc), since the product is exact before the rounding.
LANES_TARGET
static void gemm_lanes(int width, int transA, int transB, long m, long n, long k,
                       const float *a, long lda, const float *b, long ldb, int accumulate, float *c, long ldc) {
    if (k == 0) { empty_product(m, n, accumulate, c, ldc); return; }
    int swap = transA && !transB && n < m;
    if (swap) {
        const float *t = a; a = b; b = t;
        long tl = lda; lda = ldb; ldb = tl;
        long tm = m; m = n; n = tm;
        transB = 0;   // a, [k x m]: row p holds op(B')'s row p
    }
    const long np = padded(n);
    float *s = k > KC ? scratch(1, (size_t)(m * np)) : NULL;
    float *pb = scratch(0, (size_t)((k < KC ? k : KC) * np));
    for (long p0 = 0; p0 < k; p0 += KC) {
        long kc = k - p0 < KC ? k - p0 : KC;
        pack_b_chunk(width, pb, b, ldb, transB, p0, kc, n);
        lanes_chunk(width, transA, m, n, p0, kc, p0 + kc >= k, a, lda, pb, s, accumulate, c, ldc, swap);
    }
}
#endif

int lockstep_gemm_best_path(void) {
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        // Measured: on a Zen 4 core the 32-column AVX-512 tiles ran training 1.5x the AVX2 ones.
        return __builtin_cpu_supports("avx512f") ? LOCKSTEP_GEMM_AVX512 : LOCKSTEP_GEMM_LANES16;
    }
#endif
#ifdef HAVE_NEON
    return LOCKSTEP_GEMM_NEON;   // NEON and its fused multiply-add are part of every ARM64 CPU
#endif
    return LOCKSTEP_GEMM_SCALAR;
}

// The lanes width a path runs with on this CPU (32, 16 or 8), or 0 for the scalar chain.
static int path_width(int *path) {
    if (*path == LOCKSTEP_GEMM_AUTO) *path = lockstep_gemm_best_path();
#ifdef HAVE_X86
    if (*path == LOCKSTEP_GEMM_AVX512) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 32;
        *path = LOCKSTEP_GEMM_SCALAR;   // a CPU without AVX-512 runs the scalar chain: the same bits
    }
    if (*path == LOCKSTEP_GEMM_LANES8 || *path == LOCKSTEP_GEMM_LANES16) return *path == LOCKSTEP_GEMM_LANES16 ? 16 : 8;
#endif
#ifdef HAVE_NEON
    if (*path == LOCKSTEP_GEMM_NEON || *path == LOCKSTEP_GEMM_NEON8) return *path == LOCKSTEP_GEMM_NEON ? 16 : 8;
#endif
    *path = LOCKSTEP_GEMM_SCALAR;
    return 0;
}

int lockstep_gemm(int transA, int transB, long m, long n, long k,
                  const float *a, long lda, const float *b, long ldb,
                  int accumulate, float *c, long ldc, int path) {
    if (m <= 0 || n <= 0) return path;
    int width = path_width(&path);
#ifdef HAVE_LANES
    if (width > 0) {
        gemm_lanes(width, transA, transB, m, n, k, a, lda, b, ldb, accumulate, c, ldc);
        return path;
    }
#endif
    gemm_scalar(transA, transB, 0, m, 0, n, k, a, lda, b, ldb, accumulate, c, ldc);
    return LOCKSTEP_GEMM_SCALAR;
}

long lockstep_gemm_packed_size(long n, long k) { return k * ((n + 7) / 8 * 8) + 1; }

int lockstep_gemm_pack_b(int transB, long n, long k, const float *b, long ldb, float *dst, int path) {
    int width = path_width(&path);
#ifdef HAVE_LANES
    if (width > 0) pack_b_all(width, dst, b, ldb, transB, k, n);
#endif
    (void)width; (void)dst; (void)b; (void)ldb; (void)transB; (void)k;
    return path;
}

int lockstep_gemm_packed(int transA, long m, long n, long k, const float *a, long lda,
                         const float *packed, const float *b, long ldb, int transB,
                         int accumulate, float *c, long ldc, int path) {
    if (m <= 0 || n <= 0) return path;
    int width = path_width(&path);
#ifdef HAVE_LANES
    if (width > 0) {
        lanes_packed(width, transA, m, n, k, a, lda, packed, accumulate, c, ldc);
        return path;
    }
#endif
    (void)packed;
    gemm_scalar(transA, transB, 0, m, 0, n, k, a, lda, b, ldb, accumulate, c, ldc);
    return LOCKSTEP_GEMM_SCALAR;
}
