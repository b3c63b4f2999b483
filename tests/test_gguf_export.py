"""``loracord export RUN --gguf``: a text adapter in llama.cpp's GGUF LoRA format.

A real tiny Llama run is exported and the file read back with gguf's own ``GGUFReader``: its
header is an adapter's (architecture, ``general.type``, ``adapter.type``, alpha), its tensors are
named and shaped by llama.cpp's converter rules (``blk.N.attn_q.weight.lora_a`` ...), and its
pairs give back peft's own update for every layer, the q and k rows in llama.cpp's rotary order.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import train_tiny_text
from trainer.errors import UserError
from trainer.text.gguf import ARCHITECTURES, _rope_permute, export_gguf, read_safetensors

# peft module -> llama.cpp tensor, per block (convert_hf_to_gguf's names for Llama)
LLAMA_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def text_run(tiny_llama, tmp_path_factory):
    return train_tiny_text(tmp_path_factory.mktemp("gguf-text"), tiny_llama, steps=3, lr=5e-2, alpha=6.0, eval_every=3,
                           max_new_tokens=2).run_dir


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def test_the_file_is_a_llama_cpp_lora_adapter(text_run, tmp_path, tiny_llama):
    from gguf import GGUFReader

    written = export_gguf(text_run, tmp_path)
    assert written.path == tmp_path / "adapter.gguf" and written.arch == "llama" and written.alpha == 6.0
    meta = fields(GGUFReader(written.path))
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora" and meta["adapter.lora.alpha"] == pytest.approx(6.0)

    base = json.loads((tiny_llama / "config.json").read_text())
    expected = {f"blk.{i}.{name}.weight.lora_{ab}" for i in range(base["num_hidden_layers"])
                for name in LLAMA_NAMES.values() for ab in "ab"}
    tensors = {t.name: t for t in GGUFReader(written.path).tensors}
    assert set(tensors) == expected and written.tensors == len(expected)
    hidden, ffn, kv = base["hidden_size"], base["intermediate_size"], base["hidden_size"] // 4 * 2
    outputs = {"attn_q": hidden, "attn_k": kv, "attn_v": kv, "attn_output": hidden, "ffn_gate": ffn, "ffn_up": ffn,
               "ffn_down": hidden}
    inputs = {**{name: hidden for name in outputs}, "ffn_down": ffn}
    for name, tensor in tensors.items():
        kind = name.split(".")[2]
        # numpy order as written: A is (rank, in), B is (out, rank); llama.cpp's ne is the reverse
        shape = (4, inputs[kind]) if name.endswith("lora_a") else (outputs[kind], 4)
        assert tuple(tensor.data.shape) == shape, name
        assert tuple(int(n) for n in tensor.shape) == shape[::-1], name


def test_the_pairs_give_back_peft_s_update_in_llama_cpp_s_row_order(text_run, tmp_path, tiny_llama):
    from gguf import GGUFReader

    tensors = {t.name: np.array(t.data) for t in GGUFReader(export_gguf(text_run, tmp_path).path).tensors}
    peft = read_safetensors(text_run / "adapter" / "adapter_model.safetensors")
    heads = {"attn_q": 4, "attn_k": 2}
    for block in range(2):
        for module, name in LLAMA_NAMES.items():
            key = f"base_model.model.model.layers.{block}.{module}"
            update = peft[f"{key}.lora_B.weight"] @ peft[f"{key}.lora_A.weight"]
            if name in heads:  # llama.cpp's q and k rows are in the converter's rotary order
                update = _rope_permute(update, heads[name])
            got = tensors[f"blk.{block}.{name}.weight.lora_b"] @ tensors[f"blk.{block}.{name}.weight.lora_a"]
            assert np.abs(update).max() > 0, key  # the run trained it
            np.testing.assert_allclose(got, update, rtol=1e-5, atol=1e-7, err_msg=key)


def test_the_rotary_reorder_is_the_base_converters(tiny_llama):
    """The rows of q in the order llama.cpp's rotary embedding pairs them: convert_hf_to_gguf's
    permute maps row (head h, half s, index i) to (head h, index i, half s)."""
    rows = np.arange(32, dtype=np.float32)[:, None]  # 4 heads of 8 rows
    permuted = _rope_permute(rows, 4)[:, 0]
    assert permuted[:8].tolist() == [0, 4, 1, 5, 2, 6, 3, 7] and permuted[8:16].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]


def test_bf16_adapters_read_as_torch_reads_them(tmp_path):
    from safetensors.torch import save_file

    tensor = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"x": tensor, "y": tensor.float()}, str(tmp_path / "a.safetensors"))
    read = read_safetensors(tmp_path / "a.safetensors")
    assert read["x"].dtype == np.float32
    np.testing.assert_array_equal(read["x"], tensor.float().numpy())


def test_cli_writes_the_file_into_the_run(text_run):
    from loracord.cli import app

    shutil.rmtree(text_run / "export", ignore_errors=True)
    result = CliRunner().invoke(app, ["export", str(text_run), "--gguf"])
    assert result.exit_code == 0, result.output
    assert (text_run / "export" / "adapter.gguf").is_file() and "llama, LoRA alpha 6" in result.output
    shutil.rmtree(text_run / "export")


# ---------------------------------------------------------------- what llama.cpp cannot load is refused


def copy_run(run, tmp_path, *, config=None, adapter_config=None, metrics=None):
    copy = shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "export"))
    if adapter_config:
        path = copy / "adapter" / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **adapter_config}))
    if config is not None or metrics is not None:
        saved = json.loads((copy / "metrics.json").read_text())
        base = copy / "base"
        if config is not None:
            base.mkdir()
            (base / "config.json").write_text(json.dumps(config))
            saved["base_path"] = str(base)
        (copy / "metrics.json").write_text(json.dumps({**saved, **(metrics or {})}))
    return copy


def test_a_base_the_converter_cannot_write_is_refused_naming_those_it_can(text_run, tmp_path):
    run = copy_run(text_run, tmp_path, config={"architectures": ["GPT2LMHeadModel"], "num_hidden_layers": 2})
    with pytest.raises(UserError, match="cannot write a GGUF adapter for a GPT2LMHeadModel base yet") as caught:
        export_gguf(run, tmp_path / "out")
    assert all(name in str(caught.value) for name in ARCHITECTURES)
    assert not (tmp_path / "out" / "adapter.gguf").exists()


def test_a_dora_adapter_is_refused(text_run, tmp_path):
    run = copy_run(text_run, tmp_path, adapter_config={"use_dora": True})
    with pytest.raises(UserError, match="llama.cpp cannot load DoRA adapters"):
        export_gguf(run, tmp_path / "out")


def test_an_image_run_is_refused(text_run, tmp_path):
    run = copy_run(text_run, tmp_path, metrics={"kind": "image"})
    with pytest.raises(UserError, match="GGUF is for text adapters"):
        export_gguf(run, tmp_path / "out")


def test_a_cancelled_runs_export_says_which_step_it_holds(text_run, tmp_path):
    run = copy_run(text_run, tmp_path, metrics={"stop_reason": "cancelled", "best_step": 2})
    assert export_gguf(run, tmp_path / "out").note == "The run stopped (cancelled): this is the adapter of step 2."


def test_rslora_scaling_is_folded_into_b(text_run, tmp_path):
    """llama.cpp scales by alpha / rank; peft's rsLoRA by alpha / sqrt(rank): B carries the difference."""
    from gguf import GGUFReader

    plain = {t.name: np.array(t.data) for t in GGUFReader(export_gguf(text_run, tmp_path / "a").path).tensors}
    run = copy_run(text_run, tmp_path, adapter_config={"use_rslora": True})
    rs = {t.name: np.array(t.data) for t in GGUFReader(export_gguf(run, tmp_path / "b").path).tensors}
    name = "blk.0.attn_v.weight.lora_b"
    np.testing.assert_allclose(rs[name], plain[name] * (4 / 4 ** 0.5), rtol=1e-6)


