#!/usr/bin/env python3
"""Per-scale time of a VAR-d16 bundle's graphs on ONNX Runtime's CPU provider, driven from Python
with the manifest's names alone: var_cond once, var_embed and var_step for each of the 10 scales
(label 207 and the null class: batch 2, as cfg > 0 runs), then one vq decode. Zero caches and zero tokens (the
time of these graphs does not depend on the values). Prints ms per scale and the GFLOP/s of the
step's linear layers (qkv, proj, fc1, fc2: 12 C^2 multiply-adds per token and row).

Usage: python3 scripts/var_graph_profile.py BUNDLE [THREADS]   (needs numpy and onnxruntime)
"""
import sys, time, numpy as np, onnxruntime as ort
d = sys.argv[1]
def sess(f):
    o = ort.SessionOptions(); o.intra_op_num_threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    return ort.InferenceSession(f"{d}/{f}", o, providers=["CPUExecutionProvider"])
cond, step = sess("var_cond.onnx"), sess("var_step.onnx")
embed, vq = sess("var_embed.onnx"), sess("vq.onnx")
pn = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
B = 2
cache = {f"past_{kv}.{i}": np.zeros((B, 16, 680, 64), np.float32) for i in range(16) for kv in ("key", "value")}
toks = np.zeros((B, 680), np.int64); labels = np.array([207, 1000], np.int64)
t = time.perf_counter(); adaln = cond.run(None, {"labels": labels})[0]; tc = time.perf_counter() - t
pos = 0; rows = []
for si, p in enumerate(pn):
    t = time.perf_counter()
    e = embed.run(None, {"tokens": toks, "scales_done": np.array([si], np.int64), "labels": labels})
    te = time.perf_counter() - t
    x = e[1][:, pos:pos + p * p].copy()
    feeds = {"inputs_embeds": x, "adaln": adaln, "position": np.array([pos], np.int64), **cache}
    t = time.perf_counter()
    out = step.run(None, feeds)
    ts = time.perf_counter() - t
    gflop = 2 * B * p * p * 16 * (3 + 1 + 4 + 4) * 1024 * 1024 / 1e9
    rows.append((si, p * p, te * 1e3, ts * 1e3, gflop / ts))
    pos += p * p
t = time.perf_counter(); vq.run(None, {"f_hat": np.random.randn(1, 32, 16, 16).astype(np.float32)}); tv = time.perf_counter() - t
print("scale tokens embed_ms step_ms step_GFLOP/s(linear layers)")
for r in rows: print("%5d %6d %8.1f %8.1f %8.1f" % r)
print("cond %.0f ms once, sum embed %.0f ms, step %.0f ms, vq %.0f ms" % (tc * 1e3, sum(r[2] for r in rows), sum(r[3] for r in rows), tv * 1e3))
