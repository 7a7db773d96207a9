#ifndef LOCKSTEP_DROPOUT_MASK_H
#define LOCKSTEP_DROPOUT_MASK_H

#include <stdint.h>

/// One row's dropout mask for one direction: for u = 0, 4, 8, … < count, the Philox-4x32-10
/// block of `key` at counter (c0, c1, c2, c3 | u/4) gives four words r[q], and
/// mask[u + q] = (float)(r[q] >> 8) · 2⁻²⁴ < p ? 0 : scale — exactly `Numerics.Philox.block`
/// and `Dropout.makeMask` (integers and one exact float compare: the same bits on every CPU).
/// Eight blocks at a time in AVX2 where the CPU has it.
void lockstep_dropout_mask(float *mask, long count, uint64_t key,
                           uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, float p, float scale);

#endif
