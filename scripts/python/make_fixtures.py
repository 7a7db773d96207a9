"""Writes the PyTorch reference fixtures Lockstep's tests compare against (run once; committed).

For each config: <name>.weights.safetensors (a PyTorch state_dict, no Lockstep metadata),
<name>.data.npz (x, lengths, y), <name>.expected.safetensors (loss, logprobs, grad.<name>).
Also optim.safetensors: Adam, SGD and clip_grad_norm_ on fixed numbers.
Usage: python3 scripts/python/make_fixtures.py Tests/BiLSTMTests/Fixtures
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from lockstep_torch import Net, nll, save_safetensors, state_dict_numpy  # noqa: E402

CONFIGS = [
    # name, d_in, hidden, layers, classes, bidirectional, arch, lengths
    ("bi2", 5, 6, 2, 4, True, "stacked", [7, 3, 1, 7, 4]),
    ("bi3", 3, 4, 3, 3, True, "stacked", [1, 5, 2, 1, 6, 3]),
    ("uni2", 4, 5, 2, 3, False, "stacked", [6, 2, 1, 5]),
    ("split2", 4, 5, 2, 3, True, "split", [5, 1, 6, 3]),
]


def main(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(1234)
    for name, d_in, h, layers, c, bi, arch, lengths in CONFIGS:
        net = Net(d_in, h, layers, c, bi, arch)
        B, L = len(lengths), max(lengths)
        x = torch.zeros(B, L, d_in)
        y = torch.full((B, L), -1, dtype=torch.long)
        for i, n in enumerate(lengths):
            x[i, :n] = torch.randn(n, d_in)
            y[i, :n] = torch.randint(0, c, (n,))
        y[0, 0] = -1  # an ignored label on a valid frame
        lens = torch.tensor(lengths)
        logp = net(x, lens)
        loss = nll(logp, y)
        loss.backward()
        mask = (torch.arange(L)[None, :] < lens[:, None]).unsqueeze(-1)
        expected = {"loss": np.array(loss.item(), dtype=np.float32),
                    "logprobs": (logp * mask).detach().numpy().astype(np.float32)}
        for k, p in net.named_parameters():
            expected["grad." + k] = p.grad.numpy().astype(np.float32)
        save_safetensors(f"{out}/{name}.weights.safetensors", state_dict_numpy(net))
        save_safetensors(f"{out}/{name}.expected.safetensors", expected)
        np.savez(f"{out}/{name}.data.npz", x=x.numpy(), lengths=lens.numpy(), y=y.numpy())
        if name == "bi2":
            np.savez_compressed(f"{out}/{name}.compressed.npz", x=x.numpy(), lengths=lens.numpy(), y=y.numpy())

    # Optimizers and clipping on fixed numbers.
    g = torch.Generator().manual_seed(7)
    p0 = torch.randn(40, generator=g)
    grads = [torch.randn(40, generator=g) * s for s in (1.0, 0.5, 2.0)]
    t = {"p0": p0.numpy()}
    for tag, make in [("adam", lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)),
                      ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01))]:
        p = torch.nn.Parameter(p0.clone())
        opt = make([p])
        for k, gr in enumerate(grads):
            p.grad = gr.clone()
            opt.step()
            t[f"{tag}.p{k + 1}"] = p.detach().numpy().copy()
    for k, gr in enumerate(grads):
        t[f"g{k + 1}"] = gr.numpy()
    q = torch.nn.Parameter(torch.zeros(40))
    q.grad = grads[2].clone()
    norm = torch.nn.utils.clip_grad_norm_([q], max_norm=1.0)
    t["clip.norm"] = np.array(norm.item(), dtype=np.float32)
    t["clip.g3"] = q.grad.numpy().copy()
    save_safetensors(f"{out}/optim.safetensors", {k: np.asarray(v, dtype=np.float32) for k, v in t.items()})
    print("fixtures written to", out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Tests/BiLSTMTests/Fixtures")
