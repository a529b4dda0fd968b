#!/usr/bin/env python3
"""Makes tests/golden/tiny-var-variants: the official VAR code's greedy outputs for the model
variants the released checkpoints do not use (shared AdaLN, and the other phi sharings of the
official quantizer), on the tiny model of tests/golden/tiny-var.

Needs torch (CPU is enough), numpy and huggingface_hub (var.py imports its mixin; nothing is
downloaded), and a checkout of FoundationVision/VAR (never vendored here): --var-repo PATH.

Usage: make_var_variant_goldens.py --var-repo /tmp/VAR --out tests/golden/tiny-var-variants

The variants start from the tiny-var weights (--base: its var.pth and vae.pth), so the vendored
files stay small (the VQVAE decoder alone is 10 MB at the smallest width the official
GroupNorm(32) allows):
- shared_aln: `VAR(shared_aln=True)` with tiny-var's VQVAE; the transformer's weights are drawn
  here (seeded) and saved as `<variant>/var.pth`;
- share_quant_resi 0 / 1, quant_resi 0: `VQVAE(share_quant_resi=..., quant_resi=...)` with
  tiny-var's transformer; every VQVAE tensor except the phi convolutions
  (`quantize.quant_resi.*`) is tiny-var's, the phis are drawn here (seeded) and saved as
  `<variant>/vae_quant_resi.pth` (a state dict of just those keys; none for quant_resi 0, whose
  phi is `nn.Identity`). The variant's full `vae.pth` is tiny-var's `vae.pth` without its
  `quantize.quant_resi.*` keys plus these.
Each variant gets `greedy_cfg1.5.{tokens,logits,images}.npy`: `autoregressive_infer_cfg(B=2,
label_B=[1, 7], cfg=1.5, top_k=1, top_p=0)`; tokens and the CFG-combined logits recorded by
wrapping `models.var.sample_with_top_k_top_p_` (the only change to the official loop).
"""
import argparse
import json
import os
import sys

PATCH_NUMS = (1, 2, 3, 4)
LABELS = [1, 7]
CFG = 1.5
PHI_PREFIX = "quantize.quant_resi."

# name -> (VAR kwargs, VQVAE kwargs, what it covers)
VARIANTS = {
    "shared_aln": ({"shared_aln": True}, {},
                   "VAR(shared_aln=True): one SharedAdaLin for all blocks plus each block's ada_gss"),
    "share_quant_resi0": ({}, {"share_quant_resi": 0},
                          "PhiNonShared: one phi per scale (keys quantize.quant_resi.{k})"),
    "share_quant_resi1": ({}, {"share_quant_resi": 1},
                          "PhiShared: one phi for all scales (keys quantize.quant_resi.qresi)"),
    "quant_resi0": ({}, {"quant_resi": 0.0},
                    "quant_resi 0: every phi is nn.Identity (no phi keys)"),
}


# What each kind of variant draws, after torch.manual_seed(seed * 100 + variant index).
DRAWN = {
    True: "VAR.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, "
          "init_std=-1), then shared_ada_lin.1 weight and bias ~ N(0, 0.05), every "
          "blocks.i.ada_gss ~ N(0, 0.3), head.weight ~ N(0, 0.3)",
    False: "phi conv weights ~ N(0, 1/sqrt(fan_in)), biases ~ N(0, 0.02)",
}


def build(torch, VAR, VQVAE, var_kw, vae_kw):
    vae = VQVAE(vocab_size=64, z_channels=8, ch=32, test_mode=True, v_patch_nums=PATCH_NUMS,
                **{"share_quant_resi": 4, "quant_resi": 0.5, **vae_kw})
    var = VAR(vae_local=vae, num_classes=10, depth=2, embed_dim=64, num_heads=4, mlp_ratio=4.0,
              drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, norm_eps=1e-6,
              cond_drop_rate=0.1, attn_l2_norm=True, patch_nums=PATCH_NUMS,
              flash_if_available=False, fused_if_available=False,
              **{"shared_aln": False, **var_kw})
    return vae.eval(), var.eval()


def load_vae(torch, vae, base_sd):
    """tiny-var's VQVAE tensors, except the phis; the phis are drawn (std 1/sqrt(fan_in))."""
    for name, p in vae.named_parameters():
        if name.startswith(PHI_PREFIX):
            fan_in = p.shape[1] * p.shape[2] * p.shape[3] if p.dim() == 4 else 0
            torch.nn.init.normal_(p, std=fan_in ** -0.5 if fan_in else 0.02)
    keep = {k: v for k, v in base_sd.items() if not k.startswith(PHI_PREFIX)}
    missing, unexpected = vae.load_state_dict(keep, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(PHI_PREFIX) for k in missing), missing


def init_shared_aln(torch, var):
    """`init_weights` scales AdaLN gammas by 1e-5 (every block an identity at init); draw the
    shared linear and each block's ada_gss so the blocks matter and parity means something; the
    head at std 0.3 gives logits of the base model's range (about +-7)."""
    var.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    torch.nn.init.normal_(var.shared_ada_lin[1].weight, std=0.05)
    torch.nn.init.normal_(var.shared_ada_lin[1].bias, std=0.05)
    for b in var.blocks:
        torch.nn.init.normal_(b.ada_gss, std=0.3)
    torch.nn.init.normal_(var.head.weight, std=0.3)


