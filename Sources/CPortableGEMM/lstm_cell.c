// The LSTM cell's pointwise forward in AVX2 and AVX-512: see include/lstm_cell.h. Built with
// -ffp-contract=off and without the FMA target, so no multiply-add is ever fused.
#include "lstm_cell.h"
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

// The few operations the activations need, per width, named w8_… (AVX2) and w16_… (AVX-512F),
// so one body (ACTIVATIONS) serves both. Every operation is per lane (IEEE arithmetic; sign and
// exponent moves in the integer unit), so the widths give the same bits. LANE_OPS spells them
// from the width's intrinsic prefix P and integer suffix SI; only compares and blends differ
// (a vector mask against __mmask16). blend(m, a, b) is b where m holds, else a.
#define AVX2_FN __attribute__((target("avx2"), always_inline)) static inline
#define AVX512_FN __attribute__((target("avx512f"), always_inline)) static inline
#define LANE_OPS(W, FN, V, IV, P, SI)                                                                                 \
typedef V W##_v;                                                                                                      \
FN W##_v W##_k(float x) { return P##set1_ps(x); }                                                                     \
FN W##_v W##_ld(const float *p) { return P##loadu_ps(p); }                                                            \
FN void W##_st(float *p, W##_v v) { P##storeu_ps(p, v); }                                                             \
FN W##_v W##_add(W##_v a, W##_v b) { return P##add_ps(a, b); }                                                       \
FN W##_v W##_sub(W##_v a, W##_v b) { return P##sub_ps(a, b); }                                                       \
FN W##_v W##_mul(W##_v a, W##_v b) { return P##mul_ps(a, b); }                                                       \
FN W##_v W##_div(W##_v a, W##_v b) { return P##div_ps(a, b); }                                                       \
FN W##_v W##_neg(W##_v a) { return P##cast##SI##_ps(P##xor_##SI(P##castps_##SI(a), P##set1_epi32((int)0x80000000))); } \
FN W##_v W##_abs(W##_v a) { return P##cast##SI##_ps(P##and_##SI(P##castps_##SI(a), P##set1_epi32(0x7FFFFFFF))); }     \
/* 2^n from k = n + 1.5·2^23 (the round-to-integer trick's sum): n's bits moved into the exponent. */                \
FN W##_v W##_pow2(W##_v k) {                                                                                          \
    IV n = P##sub_epi32(P##castps_##SI(k), P##set1_epi32(0x4B400000));                                               \
    return P##cast##SI##_ps(P##slli_epi32(P##add_epi32(n, P##set1_epi32(127)), 23));                                  \
}
LANE_OPS(w8, AVX2_FN, __m256, __m256i, _mm256_, si256)
LANE_OPS(w16, AVX512_FN, __m512, __m512i, _mm512_, si512)
typedef __m256 w8_mask;
AVX2_FN w8_mask w8_gt(w8_v a, w8_v b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
AVX2_FN w8_mask w8_lt(w8_v a, w8_v b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
AVX2_FN w8_v w8_blend(w8_mask m, w8_v a, w8_v b) { return _mm256_blendv_ps(a, b, m); }
AVX2_FN int w8_any(w8_mask m) { return _mm256_movemask_ps(m) != 0; }
typedef __mmask16 w16_mask;
AVX512_FN w16_mask w16_gt(w16_v a, w16_v b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
AVX512_FN w16_mask w16_lt(w16_v a, w16_v b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
AVX512_FN w16_v w16_blend(w16_mask m, w16_v a, w16_v b) { return _mm512_mask_blend_ps(m, a, b); }
AVX512_FN int w16_any(w16_mask m) { return m != 0; }

// Numerics.detExp, detSigmoid and detTanh, operation for operation (the constants are theirs;
// CellKernelTests checks every lane against Swift's values).
#define ACTIVATIONS(W, FN)                                                                                            \
FN W##_v W##_det_exp(W##_v x) {                                                                                       \
    /* clamp: NaN and x <= -87 become -87 (as IEEE maximum does), then x > 88 becomes 88 */                           \
    W##_v lo = W##_k(-87.0f), hi = W##_k(88.0f);                                                                      \
    W##_v l = W##_blend(W##_gt(x, lo), lo, x);                                                                        \
    W##_v xc = W##_blend(W##_gt(l, hi), l, hi);                                                                       \
    W##_v k = W##_add(W##_mul(xc, W##_k(1.44269504f)), W##_k(12582912.0f));                                           \
    W##_v n = W##_sub(k, W##_k(12582912.0f));                                                                         \
    W##_v r = W##_sub(W##_sub(xc, W##_mul(n, W##_k(0.693145751953125f))),                                             \
                      W##_mul(n, W##_k(1.428606765330187e-6f)));                                                      \
    static const float c[7] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};            \
    W##_v p = W##_k(1.0f / 5040.0f);                                                                                  \
    for (int i = 0; i < 7; i++) p = W##_add(W##_mul(p, r), W##_k(c[i]));                                              \
    return W##_mul(p, W##_pow2(k));                                                                                   \
}                                                                                                                     \
FN W##_v W##_det_sigmoid(W##_v x) {                                                                                   \
    return W##_div(W##_k(1.0f), W##_add(W##_k(1.0f), W##_det_exp(W##_neg(x))));                                       \
}                                                                                                                     \
FN W##_v W##_det_tanh(W##_v x) {                                                                                      \
    W##_v a = W##_abs(x);                                                                                             \
    W##_v e = W##_det_exp(W##_mul(W##_k(-2.0f), a));                                                                  \
    W##_v m = W##_div(W##_sub(W##_k(1.0f), e), W##_add(W##_k(1.0f), e));                                              \
    W##_mask isSmall = W##_lt(a, W##_k(0.0625f));                                                                     \
    if (W##_any(isSmall)) {  /* the series only where some lane needs it (the same blend) */                          \
        W##_v a2 = W##_mul(a, a);                                                                                     \
        W##_v poly = W##_add(W##_k(-1.0f / 3.0f),                                                                     \
                             W##_mul(a2, W##_sub(W##_k(2.0f / 15.0f), W##_mul(a2, W##_k(17.0f / 315.0f)))));          \
        m = W##_blend(isSmall, m, W##_add(a, W##_mul(W##_mul(a, a2), poly)));                                         \
    }                                                                                                                 \
    return W##_blend(W##_lt(x, W##_k(0.0f)), m, W##_neg(m));                                                          \
}
ACTIVATIONS(w8, AVX2_FN)
ACTIVATIONS(w16, AVX512_FN)

