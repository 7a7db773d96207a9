// The LSTM cell's pointwise forward and backward, operation for operation as Numerics.detExp,
// detSigmoid, detTanh and LSTMLayer.pointwiseForward/pointwiseBackward (IEEE + - * / and integer
// bit moves, nothing fused: built with -ffp-contract=off), in scalar C, on many inputs: one line
// per case with a 64-bit FNV-1a hash of the outputs' bytes. On x86-64 the AVX2 and AVX-512 cell
// kernels must give the same bytes as this scalar mirror (else exit 1); scripts/check-arm64 then
// compares the lines of the x86-64 and ARM64 builds: the cell's arithmetic, in Swift's order,
// gives the same bits on both.
#include "lstm_cell.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float bits_float(uint32_t b) { float f; memcpy(&f, &b, 4); return f; }
static uint32_t float_bits(float f) { uint32_t b; memcpy(&b, &f, 4); return b; }

static float det_exp(float x) {
    float l = x > -87.0f ? x : -87.0f;          // NaN and x <= -87 become -87
    float xc = l > 88.0f ? 88.0f : l;
    float t = xc * 1.44269504f;
    float k = t + 12582912.0f;
    float n = k - 12582912.0f;
    float r = (xc - n * 0.693145751953125f) - n * 1.428606765330187e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * bits_float((float_bits(k) - 0x4B400000u + 127u) << 23);
}
static float det_sigmoid(float x) { return 1.0f / (1.0f + det_exp(-x)); }
static float det_tanh(float x) {
    float a = bits_float(float_bits(x) & 0x7FFFFFFFu);
    float e = det_exp(-2.0f * a);
    float big = (1.0f - e) / (1.0f + e);
    float a2 = a * a;
    float poly = -1.0f / 3.0f + a2 * (2.0f / 15.0f - a2 * (17.0f / 315.0f));
    float small = a + a * a2 * poly;
    float m = a < 0.0625f ? small : big;
    return x < 0.0f ? -m : m;
}

// rows j < with_prev continue row j of cprev; the others start from zero state.
static void forward(float *g, float *c, float *tc, float *h, long ldh, const float *cprev, long with_prev, long rows, long H) {
    for (long j = 0; j < rows; j++)
        for (long u = 0; u < H; u++) {
            float *gr = g + j * 4 * H;
            float i = det_sigmoid(gr[u]), f = det_sigmoid(gr[H + u]), gg = det_tanh(gr[2 * H + u]), o = det_sigmoid(gr[3 * H + u]);
            float cp = j < with_prev ? cprev[j * H + u] : 0.0f;
            float cn = f * cp + i * gg, t = det_tanh(cn);
            gr[u] = i; gr[H + u] = f; gr[2 * H + u] = gg; gr[3 * H + u] = o;
            c[j * H + u] = cn; tc[j * H + u] = t; h[j * ldh + u] = o * t;
        }
}

static void backward(float *dg, float *dc, const float *dh, long ldh, const float *g, const float *tc, const float *cprev,
                     float *dcprev, long with_prev, float *sink, long rows, long H) {
    for (long j = 0; j < rows; j++)
        for (long u = 0; u < H; u++) {
            const float *gr = g + j * 4 * H;
            float i = gr[u], f = gr[H + u], gg = gr[2 * H + u], o = gr[3 * H + u], t = tc[j * H + u], dhv = dh[j * ldh + u];
            int has = j < with_prev;
            float cp = has ? cprev[j * H + u] : 0.0f;
            float *dcp = has ? dcprev + j * H + u : sink + u;
            float dcv = dc[j * H + u] + dhv * o * (1.0f - t * t);
            float *d = dg + j * 4 * H;
            d[u] = dcv * gg * (i * (1.0f - i));
            d[H + u] = dcv * cp * (f * (1.0f - f));
            d[2 * H + u] = dcv * i * (1.0f - gg * gg);
            d[3 * H + u] = dhv * t * (o * (1.0f - o));
            *dcp = *dcp + dcv * f;
        }
}

static uint64_t state = 0x9E3779B97F4A7C15ull;
static float next_float(void) {  // mixed signs and magnitudes: tiny (the tanh series), usual, saturating
    state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
    uint64_t r = state * 0x2545F4914F6CDD1Dull;
    float u = (float)(r >> 40) / (float)(1u << 24) * 2.0f - 1.0f;
    float scale = (r & 3) == 0 ? 0.05f : (r & 3) == 1 ? 1.0f : (r & 3) == 2 ? 6.0f : 120.0f;
    return u * scale;
}
static void fill(float *p, long n) { for (long i = 0; i < n; i++) p[i] = next_float(); }
static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) { h ^= b[i]; h *= 0x100000001b3ull; }
    return h;
}
#define SAME(a, b, n) (memcmp((a), (b), (size_t)(n) * sizeof(float)) == 0)

