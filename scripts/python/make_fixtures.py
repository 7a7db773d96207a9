"""Writes the PyTorch reference fixtures Lockstep's tests compare against (run once; committed).

For each config: <name>.weights.safetensors (a PyTorch state_dict, no Lockstep metadata),
<name>.data.npz (x, lengths, y), <name>.expected.safetensors (loss, logprobs, grad.<name>).
Also optim.safetensors: Adam, SGD and clip_grad_norm_ on fixed numbers, and
bi2.weighted.expected.safetensors: bi2's loss and gradients under NLLLoss(weight=WEIGHTS).
Usage: python3 scripts/python/make_fixtures.py Tests/BiLSTMTests/Fixtures
       python3 scripts/python/make_fixtures.py --weighted Tests/BiLSTMTests/Fixtures  (that file alone,
       from the committed bi2 weights and data)
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


# --class-weights on bi2 (4 classes): a weight of 0, weights above and below 1.
WEIGHTS = [0.5, 3.0, 0.0, 1.25]


def weighted(out):
    """bi2 under nn.NLLLoss(weight=WEIGHTS, ignore_index=-1): the weighted mean and its gradients."""
    from lockstep_torch import load_safetensors
    w, _ = load_safetensors(f"{out}/bi2.weights.safetensors")
    d = np.load(f"{out}/bi2.data.npz")
    h = w["layer1.weight_hh_l0"].shape[1]
    layers = 1 + max(int(k.split("_l")[-1].split("_")[0]) for k in w if k.startswith("layer1.weight_ih"))
    c, d_in = w["layer2.0.weight"].shape[0], w["layer1.weight_ih_l0"].shape[1]
    net = Net(d_in, h, layers, c, True, "stacked")
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in w.items()})
    x, lens, y = torch.from_numpy(d["x"]), torch.from_numpy(d["lengths"]), torch.from_numpy(d["y"]).long()
    logp = net(x, lens)
    loss = nn_weighted(logp, y, torch.tensor(WEIGHTS))
    loss.backward()
    expected = {"loss": np.array(loss.item(), dtype=np.float32)}
    for k, p in net.named_parameters():
        expected["grad." + k] = p.grad.numpy().astype(np.float32)
    save_safetensors(f"{out}/bi2.weighted.expected.safetensors", expected,
                     metadata={"class_weights": ",".join(str(v) for v in WEIGHTS)})
    print("weighted fixture written to", out, "loss", loss.item())


def nn_weighted(logp, y, weights):
    return torch.nn.functional.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1), weight=weights, ignore_index=-1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--weighted":
        weighted(sys.argv[2] if len(sys.argv) > 2 else "Tests/BiLSTMTests/Fixtures")
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "Tests/BiLSTMTests/Fixtures")
