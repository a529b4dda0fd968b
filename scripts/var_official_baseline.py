#!/usr/bin/env python3
"""Runs the official VAR PyTorch code on this machine, for side-by-side comparisons.

Needs torch (plain `pip install torch`; CPU is enough) and huggingface_hub (var.py imports its
PyTorchModelHubMixin; nothing here downloads anything), and a checkout of FoundationVision/VAR
(never vendored here) with its `models/`, `dist.py` and `utils/`: pass its path with --var-repo.

What it does:
1. builds VAR-d<depth> and the released VQVAE exactly as `models.build_vae_var` does (that very
   function: patch_nums 1..16, V 4096, Cvae 32, ch 160, share_quant_resi 4, 1000 classes,
   attn_l2_norm, flash/fused off as on a machine without them), with seeded random weights:
   `build_vae_var` skips the VQVAE's init (the real weights are loaded afterwards), so the
   VQVAE's convolutions are drawn here (std 1/sqrt(fan_in), keeping activations O(1)); VAR keeps
   `init_weights`, except that the AdaLN gammas and the head get std 0.02 (the official init makes
   them ~1e-5 scaled, so every block would be an identity and greedy parity would mean little);
2. saves `var.pth` / `vae.pth` (`torch.save(model.state_dict())`, the released files' format) so
   our compiler compiles the very same weights;
3. times `autoregressive_infer_cfg(B, label, cfg, top_k, top_p)` (VQVAE decode included) after a
   warm-up, on CPU with --threads threads, or with --device cuda as the official demo runs it
   (fp16 autocast, flash attention and fused kernels where installed), and the VQVAE decode alone;
4. runs it greedily (top_k 1) and saves the tokens `[B, 680]` (int64, scales concatenated) as
   `greedy.tokens.npy`, and with --device cuda also without autocast (fp32) as
   `greedy_fp32.tokens.npy`: the script wraps `models.var.sample_with_top_k_top_p_` to record
   the tokens it returns (the only change to the official loop, and only for these runs).

Prints one JSON object on the last line.
"""
import argparse
import json
import os
import sys
import time


