"""The outside review's hostile cases, one line each: case, expected, got.

Usage: python3 hostile_cases.py BIN_DIR WORK_DIR
Runs Lockstep's release binaries on lying packed data, run directories with links, devices and
damaged history, out-of-range numbers and malformed files. Every case must end in a refusal that
names what is wrong (exit 1 or 2, an "error:" line, no signal, within its time limit) or, where
the case says so, in the right result. Ends with "N passed, N failed".
"""
import hashlib, json, os, shutil, stat, struct, subprocess, sys

import numpy as np

BIN, WORK = sys.argv[1], sys.argv[2]
results = []


def run(*args, timeout=60, env=None):
    """(exit code, stdout, stderr) of a Lockstep binary; a time-out is exit 124."""
    e = dict(os.environ, **(env or {}))
    try:
        p = subprocess.run([os.path.join(BIN, args[0])] + [str(a) for a in args[1:]], capture_output=True, text=True,
                           timeout=timeout, env=e, errors="replace")
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return 124, "", "timed out"


def case(name, expected, ok, got):
    results.append(ok)
    got = " ".join(got.split())[:150]
    print(f"{'ok  ' if ok else 'FAIL'} | {name} | {expected} | {got}", flush=True)


def refused(name, words, *args, timeout=60):
    """The command must stop with exit 1 or 2 (64: options refused by `validate()`, before any
    work), saying every one of `words` (on stderr, or stdout for a report such as `data verify`)."""
    rc, out, err = run(*args, timeout=timeout)
    said = [l for l in (err + out).splitlines() if l.strip()]
    first = next((l for l in said if any(w in l for w in words)), said[0] if said else "")
    ok = rc in (1, 2, 64) and all(w in err + out for w in words)
    case(name, "refused: " + ", ".join(words), ok, f"exit {rc}: {first}")
    return ok


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def final_hash(out):
    return next((l.split()[-1] for l in out.splitlines() if l.startswith("final weights sha256")), "none")


# Data: a small task as .npz, its packed copy, a checkpoint of a run on it.
small = ["--hidden", "8", "--batch-size", "16", "--shard-size", "4", "--seed", "3"]
rng = np.random.default_rng(7)
N, L, D, C = 64, 12, 5, 4
lengths = rng.integers(3, L + 1, N)
x = rng.standard_normal((N, L, D)).astype(np.float32)
y = np.full((N, L), -1, np.int64)
for i, n in enumerate(lengths):
    y[i, :n] = rng.integers(0, C, n)
    x[i, n:] = 0
np.savez(f"{WORK}/d.npz", x=x, lengths=lengths, y=y)
assert run("coord", "data", "pack", f"{WORK}/d.npz", "--out", f"{WORK}/good")[0] == 0
rc, out, err = run("coord", "start", "--local", "--data", f"{WORK}/d.npz", "--steps", "4", "--checkpoint-dir", f"{WORK}/ck", *small)
assert rc == 0, err
ref_hash = final_hash(out)
CK = f"{WORK}/ck/checkpoint.safetensors"


def packed(name, edit_manifest=None, edit_shard=None):
    """A copy of the good packed set; `edit_shard(x, y)` rewrites shard 0 (its SHA-256 updated)."""
    d = f"{WORK}/{name}"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(f"{WORK}/good", d)
    m = json.load(open(f"{d}/manifest.json"))
    if edit_shard:
        s = m["shards"][0]
        raw = open(f"{d}/{s['file']}", "rb").read()
        xs = np.frombuffer(raw[:s["frames"] * m["d_in"] * 4], np.float32).copy()
        ys = np.frombuffer(raw[s["frames"] * m["d_in"] * 4:], np.int32).copy()
        edit_shard(xs, ys)
        new = xs.tobytes() + ys.tobytes()
        open(f"{d}/{s['file']}", "wb").write(new)
        s["sha256"] = hashlib.sha256(new).hexdigest()
    if edit_manifest:
        edit_manifest(m)
    json.dump(m, open(f"{d}/manifest.json", "w"), sort_keys=True)
    return d


def train(data, tag):
    return ("coord", "start", "--local", "--fresh", "--data", data, "--steps", "2", "--checkpoint-dir", f"{WORK}/run-{tag}", *small)


def evaluate(data):
    return ("coord", "eval", "--checkpoint", CK, "--data", data)


