#ifndef LOCKSTEP_PREPACKED_GEMM_H
#define LOCKSTEP_PREPACKED_GEMM_H

/// OpenBLAS's own single-threaded SGEMM driver (driver/level3/level3.c, 0.3.21), replayed
/// with OpenBLAS's own exported kernel and copy routines, for the one product a recurrence
/// repeats every time step: row-major C[m x n] += A[m x k] . W^T with W [n x k] fixed.
///
/// cblas_sgemm packs W again on every call; here W is packed once per sequence batch and
/// reused. The blocks, the packed layouts and every kernel call are the driver's, so each
/// element of C gets the same operations as from cblas_sgemm: the same bits. The caller
/// checks that (BLAS.swift compares both on the real shapes before it uses this path) and
/// falls back to cblas_sgemm on any other kernel, thread count or shape.

/// 1 when the kernel named `core` (OpenBLAS's corename, e.g. "Zen") has blocking parameters
/// known here and its routines resolve in the loaded OpenBLAS.
int lockstep_prepacked_available(const char *core);

/// Floats needed by lockstep_prepack_w for W [n x k] (blocks aligned to 4 KiB).
long lockstep_prepack_size(long n, long k);

/// Packs W [n x k] (row stride ldw) into `packed` (aligned to 4 KiB, lockstep_prepack_size floats).
void lockstep_prepack_w(const float *w, long ldw, long n, long k, float *packed);

/// Row-major C[m x n] += A[m x k] . W^T with W packed by lockstep_prepack_w. Uses a
/// thread-local scratch for A's packed rows. Returns 0 (nothing done) when m is larger
/// than the driver's single column panel that this replay covers.
int lockstep_prepacked_gemm(long m, long n, long k, const float *a, long lda,
                            const float *packed, float *c, long ldc);

#endif