def seeded_vae_init(vae, torch):
    """Random VQVAE weights (build_vae_var leaves the convolutions uninitialised)."""
    for name, p in vae.named_parameters():
        if p.dim() == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            torch.nn.init.normal_(p, std=fan_in ** -0.5)
        elif name == "quantize.embedding.weight":
            torch.nn.init.normal_(p, std=1.0)
        elif ".norm" in name and name.endswith(".weight"):
            torch.nn.init.normal_(p, mean=1.0, std=0.05)
        else:
            torch.nn.init.normal_(p, std=0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--var-repo", required=True, help="checkout of FoundationVision/VAR")
    ap.add_argument("--out", required=True, help="folder for checkpoints and outputs")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--labels", default="207")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--top-k", type=int, default=900)
    ap.add_argument("--top-p", type=float, default=0.96)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: the official demo's settings (fp16 autocast, flash/fused if present)")
    ap.add_argument("--reuse-ckpt", action="store_true",
                    help="load var.pth / vae.pth from --out instead of writing new random ones")
    ap.add_argument("--no-save", action="store_true",
                    help="time only: write no checkpoints and no tokens (needs no disk)")
    ap.add_argument("--keys-only", action="store_true",
                    help="print the official state-dict keys, shapes and dtypes as JSON and stop")
    a = ap.parse_args()

    sys.path.insert(0, os.path.abspath(a.var_repo))
    import numpy as np
    import torch
    import models.var as var_module
    from models import build_vae_var

    torch.set_num_threads(a.threads)
    torch.set_grad_enabled(False)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    gpu = a.device == "cuda"
    vae, var = build_vae_var(
        device=a.device, patch_nums=patch_nums, V=4096, Cvae=32, ch=160, share_quant_resi=4,
        num_classes=1000, depth=a.depth, shared_aln=False, attn_l2_norm=True,
        flash_if_available=gpu, fused_if_available=gpu,
    )
    if a.keys_only:
        out = {}
        for what, m in (("var", var), ("vae", vae)):
            out[what] = [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                         for k, v in m.state_dict().items()]
        print(json.dumps(out))
        return
    var_ckpt = os.path.join(a.out, "var.pth")
    vae_ckpt = os.path.join(a.out, "vae.pth")
    if a.reuse_ckpt:
        vae.load_state_dict(torch.load(vae_ckpt, map_location=a.device))
        var.load_state_dict(torch.load(var_ckpt, map_location=a.device))
    else:
        seeded_vae_init(vae, torch)
        for b in var.blocks:
            torch.nn.init.normal_(b.ada_lin[-1].weight, std=0.02)
        torch.nn.init.normal_(var.head.weight, std=0.02)
        if not a.no_save:
            # CPU tensors, as the released files hold.
            torch.save({k: v.cpu() for k, v in var.state_dict().items()}, var_ckpt)
            torch.save({k: v.cpu() for k, v in vae.state_dict().items()}, vae_ckpt)
    var.eval()
    vae.eval()

    labels = [int(x) for x in a.labels.split(",")]
    B = len(labels)
    label_B = torch.tensor(labels, dtype=torch.long, device=a.device)

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def infer(top_k, top_p, autocast=gpu):
        with torch.autocast("cuda", enabled=autocast, dtype=torch.float16, cache_enabled=True):
            out = var.autoregressive_infer_cfg(B=B, label_B=label_B, g_seed=a.seed,
                                               cfg=a.cfg_scale, top_k=top_k, top_p=top_p)
        sync()
        return out

    infer(a.top_k, a.top_p)  # warm-up, same shapes
    times = []
    for _ in range(a.runs):
        t = time.perf_counter()
        images = infer(a.top_k, a.top_p)
        times.append(time.perf_counter() - t)
    assert images.shape == (B, 3, 256, 256), images.shape

    f_hat = torch.randn(B, 32, 16, 16, device=a.device)
    vae.fhat_to_img(f_hat)
    sync()
    t = time.perf_counter()
    vae.fhat_to_img(f_hat)
    sync()
    vq_s = time.perf_counter() - t

    # Greedy tokens: record what the official sampler returns at each scale.
    recorded = []
    official_sampler = var_module.sample_with_top_k_top_p_

    def recording_sampler(*args, **kwargs):
        idx = official_sampler(*args, **kwargs)
        recorded.append(idx[:, :, 0].clone())
        return idx

    def greedy_tokens(autocast):
        recorded.clear()
        var_module.sample_with_top_k_top_p_ = recording_sampler
        try:
            infer(1, 0.0, autocast)
        finally:
            var_module.sample_with_top_k_top_p_ = official_sampler
        tokens = torch.cat(recorded, dim=1).cpu().numpy().astype(np.int64)
        assert tokens.shape == (B, sum(p * p for p in patch_nums)), tokens.shape
        return tokens

    greedy = greedy_tokens(gpu)
    if not a.no_save:
        np.save(os.path.join(a.out, "greedy.tokens.npy"), greedy)
        if gpu:
            # The same run in fp32 (no autocast): how far the official fp16 run itself strays.
            np.save(os.path.join(a.out, "greedy_fp32.tokens.npy"), greedy_tokens(False))

    total = sorted(times)[len(times) // 2]
    print(json.dumps({
        "impl": "official-pytorch", "torch": torch.__version__, "threads": a.threads,
        "device": a.device, "model": f"VAR-d{a.depth} + VQVAE-ch160v4096z32", "image_size": 256,
        "batch": B, "labels": labels, "cfg_scale": a.cfg_scale, "top_k": a.top_k,
        "top_p": a.top_p, "runs": a.runs, "total_ms": total * 1e3, "vq_ms": vq_s * 1e3,
        "var_ckpt": var_ckpt, "vae_ckpt": vae_ckpt,
    }))


if __name__ == "__main__":
    main()
