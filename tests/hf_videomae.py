"""Hugging Face transformers' VideoMAE as the independent reference for our ViTs (test-only).

transformers' VideoMAE has no layer scale: a block ``x + gamma * proj(a)`` equals
``x + proj'(a)`` with ``proj'`` = ``diag(gamma) proj``, so the Hugging Face copy carries the
gammas folded into ``attention.output.dense`` and ``output.dense``.
"""

from __future__ import annotations

import pytest
import torch

from r21d.models import build_model, create_spec

HF_LAYER = "videomae.encoder.layer."


def random_vit(name: str, classes: int, clip_len: int, crop: int, seed: int = 0):
    """A ViT with every tensor random: non-zero q/v biases, layer scale away from 1, norms
    away from identity, and a head sharp enough that probabilities are far from uniform."""
    spec = create_spec(
        name, classes, clip_len, crop_size=crop, resize_size=(crop,), layer_scale=True
    )
    model = build_model(spec)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        for block in model.blocks:
            for gamma in (block.gamma_1, block.gamma_2, block.norm1.weight, block.norm2.weight):
                gamma.copy_(torch.rand(gamma.shape, generator=gen) + 0.5)
            block.attn.q_bias.mul_(10)  # ~0.5: large enough to move every attention score
            block.attn.v_bias.mul_(10)
        model.fc_norm.weight.copy_(torch.rand(model.fc_norm.weight.shape, generator=gen) + 0.5)
        model.head.weight.mul_(6)
    return model.eval(), spec


def huggingface_copy(model, spec):
    """``VideoMAEForVideoClassification`` holding ``model``'s weights, written by this test
    from transformers' module names (layer scale folded in, see the module docstring)."""
    transformers = pytest.importorskip("transformers")
    width = model.fc_norm.normalized_shape[0]
    config = transformers.VideoMAEConfig(
        image_size=spec.crop_size,
        patch_size=model.patch_embed.proj.kernel_size[1],
        num_frames=spec.clip_len,
        tubelet_size=2,
        hidden_size=width,
        num_hidden_layers=len(model.blocks),
        num_attention_heads=model.blocks[0].attn.heads,
        intermediate_size=model.blocks[0].mlp.fc1.out_features,
        hidden_act="gelu",
        layer_norm_eps=spec.layer_norm_eps,
        qv_bias=True,
        use_mean_pooling=True,
        num_labels=spec.num_classes,
    )
    hf = transformers.VideoMAEForVideoClassification(config).eval()
    hf.fc_norm.eps = spec.layer_norm_eps  # transformers hard-codes torch's 1e-5 here
    sd = model.state_dict()
    hf.load_state_dict(transformers_layout(model), strict=True)
    # Some transformers 5.x releases loaded q/v biases as zeros without a word: make sure the
    # biases really are inside the reference model.
    loaded = hf.videomae.encoder.layer[0].attention.attention
    assert torch.equal(loaded.query.bias, sd["blocks.0.attn.q_bias"])
    assert torch.equal(loaded.value.bias, sd["blocks.0.attn.v_bias"])
    assert loaded.query.bias.abs().max() > 0.1 and loaded.value.bias.abs().max() > 0.1
    assert loaded.key.bias is None
    return hf


def transformers_layout(model, old_bias_names: bool = False) -> dict[str, torch.Tensor]:
    """``model``'s weights under transformers' ``VideoMAEForVideoClassification`` names
    (layer scale folded in, see the module docstring; ``old_bias_names``: the ``q_bias`` /
    ``v_bias`` names older transformers releases wrote)."""
    sd = model.state_dict()
    out = {
        "videomae.embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "videomae.embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "fc_norm.weight": sd["fc_norm.weight"],
        "fc_norm.bias": sd["fc_norm.bias"],
        "classifier.weight": sd["head.weight"],
        "classifier.bias": sd["head.bias"],
    }
    for i in range(len(model.blocks)):
        ours, theirs = f"blocks.{i}.", f"{HF_LAYER}{i}."
        attention = theirs + "attention.attention."
        q, k, v = sd[ours + "attn.qkv.weight"].chunk(3)
        width = q.shape[0]
        g1 = sd.get(ours + "gamma_1", torch.ones(width))
        g2 = sd.get(ours + "gamma_2", torch.ones(width))
        q_bias, v_bias = ("q_bias", "v_bias") if old_bias_names else ("query.bias", "value.bias")
        out |= {
            attention + "query.weight": q,
            attention + "key.weight": k,
            attention + "value.weight": v,
            attention + q_bias: sd[ours + "attn.q_bias"],
            attention + v_bias: sd[ours + "attn.v_bias"],
            theirs + "attention.output.dense.weight": g1[:, None] * sd[ours + "attn.proj.weight"],
            theirs + "attention.output.dense.bias": g1 * sd[ours + "attn.proj.bias"],
            theirs + "intermediate.dense.weight": sd[ours + "mlp.fc1.weight"],
            theirs + "intermediate.dense.bias": sd[ours + "mlp.fc1.bias"],
            theirs + "output.dense.weight": g2[:, None] * sd[ours + "mlp.fc2.weight"],
            theirs + "output.dense.bias": g2 * sd[ours + "mlp.fc2.bias"],
        }
        for norm, hf_norm in (("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
            out[theirs + hf_norm + ".weight"] = sd[ours + norm + ".weight"]
            out[theirs + hf_norm + ".bias"] = sd[ours + norm + ".bias"]
    return {key: value.clone().contiguous() for key, value in out.items()}


def huggingface_probs(hf, frames: torch.Tensor, spec) -> torch.Tensor:
    """Probabilities of uint8 frames (N, T, H, W, 3), normalised here with the spec's values
    and laid out as transformers wants: (N, T, 3, H, W)."""
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    pixels = ((frames.float() - mean) / std).permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        return hf(pixel_values=pixels).logits.softmax(-1)
