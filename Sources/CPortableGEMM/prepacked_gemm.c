// OpenBLAS's level-3 driver (0.3.21, single thread, the TN case a row-major
// C += A . W^T maps to) replayed over a W packed once. See include/prepacked_gemm.h.
#include "prepacked_gemm.h"
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>

typedef int (*ob_kernel)(long m, long n, long k, float alpha, float *sa, float *sb, float *c, long ldc);
typedef int (*ob_copy)(long m, long n, float *a, long lda, float *b);

// The driver's blocking for the kernels it is known on (param.h, x86-64, 0.3.21).
static struct { ob_kernel kernel; ob_copy incopy, oncopy; long P, Q, um, un; int ready; } ob;

static const long kMaxColumns = 4096;  // below any kernel's GEMM_R: one js panel
static const long kAlignFloats = 1024; // 4 KiB

int lockstep_prepacked_available(const char *core) {
    if (ob.ready) return ob.ready == 1;
    char upper[32] = {0};
    for (int i = 0; core && core[i] && i < 31; i++) upper[i] = (char)toupper((unsigned char)core[i]);
    long P = 0, Q = 0, um = 0, un = 0;
    if (!strcmp(upper, "ZEN") || !strcmp(upper, "HASWELL")) { P = 320; Q = 320; um = 8; un = 4; }
    char name[64];
    ob_kernel kernel = 0; ob_copy incopy = 0, oncopy = 0;
    if (P) {
        strcpy(name, "sgemm_kernel_"); strcat(name, upper); kernel = (ob_kernel)dlsym(RTLD_DEFAULT, name);
        strcpy(name, "sgemm_incopy_"); strcat(name, upper); incopy = (ob_copy)dlsym(RTLD_DEFAULT, name);
        strcpy(name, "sgemm_oncopy_"); strcat(name, upper); oncopy = (ob_copy)dlsym(RTLD_DEFAULT, name);
    }
    if (!kernel || !incopy || !oncopy) { ob.ready = 2; return 0; }
    ob.kernel = kernel; ob.incopy = incopy; ob.oncopy = oncopy;
    ob.P = P; ob.Q = Q; ob.um = um; ob.un = un; ob.ready = 1;
    return 1;
}

// The driver's depth blocks: min_l for the block starting at ls.
static long depth_block(long k, long ls) {
    long min_l = k - ls;
    if (min_l >= ob.Q * 2) return ob.Q;
    if (min_l > ob.Q) return ((min_l / 2 + ob.um - 1) / ob.um) * ob.um;
    return min_l;
}

// The driver's row blocks of the packed operand: min_i for the block starting at is.
static long row_block(long m, long is) {
    long min_i = m - is;
    if (min_i >= ob.P * 2) return ob.P;
    if (min_i > ob.P) return ((min_i / 2 + ob.um - 1) / ob.um) * ob.um;
    return min_i;
}

static long round_up(long x) { return (x + kAlignFloats - 1) / kAlignFloats * kAlignFloats; }

long lockstep_prepack_size(long n, long k) {
    long total = 0;
    for (long ls = 0, min_l; ls < k; ls += min_l) {
        min_l = depth_block(k, ls);
        for (long is = 0, min_i; is < n; is += min_i) {
            min_i = row_block(n, is);
            total += round_up(min_l * (min_i + ob.um));
        }
    }
    return total;
}

void lockstep_prepack_w(const float *w, long ldw, long n, long k, float *packed) {
    for (long ls = 0, min_l; ls < k; ls += min_l) {
        min_l = depth_block(k, ls);
        for (long is = 0, min_i; is < n; is += min_i) {
            min_i = row_block(n, is);
            ob.incopy(min_l, min_i, (float *)w + ls + is * ldw, ldw, packed);
            packed += round_up(min_l * (min_i + ob.um));
        }
    }
}

static _Thread_local float *scratch;
static _Thread_local long scratchFloats;

int lockstep_prepacked_gemm(long m, long n, long k, const float *a, long lda,
                            const float *packed, float *c, long ldc) {
    // In OpenBLAS's column-major terms: C' [n x m] += W' . A', W' the packed operand.
    if (m > kMaxColumns) return 0;
    if (m == 0 || n == 0 || k == 0) return 1;
    long need = k * (m + ob.un) + 64;
    if (need > scratchFloats) {
        free(scratch);
        if (posix_memalign((void **)&scratch, 4096, (size_t)need * sizeof(float)) != 0) { scratch = 0; scratchFloats = 0; return 0; }
        scratchFloats = need;
    }
    const float *block = packed;
    for (long ls = 0, min_l; ls < k; ls += min_l) {
        min_l = depth_block(k, ls);
        long min_i = row_block(n, 0);
        for (long jjs = 0, min_jj; jjs < m; jjs += min_jj) {
            min_jj = m - jjs;
            if (min_jj >= 3 * ob.un) min_jj = 3 * ob.un;
            else if (min_jj > ob.un) min_jj = ob.un;
            float *sb = scratch + min_l * jjs;
            ob.oncopy(min_l, min_jj, (float *)a + ls + jjs * lda, lda, sb);
            ob.kernel(min_i, min_jj, min_l, 1.0f, (float *)block, sb, c + jjs * ldc, ldc);
        }
        block += round_up(min_l * (min_i + ob.um));
        for (long is = min_i; is < n; is += min_i) {
            min_i = row_block(n, is);
            ob.kernel(min_i, m, min_l, 1.0f, (float *)block, scratch, c + is + 0 * ldc, ldc);
            block += round_up(min_l * (min_i + ob.um));
        }
    }
    return 1;
}