def predict(data, tag):
    return ("coord", "predict", "--checkpoint", CK, "--data", data, "--out", f"{WORK}/pred-{tag}.npz")


print("== root cause 1: packed data is believed")


def big(m):
    m["sequences"] = 1_000_000_000
    m["shards"][-1]["sequences"] += 1_000_000_000 - sum(s["sequences"] for s in m["shards"])


d = packed("seq1e9", big)
for cmd in (("coord", "data", "info", d), ("coord", "data", "verify", d), train(d, "seq")):
    refused(f"manifest sequences 1e9: {' '.join(cmd[1:3])}", ['field "lengths"'], *cmd)
d = packed("classes2", lambda m: m.update(classes=2))
for tag, cmd in (("start", train(d, "c2")), ("eval", evaluate(d)), ("predict", predict(d, "c2")),
                 ("--valid-data", ("coord", "start", "--local", "--fresh", "--data", f"{WORK}/d.npz", "--valid-data", d, "--steps", "2",
                                   "--checkpoint-dir", f"{WORK}/run-v2", *small))):
    refused(f"manifest classes 2, labels to 3: {tag}", ["-1...1"], *cmd)
d = packed("pad", lambda m: m.update(padded_length=3))
for tag, cmd in (("predict", predict(d, "pad")), ("start", train(d, "pad"))):
    refused(f"manifest padded_length 3, sequences longer: {tag}", ["padded_length"], *cmd)
d = packed("short", lambda m: m["lengths"].pop())
refused("manifest lengths one short: start", ['field "lengths"', "63 lengths for 64 sequences"], *train(d, "short"))
d = packed("empty", lambda m: m.update(lengths=[]))
refused("manifest lengths empty: info", ['field "lengths"', "0 lengths for 64 sequences"], "coord", "data", "info", d)


def swap(m):
    L = m["lengths"]
    i = next(i for i in range(len(L) - 1) if L[i] != L[i + 1])
    L[i], L[i + 1] = L[i + 1], L[i]


d = packed("swap", swap)
refused("manifest lengths swapped: verify", ["content_sha256"], "coord", "data", "verify", d)
rc, out, err = run(*train(d, "swap"))
if rc == 0:
    refused("run on swapped lengths, resumed on the genuine .npz", ["identity"], "coord", "start", "--local", "--resume", "--data",
            f"{WORK}/d.npz", "--steps", "2", "--checkpoint-dir", f"{WORK}/run-swap", *small)
else:
    case("run on swapped lengths, resumed on the genuine .npz", "refused: identity", False, f"the first run failed: {err[-120:]}")
for label in (100000, 2**31 - 1, 4, -5):
    d = packed(f"label{label}", edit_shard=lambda xs, ys, v=label: ys.__setitem__(2, v))
    for tag, cmd in (("start", train(d, f"l{label}")), ("eval", evaluate(d)), ("predict", predict(d, f"l{label}"))):
        refused(f"shard label {label} (SHA-256 updated): {tag}", [f"has label {label}"], *cmd)
d = packed("nan", edit_shard=lambda xs, ys: xs.__setitem__(7, np.nan))
for tag, cmd in (("start", train(d, "nan")), ("eval", evaluate(d)), ("predict", predict(d, "nan"))):
    refused(f"NaN in a shard's x: {tag}", ["inputs must be finite"], *cmd)
d = packed("fifo")
shard = f"{d}/" + json.load(open(f"{d}/manifest.json"))["shards"][0]["file"]
os.remove(shard)
os.mkfifo(shard)
for tag, cmd in (("start", train(d, "fifo")), ("verify", ("coord", "data", "verify", d)), ("eval", evaluate(d))):
    refused(f"a shard that is a FIFO: {tag}", ["not a regular file"], *cmd, timeout=20)

print("== root cause 2: files opened through whatever is there")
for name in ("metrics.jsonl", ".lock"):
    r = f"{WORK}/link-{name}"
    os.makedirs(r, exist_ok=True)
    open(f"{WORK}/victim-{name}", "w").write("victim\n")
    os.symlink(f"{WORK}/victim-{name}", f"{r}/{name}")
    refused(f"RUN/{name} a link to a victim: start", ["not a regular file"], "coord", "start", "--local", "--steps", "2",
            "--checkpoint-dir", r, *small)
    case(f"RUN/{name}: the victim", "untouched", open(f"{WORK}/victim-{name}").read() == "victim\n", open(f"{WORK}/victim-{name}").read())
