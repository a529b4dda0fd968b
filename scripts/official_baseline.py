#!/usr/bin/env python3
"""Runs the official LlamaGen PyTorch code on this machine, for side-by-side comparisons.

Needs torch and a checkout of FoundationVision/LlamaGen (never vendored here): pass its path with
--llamagen-repo. Writes official-format checkpoints with seeded random weights (so our compiler
can compile the very same weights), times the official generate() and decode_code(), and saves
greedy tokens for a parity check. Prints one JSON object.
"""
import argparse
import json
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llamagen-repo", required=True)
    ap.add_argument("--out", required=True, help="folder for checkpoints and outputs")
    ap.add_argument("--gpt-model", default="GPT-B")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--labels", default="207")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-vq", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", default="none", choices=["none", "fp16", "bf16"],
                    help="GPT dtype, as the official sample_c2i.py --precision (its default is bf16)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile(mode='reduce-overhead', fullgraph=True), as sample_c2i.py --compile")
    ap.add_argument("--reuse-ckpt", action="store_true",
                    help="load gpt.pt / vq.pt from --out instead of writing new random ones")
    a = ap.parse_args()

    sys.path.insert(0, os.path.abspath(a.llamagen_repo))
    import numpy as np
    import torch
    from autoregressive.models.gpt import GPT_models
    from autoregressive.models.generate import generate
    from tokenizer.tokenizer_image.vq_model import VQ_models

    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    latent = a.image_size // 16
    gpt = GPT_models[a.gpt_model](vocab_size=16384, block_size=latent**2, num_classes=1000,
                                  cls_token_num=1, model_type="c2i").eval()
    vq = VQ_models["VQ-16"](codebook_size=16384, codebook_embed_dim=8).eval()
    gpt_ckpt = os.path.join(a.out, "gpt.pt")
    vq_ckpt = os.path.join(a.out, "vq.pt")
    if a.reuse_ckpt:
        gpt.load_state_dict(torch.load(gpt_ckpt, map_location="cpu")["model"], strict=False)
        vq.load_state_dict(torch.load(vq_ckpt, map_location="cpu")["model"])
    else:
        # The official init zeroes the output layer (uniform logits); give it weights so that
        # greedy decoding and parity checks mean something.
        torch.nn.init.normal_(gpt.output.weight, std=0.02)
        torch.save({"model": gpt.state_dict()}, gpt_ckpt)
        torch.save({"model": vq.state_dict()}, vq_ckpt)
    dtype = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[a.precision]
    gpt = gpt.to(device=a.device, dtype=dtype)
    vq = vq.to(a.device)
    if a.compile:
        gpt = torch.compile(gpt, mode="reduce-overhead", fullgraph=True)
    cuda = a.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    labels = torch.tensor([int(x) for x in a.labels.split(",")], device=a.device)
    n_tokens = latent**2
    # Warm-up with the same shapes, then timed runs.
    generate(gpt, labels, n_tokens, cfg_scale=a.cfg_scale, temperature=1.0, top_k=a.top_k, top_p=1.0)
    gen_s = []
    for _ in range(a.runs):
        sync()
        t = time.perf_counter()
        tokens = generate(gpt, labels, n_tokens, cfg_scale=a.cfg_scale, temperature=1.0,
                          top_k=a.top_k, top_p=1.0, sample_logits=True)
        sync()
        gen_s.append(time.perf_counter() - t)
    greedy = generate(gpt, labels, n_tokens, cfg_scale=a.cfg_scale, top_k=1)
    np.save(os.path.join(a.out, "greedy.tokens.npy"), greedy.cpu().numpy().astype(np.int64))

    vq_s = None
    if not a.skip_vq:
        qz = [len(labels), 8, latent, latent]
        vq.decode_code(tokens, qz)
        sync()
        t = time.perf_counter()
        vq.decode_code(tokens, qz)
        sync()
        vq_s = time.perf_counter() - t
    gen = sorted(gen_s)[len(gen_s) // 2]
    print(json.dumps({
        "impl": "official-pytorch", "torch": torch.__version__, "threads": a.threads,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "precision": a.precision,
        "compile": a.compile,
        "gpt_model": a.gpt_model, "image_size": a.image_size, "batch": len(labels),
        "cfg_scale": a.cfg_scale, "gpt_ms": gen * 1e3, "ms_per_token": gen * 1e3 / n_tokens,
        "vq_ms": None if vq_s is None else vq_s * 1e3,
        "gpt_ckpt": gpt_ckpt, "vq_ckpt": vq_ckpt,
    }))


if __name__ == "__main__":
    main()
