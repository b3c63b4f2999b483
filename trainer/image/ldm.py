"""Diffusers' component weights renamed into the original Stable Diffusion ("ldm") checkpoint layout.

Single-checkpoint tools (AUTOMATIC1111, ComfyUI, Forge, diffusers' ``from_single_file``) read one
safetensors file whose keys follow the original repositories: ``model.diffusion_model.*`` for the
UNet, ``first_stage_model.*`` for the VAE and ``cond_stage_model.*`` (SD 1.x/2.x) or
``conditioner.embedders.N.*`` (SDXL) for the text encoders. The renaming is the inverse of
diffusers' ``single_file_utils`` readers (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_open_clip_checkpoint``), as diffusers' scripts
``convert_diffusers_to_original_stable_diffusion.py`` and ``..._sdxl.py`` do for the real models;
here the UNet's and VAE's block counts come from their configs, so any size converts, the tiny
test pipelines included. A key no rule places raises ``TrainingError``: a file missing weights is
never written.
"""

from __future__ import annotations

from ..errors import TrainingError

# ResNet blocks name their layers after the original's nn.Sequential indices
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_UNET_TOP = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def _first(rest: str, names: dict) -> str:
    """``rest`` with its leading layer name (one or two dotted parts) renamed as ``names`` says."""
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _place(state: dict, rules: list[tuple[str, str, dict]], what: str) -> dict:
    """Rename every key by the first rule (diffusers prefix, ldm prefix, inner renames) whose prefix it has."""
    out = {}
    for key, tensor in state.items():
        rule = next((r for r in rules if key.startswith(r[0])), None)
        if rule is None:
            raise TrainingError(f"The {what}'s weight {key!r} has no place in the original Stable Diffusion layout; "
                                "this base cannot be written as a single checkpoint.")
        prefix, ldm, inner = rule
        out[ldm + _first(key[len(prefix):], inner)] = tensor
    return out


def unet(state: dict, config) -> dict:
    """A ``UNet2DConditionModel``'s weights, ldm-named (without the ``model.diffusion_model.`` prefix)."""
    per = int(config["layers_per_block"])  # input blocks per down block: that many layers, then a downsampler
    rules = [(old, new, {}) for old, new in _UNET_TOP.items()]
    down, up = config["down_block_types"], config["up_block_types"]
    for i in range(len(down)):
        for j in range(per):
            at = 1 + i * (per + 1) + j
            rules += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{at}.0.", _UNET_RESNET),
                      (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{at}.1.", {})]
        rules.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per + 1)}.0.op.", {}))
    for i, kind in enumerate(up):
        for j in range(per + 1):
            rules += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (per + 1) + j}.0.", _UNET_RESNET),
                      (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (per + 1) + j}.1.", {})]
        upsampler = 2 if "CrossAttn" in kind else 1  # after the block's last resnet (and its attention, if any)
        rules.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (per + 1) + per}.{upsampler}.", {}))
    rules += [("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
              ("mid_block.attentions.0.", "middle_block.1.", {}),
              ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET)]
    return _place(state, rules, "UNet")


def vae(state: dict, config) -> dict:
    """An ``AutoencoderKL``'s weights, ldm-named (without ``first_stage_model.``). The original's mid-block
    attention is made of 1x1 convolutions, so its projections get two trailing unit dimensions."""
    blocks = len(config["up_block_types"])
    rules = [(f"{side}.conv_norm_out.", f"{side}.norm_out.", {}) for side in ("encoder", "decoder")]
    for side in ("encoder", "decoder"):
        rules += [(f"{side}.mid_block.resnets.{j}.", f"{side}.mid.block_{j + 1}.", _VAE_RESNET) for j in range(2)]
        rules.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", _VAE_ATTENTION))
    for i in range(len(config["down_block_types"])):
        rules += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", {}),
                  (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", {})]
    for i in range(blocks):  # the original numbers the decoder's blocks from the bottom
        rules += [(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{blocks - 1 - i}.block.", {}),
                  (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{blocks - 1 - i}.upsample.", {})]
    rules += [(p, p, {}) for p in ("encoder.conv_", "decoder.conv_", "quant_conv.", "post_quant_conv.")]
    out = {}
    for key, tensor in _place(state, rules, "VAE").items():
        key = key.replace(".conv_shortcut.", ".nin_shortcut.")
        attention = ".mid.attn_1." in key and key.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight"))
        out[key] = tensor.reshape(*tensor.shape, 1, 1) if attention and tensor.dim() == 2 else tensor
    return out


def clip(state: dict) -> dict:
    """A transformers CLIP text encoder as the original keeps OpenAI's CLIP: transformers' own names under
    ``text_model.`` (which transformers 5.6+ leaves out of a plain ``CLIPTextModel``'s state dict)."""
    return {(k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k): v
            for k, v in state.items()}


def open_clip(state: dict) -> dict:
    """A transformers CLIP text encoder in OpenCLIP's names (SD 2.x's and SDXL's second encoder): fused
    q/k/v ``in_proj`` weights, ``resblocks``, and the projection as a plain (hidden, projection) matrix."""
    import torch

    out, qkv = {}, {}
    for key, tensor in state.items():
        key = key.removeprefix("text_model.")
        if key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.split(".", 1)[1]] = tensor
        elif key.startswith("encoder.layers."):
            layer, rest = key[len("encoder.layers."):].split(".", 1)
            base = f"transformer.resblocks.{layer}."
            if rest.startswith(("self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.")):
                qkv.setdefault((base, rest.rsplit(".", 1)[1]), {})[rest[len("self_attn.")]] = tensor
            else:
                out[base + _first(rest, _OPEN_CLIP_LAYER)] = tensor
        elif not key.endswith("position_ids"):
            raise TrainingError(f"The text encoder's weight {key!r} has no place in OpenCLIP's layout.")
    for (base, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise TrainingError(f"The text encoder's layer {base} lacks one of its q, k, v projections.")
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}