# ---------------------------------------------------------------- llama.cpp loads it and agrees with peft


def test_llama_cpp_applies_the_tiny_llamas_adapter_as_peft_does(text_run, tiny_llama, tmp_path):
    """Base (float32 GGUF) + adapter in llama.cpp against peft: the same logits, to float32 rounding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.llama_cpp_check import (PROMPTS, llama_cpp_logits, peft_logits, relative_change_error,
                                       write_llama_base_gguf)

    base_gguf = write_llama_base_gguf(tiny_llama, tmp_path / "tiny-llama-f32.gguf")
    adapter = export_gguf(text_run, tmp_path).path
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32),
                                      text_run / "adapter").eval()
    hf_base, hf_lora = peft_logits(model, ids)
    cpp_base, cpp_lora = llama_cpp_logits(base_gguf, None, ids), llama_cpp_logits(base_gguf, adapter, ids)
    for cb, hb in zip(cpp_base, hf_base):
        np.testing.assert_allclose(cb, hb, atol=1e-3)  # the base GGUF is the same model
    assert min(np.abs(hl - hb).max() for hl, hb in zip(hf_lora, hf_base)) > 0.05  # the adapter changes the logits
    assert max(relative_change_error(cpp_base, cpp_lora, hf_base, hf_lora)) < 1e-3
    for cl, hl in zip(cpp_lora, hf_lora):
        np.testing.assert_allclose(cl, hl, atol=1e-3)


@pytest.fixture(scope="module")
def smollm2_adapter(tmp_path_factory):
    """A LoRA on every linear layer of the built-in SmolLM2-135M, its B drawn large enough that its change of
    the logits stands well above the 4-bit base's rounding, saved as a run folder a worker writes."""
    from peft import LoraConfig, get_peft_model

    from trainer.models import load_causal_lm, resolve_base

    folder = resolve_base("smollm2-135m")
    model, tokenizer = load_causal_lm(folder, dtype=torch.float32)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    run = tmp_path_factory.mktemp("smollm2") / "run"
    model.save_pretrained(run / "adapter")
    (run / "metrics.json").write_text(json.dumps({"kind": "text", "base": "smollm2-135m", "base_path": str(folder)}))
    return run, model.eval(), tokenizer