int main(void) {
    const long hs[] = {16, 48, 64, 128}, rows = 6, with_prev = 4, ldh = 160;
    int kernels = 0, cases = 0;
    for (int rep = 0; rep < 25; rep++)
        for (size_t hi = 0; hi < sizeof hs / sizeof *hs; hi++) {
            long H = hs[hi], G = 4 * H;
            float *g0 = malloc(sizeof(float) * rows * G), *cprev = malloc(sizeof(float) * rows * H);
            float *g = malloc(sizeof(float) * rows * G), *c = malloc(sizeof(float) * rows * H), *tc = malloc(sizeof(float) * rows * H);
            float *h = calloc((size_t)(rows * ldh), sizeof(float)), *dh = malloc(sizeof(float) * rows * ldh);
            float *dc = malloc(sizeof(float) * rows * H), *dcprev0 = malloc(sizeof(float) * rows * H);
            float *dg = malloc(sizeof(float) * rows * G), *dcprev = malloc(sizeof(float) * rows * H), *sink = calloc((size_t)H, sizeof(float));
            fill(g0, rows * G); fill(cprev, rows * H); fill(dh, rows * ldh); fill(dc, rows * H); fill(dcprev0, rows * H);
            memcpy(g, g0, sizeof(float) * rows * G);
            forward(g, c, tc, h, ldh, cprev, with_prev, rows, H);
            memcpy(dcprev, dcprev0, sizeof(float) * rows * H);
            backward(dg, dc, dh, ldh, g, tc, cprev, dcprev, with_prev, sink, rows, H);
            // Where the CPU runs them, the vector kernels must give the scalar mirror's bytes.
            for (int lanes = 8; lanes <= 16; lanes += 8) {
                float *g2 = malloc(sizeof(float) * rows * G), *c2 = malloc(sizeof(float) * rows * H), *tc2 = malloc(sizeof(float) * rows * H);
                float *h2 = calloc((size_t)(rows * ldh), sizeof(float)), *dg2 = malloc(sizeof(float) * rows * G);
                float *dcprev2 = malloc(sizeof(float) * rows * H), *sink2 = calloc((size_t)H, sizeof(float));
                memcpy(g2, g0, sizeof(float) * rows * G);
                memcpy(dcprev2, dcprev0, sizeof(float) * rows * H);
                float *zeros = calloc((size_t)H, sizeof(float));
                if (lockstep_lstm_cell_forward_lanes(lanes, g2, c2, tc2, h2, ldh, cprev, with_prev, rows, H, 1) == 1) {
                    if (!SAME(g, g2, rows * G) || !SAME(c, c2, rows * H) || !SAME(tc, tc2, rows * H) || !SAME(h, h2, rows * ldh)) {
                        fprintf(stderr, "the %d-lane cell forward differs from the scalar mirror (H %ld)\n", lanes, H); return 1;
                    }
                    kernels++;
                }
                if (lockstep_lstm_cell_backward_lanes(lanes, dg2, dc, dh, ldh, g, tc, cprev, dcprev2, with_prev, zeros, sink2, rows, H) == 1) {
                    if (!SAME(dg, dg2, rows * G) || !SAME(dcprev, dcprev2, rows * H) || !SAME(sink, sink2, H)) {
                        fprintf(stderr, "the %d-lane cell backward differs from the scalar mirror (H %ld)\n", lanes, H); return 1;
                    }
                    kernels++;
                }
                free(g2); free(c2); free(tc2); free(h2); free(dg2); free(dcprev2); free(sink2); free(zeros);
                memset(sink, 0, sizeof(float) * H);
                memcpy(dcprev, dcprev0, sizeof(float) * rows * H);
                backward(dg, dc, dh, ldh, g, tc, cprev, dcprev, with_prev, sink, rows, H);
            }
            uint64_t fw = 0xcbf29ce484222325ull, bw = 0xcbf29ce484222325ull;
            fw = fnv(fw, g, sizeof(float) * rows * G); fw = fnv(fw, c, sizeof(float) * rows * H);
            fw = fnv(fw, tc, sizeof(float) * rows * H); fw = fnv(fw, h, sizeof(float) * rows * ldh);
            bw = fnv(bw, dg, sizeof(float) * rows * G); bw = fnv(bw, dcprev, sizeof(float) * rows * H); bw = fnv(bw, sink, sizeof(float) * H);
            printf("rep %d H %ld forward %016llx backward %016llx\n", rep, H, (unsigned long long)fw, (unsigned long long)bw);
            cases++;
            free(g0); free(cprev); free(g); free(c); free(tc); free(h); free(dh); free(dc); free(dcprev0); free(dg); free(dcprev); free(sink);
        }
    fprintf(stderr, "%d cell cases (%d vector-kernel runs equal to the scalar mirror)\n", cases, kernels);
    return 0;
}
