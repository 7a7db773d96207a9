// The LSTM cell's pointwise forward in AVX2 and AVX-512: see include/lstm_cell.h. Built with
// -ffp-contract=off and without the FMA target, so no multiply-add is ever fused.
#include "lstm_cell.h"
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
typedef __m256 v8;

// The constants of Numerics.detExp/detTanh, as float bit patterns (a test checks them
// against Swift's values through the results).
#define K(x) _mm256_set1_ps(x)

__attribute__((target("avx2")))
static inline v8 det_exp(v8 x) {
    // clamp: NaN and x <= -87 become -87 (as IEEE maximum does), then x > 88 becomes 88
    v8 lo = K(-87.0f), hi = K(88.0f);
    v8 l = _mm256_blendv_ps(lo, x, _mm256_cmp_ps(x, lo, _CMP_GT_OQ));
    v8 xc = _mm256_blendv_ps(l, hi, _mm256_cmp_ps(l, hi, _CMP_GT_OQ));
    v8 t = _mm256_mul_ps(xc, K(1.44269504f));
    v8 k = _mm256_add_ps(t, K(12582912.0f));
    v8 n = _mm256_sub_ps(k, K(12582912.0f));
    v8 r = _mm256_sub_ps(_mm256_sub_ps(xc, _mm256_mul_ps(n, K(0.693145751953125f))),
                         _mm256_mul_ps(n, K(1.428606765330187e-6f)));
    v8 p = K(1.0f / 5040.0f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), K(1.0f / 720.0f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), K(1.0f / 120.0f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), K(1.0f / 24.0f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), K(1.0f / 6.0f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), K(0.5f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), K(1.0f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), K(1.0f));
    __m256i kb = _mm256_castps_si256(k);
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(kb, _mm256_set1_epi32(0x4B400000)),
                                                   _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2")))
static inline v8 det_sigmoid(v8 x) {
    v8 neg = _mm256_xor_ps(x, K(-0.0f));
    return _mm256_div_ps(K(1.0f), _mm256_add_ps(K(1.0f), det_exp(neg)));
}

__attribute__((target("avx2")))
static inline v8 det_tanh(v8 x) {
    v8 a = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
    v8 e = det_exp(_mm256_mul_ps(K(-2.0f), a));
    v8 big = _mm256_div_ps(_mm256_sub_ps(K(1.0f), e), _mm256_add_ps(K(1.0f), e));
    v8 isSmall = _mm256_cmp_ps(a, K(0.0625f), _CMP_LT_OQ);
    v8 m = big;
    if (_mm256_movemask_ps(isSmall)) {  // the series only where some lane needs it (the same blend)
        v8 a2 = _mm256_mul_ps(a, a);
        v8 poly = _mm256_add_ps(K(-1.0f / 3.0f), _mm256_mul_ps(a2, _mm256_sub_ps(K(2.0f / 15.0f), _mm256_mul_ps(a2, K(17.0f / 315.0f)))));
        v8 small = _mm256_add_ps(a, _mm256_mul_ps(_mm256_mul_ps(a, a2), poly));
        m = _mm256_blendv_ps(big, small, isSmall);
    }
    v8 negm = _mm256_xor_ps(m, K(-0.0f));
    return _mm256_blendv_ps(m, negm, _mm256_cmp_ps(x, K(0.0f), _CMP_LT_OQ));
}


// The same cell in AVX-512F, sixteen lanes: every operation is the AVX2 one lane by lane (IEEE
// arithmetic is per lane), so the bits are the same; xor/and go through the integer unit
// (AVX-512F has no float xor).
typedef __m512 v16;
#define K16(x) _mm512_set1_ps(x)
#define XOR16(a, b) _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)))

__attribute__((target("avx512f")))
static inline v16 det_exp16(v16 x) {
    v16 lo = K16(-87.0f), hi = K16(88.0f);
    v16 l = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GT_OQ), lo, x);
    v16 xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(l, hi, _CMP_GT_OQ), l, hi);
    v16 t = _mm512_mul_ps(xc, K16(1.44269504f));
    v16 k = _mm512_add_ps(t, K16(12582912.0f));
    v16 n = _mm512_sub_ps(k, K16(12582912.0f));
    v16 r = _mm512_sub_ps(_mm512_sub_ps(xc, _mm512_mul_ps(n, K16(0.693145751953125f))),
                          _mm512_mul_ps(n, K16(1.428606765330187e-6f)));
    v16 p = K16(1.0f / 5040.0f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), K16(1.0f / 720.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), K16(1.0f / 120.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), K16(1.0f / 24.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), K16(1.0f / 6.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), K16(0.5f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), K16(1.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), K16(1.0f));
    __m512i kb = _mm512_castps_si512(k);
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(kb, _mm512_set1_epi32(0x4B400000)),
                                                   _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

