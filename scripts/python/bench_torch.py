"""PyTorch side of scripts/bench: the same standard config, one thread, as JSON lines.

Modes: packed (pack_padded_sequence: correct), unpacked (padding fed through: faster, wrong
for the reverse direction), forward (inference, packed, no grad), and
`eval FILE.npz BATCH`: what `coord eval` does on the same file, batch by batch as Lockstep
cuts it (sorted by length, longest first), with packed forward, log-softmax and argmax."""
import json
import resource
import sys
import time

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

torch.set_num_threads(1)
mode = sys.argv[1]
D, H, L, C, B = 40, 128, 2, 10, 32
g = torch.Generator().manual_seed(0)
lstm = nn.LSTM(D, H, L, batch_first=True, bidirectional=True, dropout=0.3)
head = nn.Linear(2 * H, C)

if mode == "eval":
    import numpy as np
    z = np.load(sys.argv[2])
    B = int(sys.argv[3])
    xs, lens = torch.from_numpy(z["x"]), torch.from_numpy(z["lengths"]).long()
    order = sorted(range(len(lens)), key=lambda i: (-int(lens[i]), i))
    batches = [order[k:k + B] for k in range(0, len(order), B)]
    lstm.eval()

    def run():
        frames = 0
        with torch.no_grad():
            for ids in batches:
                l = lens[ids]
                x = xs[ids, :int(l.max())]
                out, _ = lstm(pack_padded_sequence(x, l, batch_first=True, enforce_sorted=False))
                out, _ = pad_packed_sequence(out, batch_first=True)
                torch.log_softmax(head(out), -1).argmax(-1)
                frames += int(l.sum())
        return frames
    run()  # warm up, as Lockstep's side does
    t0 = time.perf_counter()
    frames = run()
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"engine": "pytorch", "mode": "eval", "frames_per_s": round(frames / secs), "batch": B,
                      "peak_rss_mib": round(rss, 1), "torch": torch.__version__}))
    sys.exit(0)

steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
B = int(sys.argv[3]) if len(sys.argv) > 3 else B
opt = torch.optim.Adam(list(lstm.parameters()) + list(head.parameters()), lr=1e-3)
batches = []
for _ in range(steps + 2):
    lengths = torch.randint(20, 201, (B,), generator=g)
    Lmax = int(lengths.max())
    x = torch.randn(B, Lmax, D, generator=g)
    y = torch.randint(0, C, (B, Lmax), generator=g)
    y[torch.arange(Lmax)[None, :] >= lengths[:, None]] = -1
    batches.append((x, lengths, y))

frames, secs = 0, 0.0
for i, (x, lengths, y) in enumerate(batches):
    t0 = time.perf_counter()
    if mode == "forward":
        lstm.eval()
        with torch.no_grad():
            out, _ = lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True)
            torch.log_softmax(head(out), -1)
    else:
        lstm.train()
        if mode == "packed":
            out, _ = lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(out, batch_first=True)
        else:
            out, _ = lstm(x)
        logp = torch.log_softmax(head(out), -1)
        loss = nn.functional.nll_loss(logp.reshape(-1, C), y[:, :logp.shape[1]].reshape(-1), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(lstm.parameters()) + list(head.parameters()), 1.0)
        opt.step()
    if i >= 2:
        secs += time.perf_counter() - t0
        frames += int(lengths.sum())
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"engine": "pytorch", "mode": mode, "frames_per_s": round(frames / secs), "peak_rss_mib": round(rss, 1),
                  "torch": torch.__version__}))
