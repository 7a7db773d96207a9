"""The seed's PyTorch model and small helpers shared by Lockstep's Python scripts.

Net mirrors the seed: `layer1` is the LSTM (or, for arch "split", a ModuleList of a
forward and a reverse unidirectional stack), `layer2` is Sequential(Linear, LogSoftmax).
Safetensors I/O is done here with numpy alone, so no extra package is needed.
"""
import json
import struct

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def reverse_padded_sequence(x, lengths):
    """Reverse each sequence within its own length (padding stays at the end)."""
    out = x.clone()
    for i, n in enumerate(lengths.tolist()):
        out[i, :n] = x[i, :n].flip(0)
    return out


class Net(nn.Module):
    def __init__(self, d_in, hidden, layers, classes, bidirectional=True, arch="stacked", dropout=0.0):
        super().__init__()
        self.arch = arch
        if arch == "split":
            self.layer1 = nn.ModuleList([
                nn.LSTM(d_in, hidden, layers, batch_first=True, dropout=dropout),
                nn.LSTM(d_in, hidden, layers, batch_first=True, dropout=dropout),
            ])
            width = 2 * hidden
        else:
            self.layer1 = nn.LSTM(d_in, hidden, layers, batch_first=True, bidirectional=bidirectional, dropout=dropout)
            width = hidden * (2 if bidirectional else 1)
        self.layer2 = nn.Sequential(nn.Linear(width, classes), nn.LogSoftmax(dim=-1))

    def _run(self, lstm, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out

    def forward(self, x, lengths):
        if self.arch == "split":
            fwd = self._run(self.layer1[0], x, lengths)
            rev = self._run(self.layer1[1], reverse_padded_sequence(x, lengths), lengths)
            h = torch.cat([fwd, reverse_padded_sequence(rev, lengths)], dim=-1)
        else:
            h = self._run(self.layer1, x, lengths)
        return self.layer2(h)


def nll(logprobs, y):
    return nn.functional.nll_loss(logprobs.reshape(-1, logprobs.shape[-1]), y.reshape(-1), ignore_index=-1)


_DT = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def save_safetensors(path, tensors, metadata=None):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        a = np.require(np.asarray(arr), requirements="C")
        dtype = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[a.dtype]
        b = a.astype(a.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, d in header.items():
        b, e = d["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype=np.dtype(_DT[d["dtype"]]).newbyteorder("<")).reshape(d["shape"])
    return out, meta


def state_dict_numpy(net):
    return {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}


def net_from_checkpoint(path):
    """Builds Net from a Lockstep checkpoint and loads its weights with load_state_dict."""
    tensors, meta = load_safetensors(path)
    m = json.loads(meta["model"])
    net = Net(m["inputSize"], m["hidden"], m["layers"], m["classes"], m["bidirectional"], m["arch"])
    weights = {k: torch.from_numpy(v.copy()) for k, v in tensors.items() if not k.startswith("optimizer.")}
    net.load_state_dict(weights, strict=True)
    return net


def load(path):
    """A Lockstep checkpoint (checkpoint.safetensors, best.safetensors) as the seed's `Net`, in
    eval mode: the model shape comes from the checkpoint's metadata, the `optimizer.*` tensors
    are left out, and the weights go in with `load_state_dict(strict=True)`.

        import sys; sys.path.insert(0, "scripts/python")
        import lockstep_torch
        net = lockstep_torch.load("runs/exp1/best.safetensors")
        logprobs = net(x, lengths)          # x float32 [N, T, d_in], lengths int64 [N]
    """
    net = net_from_checkpoint(path)
    net.eval()
    return net
