#ifndef LOCKSTEP_PORTABLE_GEMM_H
#define LOCKSTEP_PORTABLE_GEMM_H

#include <stddef.h>

/// Which code path computes the products (the results are the same bits on every one).
enum lockstep_gemm_path {
    LOCKSTEP_GEMM_AUTO = 0,     // the widest this CPU runs
    LOCKSTEP_GEMM_SCALAR = 1,   // fmaf, one element at a time
    LOCKSTEP_GEMM_LANES8 = 2,   // AVX2+FMA, 8 columns per register, 4x8 tiles
    LOCKSTEP_GEMM_LANES16 = 3,  // AVX2+FMA, 16 columns per tile (two registers), 4x16 tiles
    LOCKSTEP_GEMM_NEON = 4,     // ARM64 NEON vfmaq_f32, 16 columns per tile (four 4-lane registers)
    LOCKSTEP_GEMM_NEON8 = 5,    // ARM64 NEON, 8 columns per tile
    LOCKSTEP_GEMM_AVX512 = 6,   // AVX-512F, 32 columns per tile (two 16-lane registers), 4x32 tiles
};

/// Row-major C[m x n] = op(A)[m x k] . op(B)[k x n] (+ C when accumulate), every element
/// summed the same way on every path, CPU and thread: acc = 0; for p = 0..k-1: acc = fma(a, b, acc);
/// then c = acc (or c + acc). Returns the path used.
int lockstep_gemm(int transA, int transB, long m, long n, long k,
                  const float *a, long lda, const float *b, long ldb,
                  int accumulate, float *c, long ldc, int path);

/// The widest path this CPU can run.
int lockstep_gemm_best_path(void);

/// op(B) [k x n] packed once for many products on `path` (a recurrence's every time step):
/// `lockstep_gemm_packed_size(n, k)` floats, filled by `lockstep_gemm_pack_b`, read by
/// `lockstep_gemm_packed` on the same path (B itself is read only on the scalar path). The same
/// bits as `lockstep_gemm`: packing only moves the operands.
long lockstep_gemm_packed_size(long n, long k);
int lockstep_gemm_pack_b(int transB, long n, long k, const float *b, long ldb, float *dst, int path);
int lockstep_gemm_packed(int transA, long m, long n, long k, const float *a, long lda,
                         const float *packed, const float *b, long ldb, int transB,
                         int accumulate, float *c, long ldc, int path);

#endif
