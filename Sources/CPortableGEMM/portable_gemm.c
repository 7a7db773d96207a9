// Lockstep's portable GEMM: a fixed summation order that no vector width, tiling or thread
// count changes. Each output element is one chain of fused multiply-adds over k in order,
// from zero; a lane of a vector register computes exactly the chain the scalar path computes
// with fmaf (IEEE fma is correctly rounded, so hardware and library give the same bits).
// Tiles only choose which chains run side by side; k is never split.
#include "portable_gemm.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
#define KC 256
#define MR 4

// op(B)'s columns j0..j0+w-1, rows p0..p0+kc-1, packed as [kc][w].
static void pack_b(float *dst, const float *b, long ldb, int transB, long p0, long kc, long j0, int w) {
    if (!transB) {
        for (long p = 0; p < kc; p++) memcpy(dst + p * w, b + (p0 + p) * ldb + j0, (size_t)w * sizeof(float));
    } else {
        for (int jj = 0; jj < w; jj++) {
            const float *col = b + (j0 + jj) * ldb + p0;
            for (long p = 0; p < kc; p++) dst[p * w + jj] = col[p];
        }
    }
}

// op(A)'s rows i0..i0+r-1 (r <= MR), columns p0..p0+kc-1, packed as [kc][MR].
static void pack_a(float *dst, const float *a, long lda, int transA, long p0, long kc, long i0, int r) {
    for (long p = 0; p < kc; p++)
        for (int ii = 0; ii < MR; ii++) dst[p * MR + ii] = ii < r ? A_at(a, lda, transA, i0 + ii, p0 + p) : 0.0f;
}

// Each tile continues the chains of an r x w block (r <= MR rows, w = 8·h columns) over one
// chunk of k: from `src` (the chains so far) or from zero when src is NULL, and stores them to
// `dst`, or, with `add`, stores dst + chain: the one rounded addition of `c + acc`.
#ifdef HAVE_X86
__attribute__((target("avx2,fma")))
static void tile(int r, int h, long kc, const float *pa, const float *pb, const float *src, long lds,
                 float *dst, long ldd, int add) {
    __m256 acc[MR][2];
    for (int i = 0; i < r; i++)
        for (int v = 0; v < h; v++) acc[i][v] = src ? _mm256_loadu_ps(src + i * lds + 8 * v) : _mm256_setzero_ps();
    const int w = 8 * h;
    if (r == MR && h == 2) {
        __m256 c00 = acc[0][0], c01 = acc[0][1], c10 = acc[1][0], c11 = acc[1][1];
        __m256 c20 = acc[2][0], c21 = acc[2][1], c30 = acc[3][0], c31 = acc[3][1];
        for (long p = 0; p < kc; p++) {
            __m256 b0 = _mm256_loadu_ps(pb + p * 16), b1 = _mm256_loadu_ps(pb + p * 16 + 8);
            __m256 a0 = _mm256_broadcast_ss(pa + p * MR), a1 = _mm256_broadcast_ss(pa + p * MR + 1);
            __m256 a2 = _mm256_broadcast_ss(pa + p * MR + 2), a3 = _mm256_broadcast_ss(pa + p * MR + 3);
            c00 = _mm256_fmadd_ps(a0, b0, c00); c01 = _mm256_fmadd_ps(a0, b1, c01);
            c10 = _mm256_fmadd_ps(a1, b0, c10); c11 = _mm256_fmadd_ps(a1, b1, c11);
            c20 = _mm256_fmadd_ps(a2, b0, c20); c21 = _mm256_fmadd_ps(a2, b1, c21);
            c30 = _mm256_fmadd_ps(a3, b0, c30); c31 = _mm256_fmadd_ps(a3, b1, c31);
        }
        acc[0][0] = c00; acc[0][1] = c01; acc[1][0] = c10; acc[1][1] = c11;
        acc[2][0] = c20; acc[2][1] = c21; acc[3][0] = c30; acc[3][1] = c31;
    } else if (r == MR && h == 1) {
        __m256 c0 = acc[0][0], c1 = acc[1][0], c2 = acc[2][0], c3 = acc[3][0];
        for (long p = 0; p < kc; p++) {
            __m256 bv = _mm256_loadu_ps(pb + p * 8);
            c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(pa + p * MR), bv, c0);
            c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(pa + p * MR + 1), bv, c1);
            c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(pa + p * MR + 2), bv, c2);
            c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(pa + p * MR + 3), bv, c3);
        }
        acc[0][0] = c0; acc[1][0] = c1; acc[2][0] = c2; acc[3][0] = c3;
    } else {
        for (long p = 0; p < kc; p++)
            for (int i = 0; i < r; i++)
                for (int v = 0; v < h; v++)
                    acc[i][v] = _mm256_fmadd_ps(_mm256_broadcast_ss(pa + p * MR + i), _mm256_loadu_ps(pb + p * w + 8 * v), acc[i][v]);
    }
    for (int i = 0; i < r; i++)
        for (int v = 0; v < h; v++) {
            float *d = dst + i * ldd + 8 * v;
            _mm256_storeu_ps(d, add ? _mm256_add_ps(_mm256_loadu_ps(d), acc[i][v]) : acc[i][v]);
        }
}