__attribute__((target("avx512f")))
static inline v16 det_sigmoid16(v16 x) {
    return _mm512_div_ps(K16(1.0f), _mm512_add_ps(K16(1.0f), det_exp16(XOR16(x, K16(-0.0f)))));
}

__attribute__((target("avx512f")))
static inline v16 det_tanh16(v16 x) {
    v16 a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7FFFFFFF)));
    v16 e = det_exp16(_mm512_mul_ps(K16(-2.0f), a));
    v16 m = _mm512_div_ps(_mm512_sub_ps(K16(1.0f), e), _mm512_add_ps(K16(1.0f), e));
    __mmask16 isSmall = _mm512_cmp_ps_mask(a, K16(0.0625f), _CMP_LT_OQ);
    if (isSmall) {
        v16 a2 = _mm512_mul_ps(a, a);
        v16 poly = _mm512_add_ps(K16(-1.0f / 3.0f), _mm512_mul_ps(a2, _mm512_sub_ps(K16(2.0f / 15.0f), _mm512_mul_ps(a2, K16(17.0f / 315.0f)))));
        v16 small = _mm512_add_ps(a, _mm512_mul_ps(_mm512_mul_ps(a, a2), poly));
        m = _mm512_mask_blend_ps(isSmall, m, small);
    }
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, K16(0.0f), _CMP_LT_OQ), m, XOR16(m, K16(-0.0f)));
}

// The cell's pointwise forward for one time step (see include/lstm_cell.h), LANES lanes at a
// time: one body for both widths, the activations of that width.
#define CELL_FORWARD(NAME, TARGET, V, LANES, LD, ST, MUL, ADD, SIGMOID, TANH)                       \
__attribute__((target(TARGET)))                                                                  \
static void NAME(float *gates, float *c, float *tc, float *h, long ldh,                           \
                 const float *cprev, long with_prev, long rows, long H, int store_cache) {        \
    static const float zero[LANES] = {0};                                                        \
    for (long j = 0; j < rows; j++) {                                                            \
        float *g = gates + j * 4 * H, *cr = c + j * H, *tr = tc + j * H, *hr = h + j * ldh;      \
        const float *cp = j < with_prev ? cprev + j * H : NULL;                                  \
        for (long u = 0; u < H; u += LANES) {                                                    \
            V i = SIGMOID(LD(g + u)), f = SIGMOID(LD(g + H + u));                                \
            V gg = TANH(LD(g + 2 * H + u)), o = SIGMOID(LD(g + 3 * H + u));                      \
            V cn = ADD(MUL(f, LD(cp ? cp + u : zero)), MUL(i, gg));                              \
            V t = TANH(cn);                                                                      \
            if (store_cache) {                                                                   \
                ST(g + u, i); ST(g + H + u, f); ST(g + 2 * H + u, gg); ST(g + 3 * H + u, o);     \
                ST(tr + u, t);                                                                   \
            }                                                                                    \
            ST(cr + u, cn);                                                                      \
            ST(hr + u, MUL(o, t));                                                               \
        }                                                                                        \
    }                                                                                            \
}
CELL_FORWARD(cell_rows, "avx2", __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_mul_ps, _mm256_add_ps,
             det_sigmoid, det_tanh)
CELL_FORWARD(cell_rows16, "avx512f", __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_mul_ps, _mm512_add_ps,
             det_sigmoid16, det_tanh16)

// The cell's pointwise backward for one time step, `LSTMLayer.pointwiseBackward`'s operations in
// its order (mul, add, sub; no fusion), LANES lanes at a time: one body for both widths.
#define CELL_BACKWARD(NAME, TARGET, V, LANES, LD, ST, MUL, ADD, SUB, SET1)                          \
__attribute__((target(TARGET)))                                                                  \
static void NAME(float *dgates, float *dc, const float *dh, long ldh, const float *gates,         \
                 const float *tc, const float *cprev, float *dcprev, long with_prev,              \
                 const float *zeros, float *sink, long rows, long H) {                            \
    const V one = SET1(1.0f);                                                                    \
    for (long j = 0; j < rows; j++) {                                                            \
        float *dg = dgates + j * 4 * H;                                                          \
        const float *g = gates + j * 4 * H, *t = tc + j * H, *dhr = dh + j * ldh, *dcin = dc + j * H; \
        const float *cp = j < with_prev ? cprev + j * H : zeros;                                 \
        float *dcp = j < with_prev ? dcprev + j * H : sink;                                      \
        for (long u = 0; u < H; u += LANES) {                                                    \
            V i = LD(g + u), f = LD(g + H + u), gg = LD(g + 2 * H + u), o = LD(g + 3 * H + u);   \
            V tv = LD(t + u), dhv = LD(dhr + u);                                                 \
            V dcv = ADD(LD(dcin + u), MUL(MUL(dhv, o), SUB(one, MUL(tv, tv))));                  \
            ST(dg + u, MUL(MUL(dcv, gg), MUL(i, SUB(one, i))));                                  \
            ST(dg + H + u, MUL(MUL(dcv, LD(cp + u)), MUL(f, SUB(one, f))));                      \
            ST(dg + 2 * H + u, MUL(MUL(dcv, i), SUB(one, MUL(gg, gg))));                         \
            ST(dg + 3 * H + u, MUL(MUL(dhv, tv), MUL(o, SUB(one, o))));                          \
            ST(dcp + u, ADD(LD(dcp + u), MUL(dcv, f)));                                          \
        }                                                                                        \
    }                                                                                            \
}
CELL_BACKWARD(cell_back8, "avx2", __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_mul_ps, _mm256_add_ps,
              _mm256_sub_ps, _mm256_set1_ps)
