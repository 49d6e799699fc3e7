"""Tiny diffusers models from configs (UNet, Flux, SD3, a CLIP text encoder) and LoRA files for them, written by
diffusers itself or, for kohya's layout, by our own code with the key names kohya's networks/lora.py uses."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import CLIPTextConfig, CLIPTextModel

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, norm_num_groups=4, attention_head_dim=2,
    ).eval()  # fmt: skip


def tiny_flux() -> FluxTransformer2DModel:
    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=4, num_attention_heads=2,
        joint_attention_dim=8, pooled_projection_dim=8, axes_dims_rope=(0, 2, 2),
    ).eval()  # fmt: skip


def tiny_sd3() -> SD3Transformer2DModel:
    torch.manual_seed(0)
    return SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=4, num_attention_heads=2,
        caption_projection_dim=8, joint_attention_dim=8, pooled_projection_dim=8, out_channels=4,
    ).eval()  # fmt: skip


def tiny_text_encoder() -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=50, hidden_size=12, intermediate_size=24, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=16)  # fmt: skip
    return CLIPTextModel(config).eval()


# model kind -> (builder, pipeline whose LoRA loader reads its files, component prefix)
KINDS = {
    "unet": (tiny_unet, StableDiffusionPipeline, "unet"),
    "flux": (tiny_flux, FluxPipeline, "transformer"),
    "sd3": (tiny_sd3, StableDiffusion3Pipeline, "transformer"),
}


def model_output(kind: str, model: torch.nn.Module) -> torch.Tensor:
    """One forward pass of a tiny model on fixed inputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if kind == "unet":
            x, text = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 3, 12, generator=g)
            return model(x, torch.tensor([10]), encoder_hidden_states=text).sample
        if kind == "sd3":
            x, text, pooled = (
                torch.randn(1, 4, 8, 8, generator=g),
                torch.randn(1, 3, 8, generator=g),
                torch.randn(1, 8, generator=g),
            )
            return model(
                hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=torch.tensor([10])
            ).sample
        x, text, pooled = (
            torch.randn(1, 16, 4, generator=g),
            torch.randn(1, 3, 8, generator=g),
            torch.randn(1, 8, generator=g),
        )
        img_ids, txt_ids = torch.zeros(16, 3), torch.zeros(3, 3)
        img_ids[:, 1], img_ids[:, 2] = torch.arange(16) // 4, torch.arange(16) % 4
        t = torch.tensor([0.5])
        return model(hidden_states=x, encoder_hidden_states=text, pooled_projections=pooled, timestep=t,
                     img_ids=img_ids, txt_ids=txt_ids).sample  # fmt: skip


def diffusers_lora_file(kind: str, folder: Path, *, r: int, alpha: float, header: bool = True, **config) -> Path:
    """A LoRA trained-looking file for a tiny model, saved by the pipeline's own save_lora_weights (with the
    `lora_adapter_metadata` header its trainers write, or without)."""
    build, pipeline, component = KINDS[kind]
    model = build()
    lora = LoraConfig(r=r, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=ATTENTION, **config)
    model.add_adapter(lora)
    with torch.no_grad():
        g = torch.Generator().manual_seed(2)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    kwargs = {f"{component}_lora_layers": get_peft_model_state_dict(model)}
    if header:
        kwargs[f"{component}_lora_adapter_metadata"] = lora.to_dict()
    pipeline.save_lora_weights(folder, **kwargs)
    return folder / "pytorch_lora_weights.safetensors"


def load_with_diffusers(kind: str, file: Path) -> torch.nn.Module:
    """A fresh tiny model with `file` loaded the way a diffusers user loads it (the pipeline's own loader)."""
    build, pipeline, component = KINDS[kind]
    model = build()
    state_dict, *alphas, metadata = pipeline.lora_state_dict(file, return_lora_metadata=True)
    if kind == "unet":
        pipeline.load_lora_into_unet(state_dict, alphas[0], model, metadata=metadata)
    elif kind == "flux":
        pipeline.load_lora_into_transformer(state_dict, None, model, metadata=metadata)
    else:
        pipeline.load_lora_into_transformer(state_dict, model, metadata=metadata)
    return model