r = f"{WORK}/tblink"
assert run("coord", "start", "--local", "--steps", "2", "--checkpoint-dir", r, *small)[0] == 0
events = sorted(os.listdir(f"{r}/tb"))
open(f"{WORK}/victim-tb", "w").write("victim\n")
os.remove(f"{r}/tb/{events[0]}")
os.symlink(f"{WORK}/victim-tb", f"{r}/tb/{events[0]}")
refused("RUN/tb/events… a link, then --resume", ["not a regular file"], "coord", "start", "--local", "--resume", "--steps", "4",
        "--checkpoint-dir", r, *small)
case("RUN/tb/events…: the victim", "untouched", open(f"{WORK}/victim-tb").read() == "victim\n", open(f"{WORK}/victim-tb").read())
dev = f"{WORK}/nulldev"
can_mknod = True
try:
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
except PermissionError:
    can_mknod = False
os.mkfifo(f"{WORK}/outfifo")
targets = [("a FIFO", f"{WORK}/outfifo")] + ([("a character device", dev)] if can_mknod else [])
for kind, target in targets:
    for tag, cmd in (("predict", ("coord", "predict", "--checkpoint", CK, "--data", f"{WORK}/d.npz", "--out", target)),
                     ("report", ("coord", "report", f"{WORK}/ck", "--out", target)),
                     ("synthetic", ("coord", "synthetic", "--out", target, "--count", "4"))):
        refused(f"{tag} --out {kind}", ["Lockstep writes only regular files"], *cmd, timeout=20)
    mode = os.lstat(target).st_mode
    case(f"--out {kind}: afterwards", f"still {kind}", stat.S_ISFIFO(mode) if kind == "a FIFO" else stat.S_ISCHR(mode), oct(mode))

print("== root cause 3: resume changes before it checks")
r = f"{WORK}/hist"
assert run("coord", "start", "--local", "--steps", "6", "--checkpoint-every", "3", "--checkpoint-dir", r, *small)[0] == 0
shutil.copy(f"{r}/checkpoint-step-00000003.safetensors" if os.path.exists(f"{r}/checkpoint-step-00000003.safetensors") else f"{r}/checkpoint.safetensors", f"{WORK}/hist-ck")
before = open(f"{r}/metrics.jsonl", "rb").read()
open(f"{r}/metrics.jsonl", "ab").write(b"\xff")
rc, out, err = run("coord", "start", "--local", "--resume", "--steps", "8", "--checkpoint-dir", r, *small)
after = open(f"{r}/metrics.jsonl", "rb").read()
case("one byte \\xff appended to metrics.jsonl, then --resume", "exit 0, every earlier byte kept",
     rc == 0 and after.startswith(before), f"exit {rc}, {len(after)} bytes, the {len(before)} before kept: {after.startswith(before)}")
shutil.rmtree(f"{r}/tb")
open(f"{r}/tb", "w").write("a file\n")
size = os.path.getsize(f"{r}/metrics.jsonl")
refused("tb/ replaced by a regular file, then --resume", ["tb is not a directory"], "coord", "start", "--local", "--resume", "--steps", "9",
        "--checkpoint-dir", r, *small)
case("tb/ a file: metrics.jsonl", "untouched", os.path.getsize(f"{r}/metrics.jsonl") == size, f"{os.path.getsize(f'{r}/metrics.jsonl')} bytes of {size}")
v = f"{WORK}/v.npz"
np.savez(v, x=x[:16], lengths=lengths[:16], y=y[:16])
b = f"{WORK}/best"
vopts = ("--data", f"{WORK}/d.npz", "--valid-data", v, "--valid-every", "2", "--checkpoint-dir", b, *small)
assert run("coord", "start", "--local", "--steps", "4", *vopts)[0] == 0
shutil.copy(f"{b}/best.safetensors", f"{WORK}/best-keep")
shutil.copy(CK, f"{b}/best.safetensors")
refused("best.safetensors replaced by another run's checkpoint, --resume", ["is not the file this run wrote"], "coord", "start", "--local",
        "--resume", "--steps", "6", *vopts)