// The cell's pointwise forward for one time step (see include/lstm_cell.h), LANES lanes at a
// time: one body for both widths, the activations of that width.
#define CELL_FORWARD(NAME, W, TARGET, LANES)                                                                          \
__attribute__((target(TARGET)))                                                                                       \
static void NAME(float *gates, float *c, float *tc, float *h, long ldh,                                               \
                 const float *cprev, long with_prev, long rows, long H, int store_cache) {                            \
    static const float zero[LANES] = {0};                                                                             \
    for (long j = 0; j < rows; j++) {                                                                                 \
        float *g = gates + j * 4 * H, *cr = c + j * H, *tr = tc + j * H, *hr = h + j * ldh;                           \
        const float *cp = j < with_prev ? cprev + j * H : NULL;                                                       \
        for (long u = 0; u < H; u += LANES) {                                                                         \
            W##_v i = W##_det_sigmoid(W##_ld(g + u)), f = W##_det_sigmoid(W##_ld(g + H + u));                         \
            W##_v gg = W##_det_tanh(W##_ld(g + 2 * H + u)), o = W##_det_sigmoid(W##_ld(g + 3 * H + u));               \
            W##_v cn = W##_add(W##_mul(f, W##_ld(cp ? cp + u : zero)), W##_mul(i, gg));                               \
            W##_v t = W##_det_tanh(cn);                                                                               \
            if (store_cache) {                                                                                        \
                W##_st(g + u, i); W##_st(g + H + u, f); W##_st(g + 2 * H + u, gg); W##_st(g + 3 * H + u, o);          \
                W##_st(tr + u, t);                                                                                    \
            }                                                                                                         \
            W##_st(cr + u, cn);                                                                                       \
            W##_st(hr + u, W##_mul(o, t));                                                                            \
        }                                                                                                             \
    }                                                                                                                 \
}
CELL_FORWARD(cell_rows, w8, "avx2", 8)
CELL_FORWARD(cell_rows16, w16, "avx512f", 16)

// The cell's pointwise backward for one time step, `LSTMLayer.pointwiseBackward`'s operations in
// its order (mul, add, sub; no fusion), LANES lanes at a time: one body for both widths.
#define CELL_BACKWARD(NAME, W, TARGET, LANES)                                                                         \
__attribute__((target(TARGET)))                                                                                       \
static void NAME(float *dgates, float *dc, const float *dh, long ldh, const float *gates,                             \
                 const float *tc, const float *cprev, float *dcprev, long with_prev,                                  \
                 const float *zeros, float *sink, long rows, long H) {                                                \
    const W##_v one = W##_k(1.0f);                                                                                    \
    for (long j = 0; j < rows; j++) {                                                                                 \
        float *dg = dgates + j * 4 * H;                                                                               \
        const float *g = gates + j * 4 * H, *t = tc + j * H, *dhr = dh + j * ldh, *dcin = dc + j * H;                 \
        const float *cp = j < with_prev ? cprev + j * H : zeros;                                                      \
        float *dcp = j < with_prev ? dcprev + j * H : sink;                                                           \
        for (long u = 0; u < H; u += LANES) {                                                                         \
            W##_v i = W##_ld(g + u), f = W##_ld(g + H + u), gg = W##_ld(g + 2 * H + u), o = W##_ld(g + 3 * H + u);    \
            W##_v tv = W##_ld(t + u), dhv = W##_ld(dhr + u);                                                          \
            W##_v dcv = W##_add(W##_ld(dcin + u), W##_mul(W##_mul(dhv, o), W##_sub(one, W##_mul(tv, tv))));           \
            W##_st(dg + u, W##_mul(W##_mul(dcv, gg), W##_mul(i, W##_sub(one, i))));                                   \
            W##_st(dg + H + u, W##_mul(W##_mul(dcv, W##_ld(cp + u)), W##_mul(f, W##_sub(one, f))));                   \
            W##_st(dg + 2 * H + u, W##_mul(W##_mul(dcv, i), W##_sub(one, W##_mul(gg, gg))));                          \
            W##_st(dg + 3 * H + u, W##_mul(W##_mul(dhv, tv), W##_mul(o, W##_sub(one, o))));                           \
            W##_st(dcp + u, W##_add(W##_ld(dcp + u), W##_mul(dcv, f)));                                               \
        }                                                                                                             \
    }                                                                                                                 \
}
CELL_BACKWARD(cell_back8, w8, "avx2", 8)
CELL_BACKWARD(cell_back16, w16, "avx512f", 16)
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
