// The LSTM cell's pointwise forward in AVX2: see include/lstm_cell.h. Built with
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

__attribute__((target("avx2")))
static void cell_rows(float *gates, float *c, float *tc, float *h, long ldh,
                      const float *cprev, long with_prev, long rows, long H, int store_cache) {
    static const float zero8[8] = {0};
    for (long j = 0; j < rows; j++) {
        float *g = gates + j * 4 * H, *cr = c + j * H, *tr = tc + j * H, *hr = h + j * ldh;
        const float *cp = j < with_prev ? cprev + j * H : NULL;
        for (long u = 0; u < H; u += 8) {
            v8 i = det_sigmoid(_mm256_loadu_ps(g + u));
            v8 f = det_sigmoid(_mm256_loadu_ps(g + H + u));
            v8 gg = det_tanh(_mm256_loadu_ps(g + 2 * H + u));
            v8 o = det_sigmoid(_mm256_loadu_ps(g + 3 * H + u));
            v8 cpv = _mm256_loadu_ps(cp ? cp + u : zero8);
            v8 cn = _mm256_add_ps(_mm256_mul_ps(f, cpv), _mm256_mul_ps(i, gg));
            v8 t = det_tanh(cn);
            if (store_cache) {
                _mm256_storeu_ps(g + u, i); _mm256_storeu_ps(g + H + u, f);
                _mm256_storeu_ps(g + 2 * H + u, gg); _mm256_storeu_ps(g + 3 * H + u, o);
                _mm256_storeu_ps(tr + u, t);
            }
            _mm256_storeu_ps(cr + u, cn);
            _mm256_storeu_ps(hr + u, _mm256_mul_ps(o, t));
        }
    }
}
#endif

int lockstep_lstm_cell_available(void) {
#if defined(__x86_64__)
    const char *force = getenv("LOCKSTEP_CELL_PATH");
    if (force && strcmp(force, "swift") == 0) return 0;
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

int lockstep_lstm_cell_forward(float *gates, float *c, float *tc, float *h, long ldh,
                               const float *cprev, long with_prev, long rows, long hidden,
                               int store_cache) {
#if defined(__x86_64__)
    if (hidden % 8 != 0 || !__builtin_cpu_supports("avx2")) return 0;
    cell_rows(gates, c, tc, h, ldh, cprev, with_prev, rows, hidden, store_cache);
    return 1;
#else
    (void)gates; (void)c; (void)tc; (void)h; (void)ldh; (void)cprev; (void)with_prev; (void)rows; (void)hidden; (void)store_cache;
    return 0;
#endif
}