os.remove(f"{b}/best.safetensors")
refused("best.safetensors deleted, --resume", ["is gone"], "coord", "start", "--local", "--resume", "--steps", "6", *vopts)
damaged = bytearray(open(f"{WORK}/best-keep", "rb").read())
damaged[-5] ^= 1
open(f"{b}/best.safetensors", "wb").write(damaged)
refused("best.safetensors damaged, --resume", ["is damaged"], "coord", "start", "--local", "--resume", "--steps", "6", *vopts)
shutil.copy(f"{WORK}/best-keep", f"{b}/best.safetensors")
refused("--resume without the run's --valid-data", ["gives no --valid-data"], "coord", "start", "--local", "--resume", "--steps", "6",
        "--data", f"{WORK}/d.npz", "--valid-every", "2", "--checkpoint-dir", b, *small)
rc, out, err = run("coord", "start", "--local", "--fresh", "--data", f"{WORK}/nowhere.npz", "--checkpoint-dir", b, *small)
case("--fresh that fails on its data", "the old run left as it was", rc == 1 and os.path.exists(f"{b}/checkpoint.safetensors"),
     f"exit {rc}, old checkpoint there: {os.path.exists(f'{b}/checkpoint.safetensors')}")
rc, out, err = run("coord", "start", "--local", "--fresh", "--steps", "2", "--checkpoint-dir", b, *small)
moved = os.path.isdir(f"{b}/previous-1") and os.path.exists(f"{b}/previous-1/best.safetensors") and not os.path.exists(f"{b}/best.safetensors")
case("--fresh over a run", "the old run's files moved to previous-1", rc == 0 and moved, f"exit {rc}, moved: {moved}")

print("== root cause 4: numbers not checked for range")
refused("--epochs 9223372036854775807", ["--epochs must be in 1..."], "coord", "start", "--local", "--epochs", "9223372036854775807",
        "--checkpoint-dir", f"{WORK}/n1")
refused("--steps 9223372036854775807", ["--steps must be in 1..."], "coord", "start", "--local", "--steps", "9223372036854775807",
        "--checkpoint-dir", f"{WORK}/n2")


def safetensors(header, data=b"", length=None):
    h = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(h) if length is None else length) + h + data


