#ifndef LOCKSTEP_LSTM_CELL_H
#define LOCKSTEP_LSTM_CELL_H

/// One time step of an LSTM direction's pointwise forward, in AVX2 or AVX-512 (eight or sixteen
/// lanes per instruction, where Swift's SIMD8 compiles to two SSE halves on a generic x86-64 build).
///
/// The same IEEE-754 operations in the same order as `Numerics.detSigmoid`/`detTanh` and
/// `LSTMLayer.pointwiseForward`, without FMA: the results are those functions' bits
/// (tested bit for bit against them). For rows j < `rows`: gates[j] holds the pre-activations
/// i, f, g, o [4H] and gets their activations; c[j] = f*cp + i*g; tc[j] = tanh(c[j]);
/// h[j * ldh] = o * tc[j]; cp is row j of `cprev` when j < `with_prev`, else zero state.
/// `store_cache` 0 skips the gates and tanh(c) stores a backward pass would read.
/// Returns 0 when this CPU has no AVX2 (nothing written), 1 when done.
int lockstep_lstm_cell_forward(float *gates, float *c, float *tc, float *h, long ldh,
                               const float *cprev, long with_prev, long rows, long hidden,
                               int store_cache);

/// 1 when lockstep_lstm_cell_forward runs on this CPU and the environment does not force
/// the Swift loop (LOCKSTEP_CELL_PATH=swift, so tests can compare both paths end to end).
int lockstep_lstm_cell_available(void);

/// The lanes lockstep_lstm_cell_forward uses: 16 (AVX-512F, where the GEMM path is AVX-512
/// too), 8 (AVX2; LOCKSTEP_CELL_PATH=avx2 forces it), 0 (the Swift loop). A hidden size that
/// is not a multiple of the lanes takes the narrower kernel.
int lockstep_lstm_cell_lanes(void);

/// lockstep_lstm_cell_forward on a chosen width (16 or 8), for tests; 0 where this CPU or the
/// hidden size cannot run it.
int lockstep_lstm_cell_forward_lanes(int lanes, float *gates, float *c, float *tc, float *h, long ldh,
                                     const float *cprev, long with_prev, long rows, long hidden, int store_cache);

/// One time step of the pointwise backward, `LSTMLayer.pointwiseBackward` for rows j < `rows`
/// (the same operations in the same order, no FMA): dgates[j] [4H] from the cached gates[j],
/// tc[j], dh[j * ldh] and dc[j] (dc of row j, complete); adds dc[j]·f into dcprev[j] when
/// j < `with_prev` (cprev[j] its c), else into `sink` (with `zeros` as c). 1 when done; 0 when
/// this CPU or width cannot (nothing written).
int lockstep_lstm_cell_backward(float *dgates, float *dc, const float *dh, long ldh, const float *gates,
                                const float *tc, const float *cprev, float *dcprev, long with_prev,
                                const float *zeros, float *sink, long rows, long hidden);
int lockstep_lstm_cell_backward_lanes(int lanes, float *dgates, float *dc, const float *dh, long ldh, const float *gates,
                                      const float *tc, const float *cprev, float *dcprev, long with_prev,
                                      const float *zeros, float *sink, long rows, long hidden);

#endif
