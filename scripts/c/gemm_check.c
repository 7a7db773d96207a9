// The portable GEMM's products on many shapes, one line each: the case and a 64-bit FNV-1a hash
// of the output's bytes. scripts/check-arm64 builds this for x86-64 (every path this CPU runs)
// and for ARM64 (under qemu-aarch64) and compares the lines: the same bits everywhere. Each
// product is also computed with op(B) packed first (lockstep_gemm_pack_b, _packed: what a
// recurrence does), which must give the same bytes, else the harness exits 1.
// Usage: gemm_check PATH   (0 auto, 1 scalar, 2 lanes8, 3 lanes16; a path this CPU lacks runs scalar)
#include "portable_gemm.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// A fixed stream of floats of mixed sign and magnitude (xorshift64*), so sums round differently
// in every order: a reordered chain cannot hide.
static uint64_t state = 0x9E3779B97F4A7C15ull;
static float next_float(void) {
    state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
    uint64_t r = state * 0x2545F4914F6CDD1Dull;
    float u = (float)(r >> 40) / (float)(1u << 24);          // [0, 1)
    float scale = (r & 3) == 0 ? 1e-3f : (r & 3) == 1 ? 1.0f : (r & 3) == 2 ? 37.0f : 1e4f;
    return (u - 0.5f) * scale;
}

static uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}

int main(int argc, char **argv) {
    int path = argc > 1 ? atoi(argv[1]) : 0;
    const long ms[] = {1, 2, 3, 4, 5, 7, 16, 17, 33};
    const long ns[] = {1, 3, 7, 8, 9, 15, 16, 17, 24, 31, 40, 64, 65};
    const long ks[] = {1, 2, 3, 8, 9, 100, 255, 256, 257, 513};
    int cases = 0, used = -1;
    for (size_t mi = 0; mi < sizeof ms / sizeof *ms; mi++)
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++)
    for (size_t ki = 0; ki < sizeof ks / sizeof *ks; ki++)
    for (int tA = 0; tA < 2; tA++)
    for (int tB = 0; tB < 2; tB++)
    for (int acc = 0; acc < 2; acc++) {
        long m = ms[mi], n = ns[ni], k = ks[ki];
        // Leading dimensions one wider than needed: strides are honoured.
        long lda = (tA ? m : k) + 1, ldb = (tB ? k : n) + 1, ldc = n + 2;
        long arows = tA ? k : m, brows = tB ? n : k;
        float *a = malloc(sizeof(float) * (size_t)(arows * lda));
        float *b = malloc(sizeof(float) * (size_t)(brows * ldb));
        float *c = malloc(sizeof(float) * (size_t)(m * ldc));
        for (long i = 0; i < arows * lda; i++) a[i] = next_float();
        for (long i = 0; i < brows * ldb; i++) b[i] = next_float();
        for (long i = 0; i < m * ldc; i++) c[i] = next_float();
        float *c2 = malloc(sizeof(float) * (size_t)(m * ldc));
        memcpy(c2, c, sizeof(float) * (size_t)(m * ldc));
        used = lockstep_gemm(tA, tB, m, n, k, a, lda, b, ldb, acc, c, ldc, path);
        float *packed = malloc(sizeof(float) * (size_t)lockstep_gemm_packed_size(n, k));
        lockstep_gemm_pack_b(tB, n, k, b, ldb, packed, path);
        lockstep_gemm_packed(tA, m, n, k, a, lda, packed, b, ldb, tB, acc, c2, ldc, path);
        if (memcmp(c, c2, sizeof(float) * (size_t)(m * ldc)) != 0) {
            fprintf(stderr, "packed product differs: m=%ld n=%ld k=%ld tA=%d tB=%d acc=%d path %d\n", m, n, k, tA, tB, acc, path);
            return 1;
        }
        printf("m=%ld n=%ld k=%ld tA=%d tB=%d acc=%d %016llx\n", m, n, k, tA, tB, acc,
               (unsigned long long)fnv1a(c, sizeof(float) * (size_t)(m * ldc)));
        free(a); free(b); free(c); free(c2); free(packed);
        cases++;
    }
    fprintf(stderr, "%d products on path %d\n", cases, used);
    return 0;
}