CELL_BACKWARD(cell_back16, "avx512f", __m512, 16, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_mul_ps, _mm512_add_ps,
              _mm512_sub_ps, _mm512_set1_ps)
#endif

// The lanes this CPU's cell runs (16 AVX-512F, 8 AVX2, 0 none), chosen once: AVX-512 only where
// the GEMM runs it too (LOCKSTEP_GEMM_PATH unset or avx512, so forcing lanes16 measures an AVX2
// machine); LOCKSTEP_CELL_PATH=swift|avx2 forces the Swift loop or the 8 lanes.
static int cell_lanes(void) {
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v >= 0) return v;
    v = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    const char *force = getenv("LOCKSTEP_CELL_PATH"), *gemm = getenv("LOCKSTEP_GEMM_PATH");
    if (!(force && strcmp(force, "swift") == 0) && __builtin_cpu_supports("avx2")) {
        v = 8;
        if (__builtin_cpu_supports("avx512f") && !(force && strcmp(force, "avx2") == 0)
            && (!gemm || !*gemm || strcmp(gemm, "avx512") == 0)) v = 16;
    }
#endif
    __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    return v;
}

int lockstep_lstm_cell_available(void) { return cell_lanes() > 0 ? 1 : 0; }

int lockstep_lstm_cell_lanes(void) { return cell_lanes(); }

int lockstep_lstm_cell_forward_lanes(int lanes, float *gates, float *c, float *tc, float *h, long ldh,
                                     const float *cprev, long with_prev, long rows, long hidden, int store_cache) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (lanes == 16 && hidden % 16 == 0 && __builtin_cpu_supports("avx512f")) {
        cell_rows16(gates, c, tc, h, ldh, cprev, with_prev, rows, hidden, store_cache);
        return 1;
    }
    if (lanes >= 8 && hidden % 8 == 0 && __builtin_cpu_supports("avx2")) {
        cell_rows(gates, c, tc, h, ldh, cprev, with_prev, rows, hidden, store_cache);
        return 1;
    }
#endif
    (void)lanes; (void)gates; (void)c; (void)tc; (void)h; (void)ldh; (void)cprev; (void)with_prev; (void)rows; (void)hidden; (void)store_cache;
    return 0;
}

int lockstep_lstm_cell_forward(float *gates, float *c, float *tc, float *h, long ldh,
                               const float *cprev, long with_prev, long rows, long hidden,
                               int store_cache) {
    int lanes = cell_lanes();
    return lanes ? lockstep_lstm_cell_forward_lanes(lanes, gates, c, tc, h, ldh, cprev, with_prev, rows, hidden, store_cache) : 0;
}

int lockstep_lstm_cell_backward_lanes(int lanes, float *dgates, float *dc, const float *dh, long ldh, const float *gates,
                                      const float *tc, const float *cprev, float *dcprev, long with_prev,
                                      const float *zeros, float *sink, long rows, long hidden) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (lanes == 16 && hidden % 16 == 0 && __builtin_cpu_supports("avx512f")) {
        cell_back16(dgates, dc, dh, ldh, gates, tc, cprev, dcprev, with_prev, zeros, sink, rows, hidden);
        return 1;
    }
    if (lanes >= 8 && hidden % 8 == 0 && __builtin_cpu_supports("avx2")) {
        cell_back8(dgates, dc, dh, ldh, gates, tc, cprev, dcprev, with_prev, zeros, sink, rows, hidden);
        return 1;
    }
#endif
    (void)lanes; (void)dgates; (void)dc; (void)dh; (void)ldh; (void)gates; (void)tc; (void)cprev; (void)dcprev;
    (void)with_prev; (void)zeros; (void)sink; (void)rows; (void)hidden;
    return 0;
}

int lockstep_lstm_cell_backward(float *dgates, float *dc, const float *dh, long ldh, const float *gates,
                                const float *tc, const float *cprev, float *dcprev, long with_prev,
                                const float *zeros, float *sink, long rows, long hidden) {
    int lanes = cell_lanes();
    return lanes ? lockstep_lstm_cell_backward_lanes(lanes, dgates, dc, dh, ldh, gates, tc, cprev, dcprev, with_prev,
                                                     zeros, sink, rows, hidden) : 0;
}
