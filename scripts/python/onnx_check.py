"""ONNX Runtime side of scripts/check-onnx.

compare MODEL.onnx DATA.npz PRED.npz NAME: runs the model on DATA (one thread) and compares its
    log-probs with `coord predict --logprobs`'s PRED over the valid frames; exit 1 above 1e-5.
time MODEL.onnx DATA.npz BATCH: one JSON line, frames/s of session.run over DATA in
    length-sorted batches of BATCH (longest first, as Lockstep cuts them), each cut to its
    longest sequence, one thread.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort

TOLERANCE = 1e-5


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def compare(model, data, pred, name):
    d, p = np.load(data), np.load(pred)
    x, lengths = d["x"].astype(np.float32), d["lengths"].astype(np.int64)
    out = session(model).run(["logprobs"], {"x": x, "lengths": lengths})[0]
    ours = p["logprobs"]
    t = min(out.shape[1], ours.shape[1])
    mask = np.arange(t)[None, :] < lengths[:, None]
    assert mask.sum() == lengths.sum(), "every valid frame is compared"
    diff = np.abs(out[:, :t] - ours[:, :t])[mask]
    worst = float(diff.max())
    ok = worst <= TOLERANCE
    print(f"{name}: ONNX Runtime {ort.__version__} against coord predict --logprobs over {int(mask.sum())} frames "
          f"of {len(lengths)} sequences: max |diff| {worst:.2e} ({'ok' if ok else 'FAILED'}, limit {TOLERANCE:.0e})")
    return ok


def timing(model, data, batch):
    d = np.load(data)
    x, lengths = d["x"].astype(np.float32), d["lengths"].astype(np.int64)
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches = []
    for k in range(0, len(order), batch):
        ids = order[k:k + batch]
        l = lengths[ids]
        batches.append({"x": np.ascontiguousarray(x[ids, :int(l.max())]), "lengths": l})
    s = session(model)
    s.run(["logprobs"], batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        s.run(["logprobs"], b)
    secs = time.perf_counter() - t0
    frames = int(lengths.sum())
    print(json.dumps({"engine": "onnxruntime", "version": ort.__version__, "frames": frames,
                      "frames_per_s": round(frames / secs), "batch": batch}))


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "compare":
        sys.exit(0 if compare(*sys.argv[2:6]) else 1)
    elif mode == "time":
        timing(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(f"unknown mode {mode}")