def builtin_gguf():
    import importlib.util
    from pathlib import Path

    from trainer.models import BUILTIN_TEXT_MODELS

    module, filename = BUILTIN_TEXT_MODELS["smollm2-135m"]
    return Path(list(importlib.util.find_spec(module).submodule_search_locations)[0]) / filename


# The built-in 4-bit file is the base llama.cpp's own converter wrote; llama.cpp multiplies it with
# activations rounded to 8 bits, while peft runs the same weights dequantized to float32. The LoRA's
# change of the logits agrees within 30% there (L2 over the vocabulary; measured 6-23%); over the same
# weights as a float32 GGUF, within 2% (measured under 1%). Left in transformers' q and k row order, the
# adapter is 42-60% off over the float32 base.
Q4_TOLERANCE, F32_TOLERANCE = 0.3, 0.02


def smollm2_errors(smollm2_adapter, tmp_path, base_gguf):
    from tests.llama_cpp_check import PROMPTS, llama_cpp_logits, peft_logits, relative_change_error

    run, model, tokenizer = smollm2_adapter
    adapter = export_gguf(run, tmp_path).path
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    hf_base, hf_lora = peft_logits(model, ids)
    cpp_base, cpp_lora = llama_cpp_logits(base_gguf, None, ids), llama_cpp_logits(base_gguf, adapter, ids)
    agree = [int(np.argmax(cl)) == int(np.argmax(hl)) for cl, hl in zip(cpp_lora, hf_lora)]
    return relative_change_error(cpp_base, cpp_lora, hf_base, hf_lora), agree


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory):
    from tests.llama_cpp_check import write_llama_base_gguf
    from trainer.models import resolve_base

    return write_llama_base_gguf(resolve_base("smollm2-135m"), tmp_path_factory.mktemp("smollm2-f32") / "f32.gguf")


def test_llama_cpp_applies_a_smollm2_adapter_over_the_builtin_gguf_as_peft_does(smollm2_adapter, tmp_path):
    errors, agree = smollm2_errors(smollm2_adapter, tmp_path, builtin_gguf())
    assert max(errors) < Q4_TOLERANCE, errors
    assert all(agree)


def test_llama_cpp_applies_a_smollm2_adapter_over_a_float32_base_as_peft_does(smollm2_adapter, smollm2_f32, tmp_path):
    errors, agree = smollm2_errors(smollm2_adapter, tmp_path, smollm2_f32)
    assert max(errors) < F32_TOLERANCE, errors
    assert all(agree)


def test_the_smollm2_check_fails_an_adapter_in_the_wrong_row_order(smollm2_adapter, smollm2_f32, tmp_path,
                                                                     monkeypatch):
    import trainer.text.gguf as gguf_export

    monkeypatch.setattr(gguf_export, "_rope_permute", lambda b, heads: b)
    errors, _ = smollm2_errors(smollm2_adapter, tmp_path, smollm2_f32)
    assert min(errors) > 10 * F32_TOLERANCE, errors