// The same chains, 16 lanes a register (AVX-512F): an r x (16·h) tile, h = 1 or 2.
__attribute__((target("avx512f")))
static void tile512(int r, int h, long kc, const float *pa, const float *pb, const float *src, long lds,
                    float *dst, long ldd, int add) {
    __m512 acc[MR][2];
    const int w = 16 * h;
    for (int i = 0; i < r; i++)
        for (int v = 0; v < h; v++) acc[i][v] = src ? _mm512_loadu_ps(src + i * lds + 16 * v) : _mm512_setzero_ps();
    if (r == MR && h == 2) {
        __m512 c00 = acc[0][0], c01 = acc[0][1], c10 = acc[1][0], c11 = acc[1][1];
        __m512 c20 = acc[2][0], c21 = acc[2][1], c30 = acc[3][0], c31 = acc[3][1];
        for (long p = 0; p < kc; p++) {
            __m512 b0 = _mm512_loadu_ps(pb + p * 32), b1 = _mm512_loadu_ps(pb + p * 32 + 16);
            __m512 a0 = _mm512_set1_ps(pa[p * MR]), a1 = _mm512_set1_ps(pa[p * MR + 1]);
            __m512 a2 = _mm512_set1_ps(pa[p * MR + 2]), a3 = _mm512_set1_ps(pa[p * MR + 3]);
            c00 = _mm512_fmadd_ps(a0, b0, c00); c01 = _mm512_fmadd_ps(a0, b1, c01);
            c10 = _mm512_fmadd_ps(a1, b0, c10); c11 = _mm512_fmadd_ps(a1, b1, c11);
            c20 = _mm512_fmadd_ps(a2, b0, c20); c21 = _mm512_fmadd_ps(a2, b1, c21);
            c30 = _mm512_fmadd_ps(a3, b0, c30); c31 = _mm512_fmadd_ps(a3, b1, c31);
        }
        acc[0][0] = c00; acc[0][1] = c01; acc[1][0] = c10; acc[1][1] = c11;
        acc[2][0] = c20; acc[2][1] = c21; acc[3][0] = c30; acc[3][1] = c31;
    } else {
        for (long p = 0; p < kc; p++)
            for (int i = 0; i < r; i++)
                for (int v = 0; v < h; v++)
                    acc[i][v] = _mm512_fmadd_ps(_mm512_set1_ps(pa[p * MR + i]), _mm512_loadu_ps(pb + p * w + 16 * v), acc[i][v]);
    }
    for (int i = 0; i < r; i++)
        for (int v = 0; v < h; v++) {
            float *d = dst + i * ldd + 16 * v;
            _mm512_storeu_ps(d, add ? _mm512_add_ps(_mm512_loadu_ps(d), acc[i][v]) : acc[i][v]);
        }
}
#endif