def greedy(torch, np, var_module, var):
    """Greedy tokens [B, L], CFG-combined logits [B, L, V] and images [B, 3, H, W] in [0, 1]."""
    tokens, logits = [], []
    official = var_module.sample_with_top_k_top_p_

    def recording(logits_BlV, *args, **kwargs):
        logits.append(logits_BlV.clone())  # the sampler masks its input in place
        idx = official(logits_BlV, *args, **kwargs)
        tokens.append(idx[:, :, 0].clone())
        return idx

    var_module.sample_with_top_k_top_p_ = recording
    try:
        images = var.autoregressive_infer_cfg(B=len(LABELS), label_B=torch.tensor(LABELS),
                                              g_seed=0, cfg=CFG, top_k=1, top_p=0.0)
    finally:
        var_module.sample_with_top_k_top_p_ = official
    return (torch.cat(tokens, 1).numpy().astype(np.int64),
            torch.cat(logits, 1).numpy().astype(np.float32),
            images.numpy().astype(np.float32))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--var-repo", required=True, help="checkout of FoundationVision/VAR")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--base", default=os.path.join(here, "..", "tests", "golden", "tiny-var"),
                    help="the tiny-var goldens (var.pth, vae.pth); default: this checkout's")
    ap.add_argument("--out", required=True)
    # Seed 4: the smallest top-1/top-2 logit gap of the variants with drawn weights is 8e-3
    # (shared_aln 2e-2), so fp16 device runs are not decided by near-ties; quant_resi0 draws
    # nothing (its gap, 1.8e-3, is tiny-var's weights').
    ap.add_argument("--seed", type=int, default=4)
    a = ap.parse_args()

    sys.path.insert(0, os.path.abspath(a.var_repo))
    import numpy as np
    import torch
    import models.var as var_module
    from models.var import VAR
    from models.vqvae import VQVAE

    torch.set_grad_enabled(False)
    base_var = torch.load(os.path.join(a.base, "var.pth"), map_location="cpu")
    base_vae = torch.load(os.path.join(a.base, "vae.pth"), map_location="cpu")
    readme = {
        "what": "Variants of the tiny VAR of ../tiny-var (same sizes) that the released "
                "checkpoints do not use, with outputs of the official FoundationVision/VAR "
                "code (models/var.py autoregressive_infer_cfg).",
        "made_by": "scripts/make_var_variant_goldens.py --var-repo <VAR checkout> "
                   f"--out tests/golden/tiny-var-variants --seed {a.seed} (--base defaults to "
                   "tests/golden/tiny-var; the script checks that tiny-var's own settings on "
                   "those weights reproduce ../tiny-var/greedy_cfg1.5.tokens.npy)",
        "torch": torch.__version__,
        "weights": {
            "var": "<variant>/var.pth if present (torch.save(var.state_dict())), "
                   "else ../tiny-var/var.pth",
            "vae": "../tiny-var/vae.pth where the variant's VQVAE is tiny-var's (shared_aln); "
                   "else ../tiny-var/vae.pth without its quantize.quant_resi.* keys, plus "
                   "<variant>/vae_quant_resi.pth if present (the variant's phi convolutions; "
                   "quant_resi 0 has none)",
        },
        "generation": {"labels": LABELS, "cfg": CFG, "top_k": 1, "top_p": 0.0,
                       "tokens": [2, 30], "logits": [2, 30, 64], "images": [2, 3, 64, 64]},
        "tokens_layout": "scales concatenated in order: 1x1, 2x2, 3x3, 4x4 -> L = 30",
        "logits": "CFG-combined logits each scale was sampled from",
        "images": "autoregressive_infer_cfg output in [0, 1]",
        "variants": {},
    }
    # The released defaults on the base weights must reproduce ../tiny-var's goldens, or the
    # models built here are not the ones tiny-var was made with.
    vae, var = build(torch, VAR, VQVAE, {}, {})
    vae.load_state_dict(base_vae)
    var.load_state_dict(base_var)
    want = np.load(os.path.join(a.base, "greedy_cfg1.5.tokens.npy"))
    assert (greedy(torch, np, var_module, var)[0] == want).all(), "base does not reproduce"
    for i, (name, (var_kw, vae_kw, what)) in enumerate(VARIANTS.items()):
        torch.manual_seed(a.seed * 100 + i)
        vae, var = build(torch, VAR, VQVAE, var_kw, vae_kw)
        if vae_kw:
            load_vae(torch, vae, base_vae)
        else:
            vae.load_state_dict(base_vae)
        out = os.path.join(a.out, name)
        os.makedirs(out, exist_ok=True)
        if var_kw:
            init_shared_aln(torch, var)
            torch.save(var.state_dict(), os.path.join(out, "var.pth"))
        else:
            var.load_state_dict(base_var)
        phis = {k: v for k, v in vae.state_dict().items() if k.startswith(PHI_PREFIX)}
        if vae_kw and phis:
            torch.save(phis, os.path.join(out, "vae_quant_resi.pth"))
        tokens, logits, images = greedy(torch, np, var_module, var)
        np.save(os.path.join(out, "greedy_cfg1.5.tokens.npy"), tokens)
        np.save(os.path.join(out, "greedy_cfg1.5.logits.npy"), logits)
        np.save(os.path.join(out, "greedy_cfg1.5.images.npy"), images)
        readme["variants"][name] = {
            "what": what,
            "VAR": {"shared_aln": False, **var_kw},
            "VQVAE": {"share_quant_resi": 4, "quant_resi": 0.5, **vae_kw},
            "files": sorted(os.listdir(out)),
            "phi_keys": sorted(phis) if vae_kw else "tiny-var's",
            "drawn": DRAWN[bool(var_kw)] if (var_kw or phis) else "nothing",
        }
    with open(os.path.join(a.out, "README.json"), "w") as f:
        json.dump(readme, f, indent=1)
    print(json.dumps({k: v["files"] for k, v in readme["variants"].items()}))


if __name__ == "__main__":
    main()
