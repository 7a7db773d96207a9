"""Writes malformed .npz files for scripts/hostile: a valid file made with the standard library
alone (stored, deflated, ZIP64), then hostile variants of it: flipped bytes, truncations, ZIP64
sizes of 2^50, absurd .npy shapes, labels of 10^9, duplicate members, NaN inputs.
Usage: python3 malformed_npz.py OUT_DIR COUNT SEED"""
import io, os, random, struct, sys, warnings, zipfile
warnings.filterwarnings("ignore")

def npy(descr, shape, data):
    dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (descr, dims)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data

def valid_members(rng, n=6, lmax=9, d_in=4, classes=3, label=None, shape=None, nan=False):
    lengths = [rng.randint(1, lmax) for _ in range(n)]
    x = [rng.uniform(-1, 1) for _ in range(n * lmax * d_in)]
    if nan: x[rng.randrange(d_in)] = float("nan")
    y = []
    for i in range(n):
        y += [rng.randrange(classes) if t < lengths[i] else -1 for t in range(lmax)]
    if label is not None: y[0] = label
    return [("x.npy", npy("<f4", shape or [n, lmax, d_in], struct.pack("<%df" % len(x), *x))),
            ("lengths.npy", npy("<i8", [n], struct.pack("<%dq" % n, *lengths))),
            ("y.npy", npy("<i8", [n, lmax], struct.pack("<%dq" % len(y), *y)))]

def zipped(members, method=zipfile.ZIP_STORED, zip64=False):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", compression=method) as z:
        for name, data in members:
            with z.open(zipfile.ZipInfo(name), "w", force_zip64=zip64) as f:
                f.write(data)
    return bytearray(b.getvalue())

def main():
    out, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    kinds = []
    for i in range(count):
        kind = rng.choice(["flip", "truncate", "zip64-size", "npy-shape", "label", "duplicate", "nan", "flip-deflated"])
        method = zipfile.ZIP_DEFLATED if kind == "flip-deflated" or rng.random() < 0.5 else zipfile.ZIP_STORED
        zip64 = rng.random() < 0.5
        if kind == "label":
            b = zipped(valid_members(rng, label=rng.choice([10**9, 2**40, -7])), method, zip64)
        elif kind == "npy-shape":
            b = zipped(valid_members(rng, shape=[rng.choice([2**40, 2**20]), 2**20, 2**10]), method, zip64)
        elif kind == "nan":
            b = zipped(valid_members(rng, nan=True), method, zip64)
        elif kind == "duplicate":
            m = valid_members(rng)
            b = zipped(m + [m[2]], method, zip64)
        else:
            b = zipped(valid_members(rng), method, zip64 or kind == "zip64-size")
            if kind in ("flip", "flip-deflated"):
                for _ in range(rng.randint(1, 4)):
                    at = rng.randrange(len(b)); b[at] ^= 1 << rng.randrange(8)
            elif kind == "truncate":
                b = b[:rng.randrange(len(b))]
            elif kind == "zip64-size":
                # Every ZIP64 extra field (id 1) claims 2^50 bytes for the member.
                at = 0
                while True:
                    at = b.find(b"\x01\x00", at)
                    if at < 0: break
                    size = struct.unpack_from("<H", b, at + 2)[0]
                    if size in (16, 24, 28) and at + 4 + 8 <= len(b):
                        struct.pack_into("<Q", b, at + 4, 2**50)
                    at += 2
        path = os.path.join(out, "m%03d-%s.npz" % (i, kind))
        with open(path, "wb") as f: f.write(b)
        kinds.append(kind)
    print(" ".join(kinds))

main()