#ifdef HAVE_NEON
// The same tile in NEON: 8 columns are two 4-lane registers, and each lane's vfmaq_f32 is the
// fmaf of the scalar chain (a fused multiply-add, rounded once), so the bits are the same.
static void tile(int r, int h, long kc, const float *pa, const float *pb, const float *src, long lds,
                 float *dst, long ldd, int add) {
    float32x4_t acc[MR][4];
    const int q = 2 * h, w = 8 * h;   // registers a row, columns a row
    for (int i = 0; i < r; i++)
        for (int v = 0; v < q; v++) acc[i][v] = src ? vld1q_f32(src + i * lds + 4 * v) : vdupq_n_f32(0.0f);
    if (r == MR) {
        for (long p = 0; p < kc; p++) {
            float32x4_t bv[4];
            for (int v = 0; v < q; v++) bv[v] = vld1q_f32(pb + p * w + 4 * v);
            for (int i = 0; i < MR; i++) {
                float32x4_t av = vdupq_n_f32(pa[p * MR + i]);
                for (int v = 0; v < q; v++) acc[i][v] = vfmaq_f32(acc[i][v], av, bv[v]);
            }
        }
    } else {
        for (long p = 0; p < kc; p++)
            for (int i = 0; i < r; i++)
                for (int v = 0; v < q; v++)
                    acc[i][v] = vfmaq_f32(acc[i][v], vdupq_n_f32(pa[p * MR + i]), vld1q_f32(pb + p * w + 4 * v));
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

// op(B)'s first nv columns (nv a multiple of 8) packed for `width`: chunk by chunk of KC rows
// (chunk p0 starts at p0·nv), each chunk panel by panel of the widths `panel` picks, [kc][w].
static void pack_b_all(int width, float *dst, const float *b, long ldb, int transB, long k, long nv) {
    for (long p0 = 0; p0 < k; p0 += KC) {
        long kc = k - p0 < KC ? k - p0 : KC, j = 0, off = p0 * nv;
        while (j < nv) {
            int w = panel(width, nv - j);
            pack_b(dst + off, b, ldb, transB, p0, kc, j, w);
            off += kc * w; j += w;
        }
    }
}

// C[m x nv] = op(A) · packed op(B) (+ C): the chains chunk by chunk of k; a product whose k
// fits one chunk (the recurrences' k = H) goes straight to C, longer ones keep the chains in s
// between chunks and add to C on the last.
LANES_TARGET
static void lanes_packed(int width, int transA, long m, long nv, long k, const float *a, long lda,
                         const float *pb, int accumulate, float *c, long ldc) {
    float pa[KC * MR];
    if (k == 0) {
        for (long i = 0; i < m; i++)
            for (long j = 0; j < nv; j++) c[i * ldc + j] = accumulate ? c[i * ldc + j] + 0.0f : 0.0f;
        return;
    }
    float *s = k > KC ? malloc((size_t)(m * nv) * sizeof(float)) : NULL;
    for (long p0 = 0; p0 < k; p0 += KC) {
        long kc = k - p0 < KC ? k - p0 : KC;
        int last = p0 + kc >= k;
        const float *chunk = pb + p0 * nv;
        for (long i = 0; i < m; i += MR) {
            int r = m - i < MR ? (int)(m - i) : MR;
            pack_a(pa, a, lda, transA, p0, kc, i, r);
            long j = 0, off = 0;
            while (j < nv) {
                int w = panel(width, nv - j);
                const float *src = p0 == 0 ? NULL : s + i * nv + j;
                float *dst = last ? c + i * ldc + j : s + i * nv + j;
                long ldd = last ? ldc : nv;
                int add = last && accumulate;
#ifdef HAVE_X86
                if (width == 32 && w >= 16) tile512(r, w / 16, kc, pa, chunk + off, src, nv, dst, ldd, add); else
#endif
                tile(r, w / 8, kc, pa, chunk + off, src, nv, dst, ldd, add);
                off += kc * w; j += w;
            }
        }
    }
    free(s);
}

LANES_TARGET
static void gemm_lanes(int width, int transA, int transB, long m, long n, long k,
                       const float *a, long lda, const float *b, long ldb, int accumulate, float *c, long ldc) {
    long nv = n / 8 * 8;   // columns the tiles compute; the rest go to the scalar chains
    if (nv > 0) {
        float *pb = malloc((size_t)(k * nv + 1) * sizeof(float));
        pack_b_all(width, pb, b, ldb, transB, k, nv);
        lanes_packed(width, transA, m, nv, k, a, lda, pb, accumulate, c, ldc);
        free(pb);
    }
    if (nv < n) gemm_scalar(transA, transB, 0, m, nv, n, k, a, lda, b, ldb, accumulate, c, ldc);
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

long lockstep_gemm_packed_size(long n, long k) { return k * (n / 8 * 8) + 1; }

int lockstep_gemm_pack_b(int transB, long n, long k, const float *b, long ldb, float *dst, int path) {
    int width = path_width(&path);
#ifdef HAVE_LANES
    if (width > 0 && n >= 8) pack_b_all(width, dst, b, ldb, transB, k, n / 8 * 8);
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
    long nv = n / 8 * 8;
    if (width > 0 && nv > 0) {
        lanes_packed(width, transA, m, nv, k, a, lda, packed, accumulate, c, ldc);
        if (nv < n) gemm_scalar(transA, transB, 0, m, nv, n, k, a, lda, b, ldb, accumulate, c, ldc);
        return path;
    }
#endif
    (void)packed;
    gemm_scalar(transA, transB, 0, m, 0, n, k, a, lda, b, ldb, accumulate, c, ldc);
    return LOCKSTEP_GEMM_SCALAR;
}
