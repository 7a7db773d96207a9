// Philox-4x32-10 for dropout masks: see include/dropout_mask.h.
#include "dropout_mask.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static inline float mask_value(uint32_t bits, float p, float scale) {
    return (float)(bits >> 8) * (1.0f / 16777216.0f) < p ? 0.0f : scale;
}

static void block_scalar(uint32_t r[4], uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += PHILOX_W0; k1 += PHILOX_W1;
    }
    r[0] = c0; r[1] = c1; r[2] = c2; r[3] = c3;
}

#if defined(__x86_64__)
#include <immintrin.h>
typedef __m256i v8u;

// (hi, lo) of the 32x32-bit products of `m` and each lane: even lanes by one multiply, odd by another.
__attribute__((target("avx2")))
static inline void mulhilo8(v8u m, v8u x, v8u *hi, v8u *lo) {
    v8u even = _mm256_mul_epu32(m, x);
    v8u odd = _mm256_mul_epu32(m, _mm256_srli_epi64(x, 32));
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// Eight blocks, counters c3 | (first + 0..7), into mask[0..32).
__attribute__((target("avx2")))
static void blocks8(float *mask, uint64_t key, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t first,
                    float p, float scale) {
    v8u x0 = _mm256_set1_epi32((int)c0), x1 = _mm256_set1_epi32((int)c1), x2 = _mm256_set1_epi32((int)c2);
    v8u x3 = _mm256_or_si256(_mm256_set1_epi32((int)c3),
                             _mm256_add_epi32(_mm256_set1_epi32((int)first), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    const v8u m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    for (int round = 0; round < 10; round++) {
        v8u hi0, lo0, hi1, lo1;
        mulhilo8(m0, x0, &hi0, &lo0);
        mulhilo8(m1, x2, &hi1, &lo1);
        x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32((int)k0));
        x1 = lo1;
        x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32((int)k1));
        x3 = lo0;
        k0 += PHILOX_W0; k1 += PHILOX_W1;
    }
    // bits >> 8 converted (exact: 24 bits), scaled by 2⁻²⁴ (exact), compared with p.
    const __m256 unit = _mm256_set1_ps(1.0f / 16777216.0f), pv = _mm256_set1_ps(p), sv = _mm256_set1_ps(scale);
    float out[4][8];
    v8u words[4] = {x0, x1, x2, x3};
    for (int q = 0; q < 4; q++) {
        __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(words[q], 8)), unit);
        _mm256_storeu_ps(out[q], _mm256_andnot_ps(_mm256_cmp_ps(u, pv, _CMP_LT_OQ), sv));
    }
    for (int b = 0; b < 8; b++)
        for (int q = 0; q < 4; q++) mask[4 * b + q] = out[q][b];
}
#endif

void lockstep_dropout_mask(float *mask, long count, uint64_t key,
                           uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, float p, float scale) {
    long u = 0;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2"))
        for (; u + 32 <= count; u += 32) blocks8(mask + u, key, c0, c1, c2, c3, (uint32_t)(u / 4), p, scale);
#endif
    for (; u < count; u += 4) {
        uint32_t r[4];
        block_scalar(r, key, c0, c1, c2, c3 | (uint32_t)(u / 4));
        for (long q = 0; q < 4 && u + q < count; q++) mask[u + q] = mask_value(r[q], p, scale);
    }
}
