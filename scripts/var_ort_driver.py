#!/usr/bin/env python3
"""Drives a VAR bundle with Python onnxruntime and numpy from its bundle.yaml alone.

Proof that the bundle contract is enough for another runtime: this file knows nothing of
llamagen-rs beyond what bundle.yaml and its graphs declare. Greedy (top-k 1) or top-k sampling
with numpy's generator (a different random stream from llamagen-rs: only greedy tokens are
comparable). Writes tokens.npy (int64 [batch, tokens]) and images.npy (float32 [batch, 3, H, W]
in [0, 1], as the official autoregressive_infer_cfg returns them).

Usage: var_ort_driver.py BUNDLE OUT_DIR --labels 1,7 --cfg 1.5 [--top-k 1] [--seed 0]
"""
import argparse
import os

import numpy as np
import onnxruntime as ort
import yaml


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("out")
    ap.add_argument("--labels", default="207")
    ap.add_argument("--cfg", type=float, default=1.5)
    ap.add_argument("--top-k", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    m = yaml.safe_load(open(os.path.join(a.bundle, "bundle.yaml")))
    assert m["family"] == "var", f"not a VAR bundle: family {m['family']}"
    v = m["var"]
    session = {role: ort.InferenceSession(os.path.join(a.bundle, g["file"]))
               for role, g in m["graphs"].items()}
    cond, step = session["var_cond"], session["var_step"]
    embed, decoder = session["var_embed"], session["vq_decoder"]
    cache_shape = {i["name"]: i["shape"] for i in m["graphs"]["var_step"]["inputs"]}

    labels = [int(x) for x in a.labels.split(",")]
    n, total, scales = len(labels), v["tokens"], v["patch_nums"]
    guided = a.cfg != 0
    rows = 2 * n if guided else n
    row_labels = np.array(labels + [m["generation"]["null_class"]] * n if guided else labels, np.int64)
    caches = {}
    for name, shape in cache_shape.items():
        if name.startswith("past_"):
            caches[name] = np.zeros([rows] + shape[1:], np.float32)
    tokens = np.zeros((rows, total), np.int64)
    rng = np.random.default_rng(a.seed)
    adaln = cond.run(["adaln"], {"labels": row_labels})[0]
    begin = 0
    for si, pn in enumerate(scales):
        end = begin + pn * pn
        x = embed.run(["inputs_embeds"], {"tokens": tokens, "scales_done": np.array([si], np.int64),
                                          "labels": row_labels})[0][:, begin:end]
        feeds = {"inputs_embeds": x, "adaln": adaln,
                 "position": np.array([begin], np.int64), **caches}
        names = [o.name for o in step.get_outputs()]
        outs = dict(zip(names, step.run(names, feeds)))
        for name in caches:
            caches[name][:, :, begin:end] = outs[name.replace("past_", "present_")]
        logits = outs["logits"]
        t = a.cfg * si / (len(scales) - 1)
        if guided:
            logits = (1 + t) * logits[:n] - t * logits[n:]
        if a.top_k == 1:
            chosen = logits.argmax(-1)
        else:
            kth = np.sort(logits, -1)[..., -a.top_k][..., None]
            p = np.exp(np.where(logits < kth, -np.inf, logits) - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            chosen = np.array([[rng.choice(p.shape[-1], p=q) for q in row] for row in p])
        tokens[:n, begin:end] = chosen
        if guided:
            tokens[n:, begin:end] = chosen
        begin = end
    f_hat = embed.run(["f_hat"], {"tokens": tokens[:n], "scales_done": np.array([len(scales)], np.int64),
                                  "labels": row_labels[:n]})[0]
    image = decoder.run(["image"], {"f_hat": f_hat})[0]
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "tokens.npy"), tokens[:n])
    np.save(os.path.join(a.out, "images.npy"), ((np.clip(image, -1, 1) + 1) / 2).astype(np.float32))
    print(f"wrote {n} images to {a.out}")


if __name__ == "__main__":
    main()