nan_ck = bytearray(open(CK, "rb").read())
hlen = struct.unpack("<Q", nan_ck[:8])[0]
head = json.loads(nan_ck[8:8 + hlen])
meta = head.pop("__metadata__")
tensors = {k: v for k, v in head.items() if not k.startswith("optimizer.")}
data = bytearray()
out_head = {}
for k, v in sorted(tensors.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    a, z = v["data_offsets"]
    chunk = nan_ck[8 + hlen + a:8 + hlen + z]
    out_head[k] = dict(dtype=v["dtype"], shape=v["shape"], data_offsets=[len(data), len(data) + len(chunk)])
    data += chunk
open(f"{WORK}/plain.safetensors", "wb").write(safetensors(out_head, bytes(data)))
first = min(out_head, key=lambda k: out_head[k]["data_offsets"][0])
data[8:12] = struct.pack("<f", float("nan"))
open(f"{WORK}/nan.safetensors", "wb").write(safetensors(out_head, bytes(data)))
refused("--init with a NaN weight", [f"tensor '{first}' holds nan"], "coord", "start", "--local", "--init", f"{WORK}/nan.safetensors",
        "--data", f"{WORK}/d.npz", "--steps", "2", "--checkpoint-dir", f"{WORK}/n3")
one = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
malformed = {
    "header length 2^63": safetensors(one, b"\0" * 8, length=1 << 63),
    "header past the file": safetensors(one, b"\0" * 8, length=1000),
    "a header that is not JSON": safetensors(b"{not json", b"\0" * 8),
    "an unknown dtype": safetensors({"a": {"dtype": "F33", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "a wrong byte count": safetensors({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 16),
    "overlapping data_offsets": safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),
    "two tensors sharing bytes": safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                              "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "shape [32.5, 16]": safetensors({"a": {"dtype": "F32", "shape": [32.5, 16], "data_offsets": [0, 8]}}, b"\0" * 8),
}
for what, blob in malformed.items():
    p = f"{WORK}/bad.safetensors"
    open(p, "wb").write(blob)
    refused(f"safetensors with {what}: --init", ["not a valid safetensors file"], "coord", "start", "--local", "--init", p,
            "--checkpoint-dir", f"{WORK}/n4")
    refused(f"safetensors with {what}: eval", ["not a valid safetensors file"], "coord", "eval", "--checkpoint", p, "--data", f"{WORK}/d.npz")
    rc, out, err = run("coord", "eval", "--checkpoint", p, "--data", f"{WORK}/d.npz")
    case(f"safetensors with {what}: the words", "no word of a checksum", "checksum" not in err, err.strip().splitlines()[0][:120] if err.strip() else "")
cfg = f"{WORK}/crlf.toml"
open(cfg, "wb").write(b"steps = 2\r\nhidden = 8\r\nlog-level = \"warning\"\r\nlog-format = \"text\"\r\n")
rc, out, err = run("coord", "start", "--local", "--config", cfg, "--checkpoint-dir", f"{WORK}/n5")
case("TOML with CRLF endings and log-level, log-format keys", "exit 0", rc == 0, f"exit {rc} {err[-100:]}")
open(cfg, "w").write("steps = 12345678901234567890123456789\n")
refused("TOML 29-digit integer", ["out of range"], "coord", "start", "--local", "--config", cfg, "--checkpoint-dir", f"{WORK}/n6")
open(cfg, "w").write("k" * 10_000_000 + " = 1\n")
rc, out, err = run("coord", "start", "--local", "--config", cfg, "--checkpoint-dir", f"{WORK}/n7")
case("TOML 10 MB key", "refused, the key cut", rc in (1, 64) and len(err) < 2000, f"exit {rc}, {len(err)} bytes said")
r = f"{WORK}/esc"
os.makedirs(r, exist_ok=True)
open(f"{r}/metrics.jsonl", "w").write(json.dumps({"step": 1, "loss": 1.0, "stopped": "\x1b]0;owned\x07\x1b[2J"}) + "\n")
rc, out, err = run("coord", "status", r)
case("coord status on escape sequences in metrics.jsonl", "escaped", rc == 0 and "\x1b" not in out, repr(out[:100]))
v0 = f"{WORK}/v0.npz"
np.savez(v0, x=x[:8], lengths=lengths[:8], y=np.full((8, L), -1, np.int64))
refused("a validation set with 0 labelled frames", ["no frame has a label"], "coord", "start", "--local", "--data", f"{WORK}/d.npz",
        "--valid-data", v0, "--steps", "2", "--checkpoint-dir", f"{WORK}/n8", *small)

print("== peers")
port = __import__("socket").socket()
port.bind(("127.0.0.1", 0))
p = port.getsockname()[1]
port.close()
fake = subprocess.Popen([f"{BIN}/coord", "start", "--insecure", "--bind", f"tcp://127.0.0.1:{p}", "--steps", "2",
                         "--checkpoint-dir", f"{WORK}/fake", *small], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    import time
    time.sleep(1.5)
    refused("a worker with no key meets a coordinator that authenticates no one", ["without authentication"], "worker", "join",
            f"127.0.0.1:{p}", timeout=30)
finally:
    fake.kill()
    fake.wait()

# A worker's own copy of the data, tampered (a label rewritten, its SHA-256 updated, the manifest
# otherwise kept): its identity is not the run's, so it is sent the sequences; the run's bits hold.
tampered = packed("tampered", edit_shard=lambda xs, ys: ys.__setitem__(5, 3 - max(ys[5], 0)))
rc, out, err = run("coord", "start", "--local", "--data", f"{WORK}/good", "--steps", "4", "--checkpoint-dir", f"{WORK}/dr-ref", *small)
local = final_hash(out)
sock = __import__("socket").socket()
sock.bind(("127.0.0.1", 0))
p = sock.getsockname()[1]
sock.close()
coord = subprocess.Popen([f"{BIN}/coord", "start", "--bind", f"tcp://127.0.0.1:{p}", "--data", f"{WORK}/good", "--steps", "4",
                          "--checkpoint-dir", f"{WORK}/dr", *small], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
import time
time.sleep(1.5)
w = subprocess.Popen([f"{BIN}/worker", "join", f"127.0.0.1:{p}", "--data-root", tampered], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
try:
    cout, cerr = coord.communicate(timeout=60)
    got = final_hash(cout)
    case("a worker's --data-root copy tampered (label rewritten, SHA-256 updated)", "sent the sequences; the --local hash",
         got == local and "differs from the run's" in cerr, f"hash {got[:16]}…, --local {local[:16]}…")
except subprocess.TimeoutExpired:
    coord.kill()
    case("a worker's --data-root copy tampered", "the --local hash", False, "timed out")
finally:
    w.kill()
    w.wait()

passed = sum(results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
