"""Learning rates of torch.optim.lr_scheduler for the schedules Lockstep implements.

Writes Tests/TrainingTests/Fixtures/schedules.json: for each case, the options (as Lockstep
names them), the validation losses fed to ReduceLROnPlateau, and the rate of every step.
Usage: python3 scripts/python/make_schedule_fixture.py   (needs torch)
"""
import json
import os
import torch

def rates(case):
    lr, total, w = case["lr"], case["steps"], case["warmup_steps"]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    kind = case["lr_schedule"]
    if kind == "step":
        main = torch.optim.lr_scheduler.StepLR(opt, step_size=case["lr_step_size"], gamma=case["lr_gamma"])
    elif kind == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - w, eta_min=case["min_lr"])
    elif kind == "constant":
        main = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    sched = main if kind != "plateau" else None
    if w > 0 and kind != "plateau":
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / (w + 1), end_factor=1.0, total_iters=w)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], milestones=[w])
    out = []
    if kind == "plateau":
        plat = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=case["lr_gamma"],
                                                          patience=case["plateau_patience"], min_lr=case["min_lr"])
        losses = case["valid_losses"]
        every = case["valid_every"]
        for t in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            if (t + 1) % every == 0:
                plat.step(losses[(t + 1) // every - 1])
        return out
    for t in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out

# Rates, factors and floors that float32 holds exactly: Lockstep's options are float32.
cases = [
    dict(name="step", lr_schedule="step", lr=0.0078125, steps=40, warmup_steps=0, lr_step_size=7, lr_gamma=0.5, min_lr=0.0),
    dict(name="step-warmup", lr_schedule="step", lr=0.001953125, steps=40, warmup_steps=5, lr_step_size=10, lr_gamma=0.375, min_lr=0.0),
    dict(name="cosine", lr_schedule="cosine", lr=0.0078125, steps=50, warmup_steps=0, lr_step_size=1, lr_gamma=0.5, min_lr=0.000244140625),
    dict(name="cosine-warmup", lr_schedule="cosine", lr=0.015625, steps=60, warmup_steps=8, lr_step_size=1, lr_gamma=0.5, min_lr=0.0),
    dict(name="constant-warmup", lr_schedule="constant", lr=0.0078125, steps=20, warmup_steps=4, lr_step_size=1, lr_gamma=0.5, min_lr=0.0),
    dict(name="plateau", lr_schedule="plateau", lr=0.0078125, steps=60, warmup_steps=0, lr_step_size=1, lr_gamma=0.5, min_lr=0.0009765625,
         plateau_patience=2, valid_every=3,
         valid_losses=[1.0, 0.9, 0.95, 0.92, 0.91, 0.9, 0.89999, 0.95, 0.8, 0.81, 0.82, 0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91]),
]
for c in cases:
    c["rates"] = rates(c)
path = os.path.join(os.path.dirname(__file__), "..", "..", "Tests", "TrainingTests", "Fixtures", "schedules.json")
with open(path, "w") as f:
    json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)
print("wrote", os.path.normpath(path), "with torch", torch.__version__)
