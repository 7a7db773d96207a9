// The dropout masks (lockstep_dropout_mask: Philox-4x32-10, eight blocks at a time in AVX2 on
// x86-64, one at a time elsewhere) on many keys, counters, lengths and rates, one line each: the
// case and a 64-bit FNV-1a hash of the mask's bytes. scripts/check-arm64 builds this for x86-64
// and for ARM64 (under qemu-aarch64) and compares the lines: the same masks everywhere.
#include "dropout_mask.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}

int main(void) {
    // Lengths around the 32-float AVX2 step and the 4-float block, keys and counters with high
    // bits set (ids past 2^31, a seed's high word), rates from none to nearly all.
    const long counts[] = {1, 3, 4, 5, 31, 32, 33, 63, 64, 100, 128, 257, 1000};
    const uint64_t keys[] = {0, 1, 0x00000001FFFFFFFFull, 0xDEADBEEFCAFEBABEull, UINT64_MAX};
    const uint32_t ctr[][4] = {{0, 0, 0, 0}, {3, 1, 7, 0}, {0x80000000u, 2, 0xFFFFFFFFu, 1u << 20}, {9, 0x7FFFFFFFu, 5, 12}};
    const float rates[] = {0.0f, 0.1f, 0.3f, 0.5f, 0.999f};
    float *mask = malloc(1000 * sizeof(float));
    long cases = 0;
    for (size_t a = 0; a < sizeof counts / sizeof *counts; a++)
        for (size_t b = 0; b < sizeof keys / sizeof *keys; b++)
            for (size_t c = 0; c < sizeof ctr / sizeof *ctr; c++)
                for (size_t d = 0; d < sizeof rates / sizeof *rates; d++) {
                    float p = rates[d], scale = 1.0f / (1.0f - p);
                    lockstep_dropout_mask(mask, counts[a], keys[b], ctr[c][0], ctr[c][1], ctr[c][2], ctr[c][3], p, scale);
                    printf("n=%ld key=%016llx ctr=%u,%u,%u,%u p=%g %016llx\n", counts[a], (unsigned long long)keys[b],
                           ctr[c][0], ctr[c][1], ctr[c][2], ctr[c][3], (double)p,
                           (unsigned long long)fnv1a(mask, (size_t)counts[a] * sizeof(float)));
                    cases++;
                }
    fprintf(stderr, "%ld masks\n", cases);
    free(mask);
    return 0;
}
