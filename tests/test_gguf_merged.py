"""``loracord export RUN --gguf --merged``: the base merged with a run's adapter, as one GGUF with a Modelfile.

A real run on the tiny Llama and on the built-in SmolLM2-135M is exported in f16 and q8_0, and each
file is loaded back in llama.cpp (llama-cpp-python): its next-token logits on three prompts are
peft's (base + adapter, not merged) within the tolerances below, its vocabulary tokenizes as
transformers' does, and a GGUF of the plain base written the same way is measurably farther from
peft's logits, so a file that lost the adapter fails.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import train_tiny_text
from tests.llama_cpp_check import PROMPTS, llama_cpp_logits, peft_logits
from tests.test_gguf_export import copy_run
from trainer.errors import UserError
from trainer.text.gguf import ARCHITECTURES, base_folder_of
from trainer.text.gguf_merged import export_merged_gguf, write_full_gguf

# |llama.cpp's logits - peft's| / |peft's change of the logits by the adapter| (L2 over the vocabulary),
# the worst of three prompts, measured on these runs: tiny f16 5e-4, q8_0 1.2%; SmolLM2 f16 1.3%, q8_0 25%
# (the adapter moves SmolLM2's logits by 5-9; q8_0 rounds every weight of 30 layers). The plain base's
# GGUF is ~100% off by this measure.
TOLERANCES = {("tiny", "f16"): 5e-3, ("tiny", "q8_0"): 5e-2, ("smollm2", "f16"): 5e-2, ("smollm2", "q8_0"): 0.5}
TEXTS = ("Hello world", "To be, or not to be", " spaces  and\ttabs\n", "Ünïcödé 🦙 123456", "<|im_start|>user\nhi")


# The runs the tolerances above were measured on: plain LoRA (ratio 1). Under text runs' LoRA+
# default (B at 4x these already large rates) the merged files still passed, but the plain base's
# q8_0 file scored 0.67 on one SmolLM2 prompt against the > 0.8 the last check wants (not looked into).
@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tmp_path_factory):
    return train_tiny_text(tmp_path_factory.mktemp("merged-tiny"), tiny_llama, steps=3, lr=5e-2, eval_every=3,
                           max_new_tokens=2, loraplus_ratio=1.0).run_dir


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    return train_tiny_text(tmp_path_factory.mktemp("merged-smollm2"), "smollm2-135m", steps=2, lr=1e-2,
                           eval_every=2, max_new_tokens=1, batch_size=1, seq_len=32, loraplus_ratio=1.0).run_dir


@pytest.fixture(scope="module")
def exported(tiny_run, smollm2_run, tmp_path_factory):
    """One q8_0 export per base, for the tests that read a file without writing it."""
    made = {}

    def export(name):
        if name not in made:
            run = tiny_run if name == "tiny" else smollm2_run
            made[name] = export_merged_gguf(run, tmp_path_factory.mktemp(f"q8-{name}"), outtype="q8_0")
        return made[name]
    return export


class Reference:
    """peft's logits for a run (base + adapter, unmerged) and the base's folder and tokenizer."""

    def __init__(self, run):
        from peft import PeftModel

        from trainer.models import load_causal_lm

        self.run = run
        self.folder = base_folder_of(json.loads((run / "metrics.json").read_text()))
        model, self.tokenizer = load_causal_lm(self.folder, dtype=torch.float32)
        self.ids = [self.tokenizer(p)["input_ids"] for p in PROMPTS]
        self.base, self.lora = peft_logits(PeftModel.from_pretrained(model, run / "adapter").eval(), self.ids)

    def errors(self, gguf_path) -> list[float]:
        cpp = llama_cpp_logits(gguf_path, None, self.ids)
        return [float(np.linalg.norm(c - hl) / np.linalg.norm(hl - hb)) for c, hl, hb in zip(cpp, self.lora, self.base)]

    def agree(self, gguf_path) -> bool:
        cpp = llama_cpp_logits(gguf_path, None, self.ids)
        return all(int(np.argmax(c)) == int(np.argmax(hl)) for c, hl in zip(cpp, self.lora))


@pytest.fixture(scope="module")
def references(tiny_run, smollm2_run):
    made = {}
    return lambda name: made.setdefault(name, Reference(tiny_run if name == "tiny" else smollm2_run))


@pytest.mark.parametrize("model,outtype", list(TOLERANCES))
def test_llama_cpp_runs_the_merged_file_as_peft_runs_base_and_adapter(references, model, outtype, tmp_path):
    from trainer.models import load_causal_lm

    ref = references(model)
    written = export_merged_gguf(ref.run, tmp_path, outtype=outtype)
    assert written.path == tmp_path / f"merged-{outtype}.gguf" and written.outtype == outtype
    assert written.files == (written.path, tmp_path / "Modelfile") and written.arch == "llama"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.files)  # no .part left
    merged = ref.errors(written.path)
    assert max(merged) < TOLERANCES[model, outtype], merged
    assert ref.agree(written.path)
    # The same writer over the base alone: the adapter is what brings the file to peft's logits.
    plain = write_full_gguf(load_causal_lm(ref.folder, dtype=torch.float32)[0], ref.tokenizer, ref.folder,
                            tmp_path / "plain.gguf", outtype=outtype)
    unmerged = ref.errors(plain)
    assert min(unmerged) > 0.8 and min(unmerged) > 2 * max(merged), (unmerged, merged)


@pytest.mark.parametrize("model", ["tiny", "smollm2"])
def test_the_files_vocabulary_tokenizes_as_transformers_does(references, exported, model):
    import llama_cpp

    ref = references(model)
    path = exported(model).path
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            # as transformers tokenizes by default (special tokens parsed, BOS only where the base adds one)
            assert llm.tokenize(text.encode(), special=True) == ref.tokenizer(text)["input_ids"], text
            assert llm.tokenize(text.encode(), add_bos=False) == ref.tokenizer(text, split_special_tokens=True,
                                                                               add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


def test_smollm2s_modelfile_names_its_chatml_template(exported):
    from gguf import GGUFReader

    written = exported("smollm2")
    text = written.files[1].read_text()
    assert written.chat_template == "ChatML" and "# Chat template: ChatML" in text
    assert "\nFROM ./merged-q8_0.gguf\n" in text and "HuggingFaceTB/SmolLM2-135M-Instruct" in text
    assert ('TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
            '<|im_start|>assistant\n"""') in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text
    assert text.rstrip().endswith('PARAMETER stop "<|im_end|>"')
    template = GGUFReader(written.path).fields["tokenizer.chat_template"].contents()
    assert template == (base_folder_of({"base": "smollm2-135m"}) / "chat_template.jinja").read_text()


def test_a_base_without_a_chat_template_gets_a_plain_modelfile(tiny_run, tmp_path):
    written = export_merged_gguf(tiny_run, tmp_path)
    text = (tmp_path / "Modelfile").read_text()
    assert written.chat_template == "none" and "# Chat template: none" in text and "TEMPLATE" not in text
    assert "\nFROM ./merged-f16.gguf\n" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "/" not in text.splitlines()[0]  # the base is named, not its path on this machine


def test_the_cli_writes_both_files_and_says_how_to_run_them(tiny_run):
    import shutil

    from loracord.cli import app

    result = CliRunner().invoke(app, ["export", str(tiny_run), "--gguf", "--merged", "--outtype", "q8_0"])
    assert result.exit_code == 0, result.output
    assert (tiny_run / "export" / "merged-q8_0.gguf").is_file() and (tiny_run / "export" / "Modelfile").is_file()
    assert "ollama create" in result.output and "llama-cli -m" in result.output and "merged-q8_0.gguf" in result.output
    shutil.rmtree(tiny_run / "export")


def test_the_cli_refuses_an_outtype_without_merged(tiny_run):
    from loracord.cli import app

    result = CliRunner().invoke(app, ["export", str(tiny_run), "--gguf", "--outtype", "q8_0"])
    assert isinstance(result.exception, UserError) and "add --merged" in str(result.exception)  # main() prints it
    assert not (tiny_run / "export").exists()


# ---------------------------------------------------------------- refused, and nothing half written


def test_a_base_the_converter_cannot_write_is_refused_naming_those_it_can(tiny_run, tmp_path):
    run = copy_run(tiny_run, tmp_path, config={"architectures": ["GPT2LMHeadModel"], "num_hidden_layers": 2})
    with pytest.raises(UserError, match="cannot write a merged GGUF for a GPT2LMHeadModel base yet") as caught:
        export_merged_gguf(run, tmp_path / "out")
    assert all(name in str(caught.value) for name in ARCHITECTURES)
    assert not (tmp_path / "out").exists()


def test_a_scaled_rotary_embedding_is_refused(tiny_run, tmp_path):
    config = {**json.loads((base_folder_of(json.loads((tiny_run / "metrics.json").read_text())) / "config.json")
                           .read_text()), "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}
    with pytest.raises(UserError, match=r"scales its rotary embedding \(llama3\).*--gguf without --merged"):
        export_merged_gguf(copy_run(tiny_run, tmp_path, config=config), tmp_path / "out")


@pytest.mark.parametrize("outtype", ["q4_0", "F16", "f32"])
def test_an_unknown_outtype_is_refused(tiny_run, tmp_path, outtype):
    with pytest.raises(UserError, match=f"written as f16 or q8_0, not '{outtype}'"):
        export_merged_gguf(tiny_run, tmp_path, outtype=outtype)


def test_an_image_run_and_a_run_without_adapter_are_refused(tiny_run, tmp_path):
    with pytest.raises(UserError, match="A merged GGUF is for text runs"):
        export_merged_gguf(copy_run(tiny_run, tmp_path / "a", metrics={"kind": "image"}), tmp_path / "out")
    bare = copy_run(tiny_run, tmp_path / "b")
    (bare / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="has no trained adapter yet"):
        export_merged_gguf(bare, tmp_path / "out")


def test_a_dora_adapter_merges(tiny_llama, tmp_path):
    """Only the adapter GGUF refuses DoRA: merged, its magnitudes are in the weights llama.cpp reads."""
    ref = Reference(train_tiny_text(tmp_path, tiny_llama, steps=3, lr=5e-2, eval_every=3, max_new_tokens=2,
                                    dora=True).run_dir)
    assert json.loads((ref.run / "adapter" / "adapter_config.json").read_text())["use_dora"]
    errors = ref.errors(export_merged_gguf(ref.run, tmp_path / "out").path)
    assert max(errors) < TOLERANCES["tiny", "f16"], errors


def test_an_error_while_writing_leaves_no_file(tiny_run, tmp_path, monkeypatch):
    import gguf

    def disk_full(writer, *args, **kwargs):  # stands in for a disk that fills after the header is written
        assert (tmp_path / "merged-q8_0.gguf.part").stat().st_size > 0
        raise OSError("disk full")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="disk full"):
        export_merged_gguf(tiny_run, tmp_path, outtype="q8_0")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- as llama.cpp's converter writes them


def test_smollm2s_header_is_the_one_llama_cpps_converter_wrote_for_the_builtin(exported):
    """The built-in 4-bit file was written by convert_hf_to_gguf.py: every model and tokenizer field it
    holds, the pre-tokenizer's name included, is in the merged file with the same value."""
    from gguf import GGUFReader

    from tests.test_gguf_export import builtin_gguf

    def fields(path):
        return {k: f.contents() for k, f in GGUFReader(path).fields.items()
                if k.startswith(("llama.", "tokenizer.")) and k != "tokenizer.ggml.add_space_prefix"}

    official, ours = fields(builtin_gguf()), fields(exported("smollm2").path)
    assert official["tokenizer.ggml.pre"] == "smollm"
    assert {k: ours.get(k) for k in official} == official


def test_the_tiny_vocabulary_is_written_with_gpt2s_split(tiny_run, tmp_path):
    from gguf import GGUFReader

    reader = GGUFReader(export_merged_gguf(tiny_run, tmp_path).path)
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"


def test_the_check_fails_a_file_with_q_and_k_in_transformers_row_order(references, tmp_path, monkeypatch):
    """Left in transformers' order, SmolLM2's rotary pairs are wrong: measured 68-389% off."""
    import trainer.text.gguf_merged as merged

    monkeypatch.setattr(merged, "_rope_permute", lambda array, heads: array)
    errors = references("smollm2").errors(export_merged_gguf(references("smollm2").run, tmp_path).path)
    assert min(errors) > 10 * TOLERANCES["smollm2", "f16"], errors


def tiny_qwen(folder, tiny_llama, kind):
    """A 2-layer Qwen2 (biased q/k/v) or Qwen3 (q/k norms, heads wider than hidden / heads), random
    weights, with the tiny Llama's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    shape = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    if kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        model = Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=16))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bias", "norm.weight")):  # zeros and ones at init: make them count
                param.add_(torch.randn_like(param) * 0.3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), tokenizer


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_qwen_bases_are_written_as_llama_cpp_reads_them(tiny_llama, tmp_path, kind):
    model, tokenizer = tiny_qwen(tmp_path / kind, tiny_llama, kind)
    path = write_full_gguf(model, tokenizer, tmp_path / kind, tmp_path / f"{kind}.gguf", outtype="f16")
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    with torch.no_grad():
        hf = [model(input_ids=torch.tensor([i])).logits[0, -1].double().numpy() for i in ids]
    for cpp, ref in zip(llama_cpp_logits(path, None, ids), hf):
        assert np.abs(cpp - ref).max() < 1e-2 * np.abs(ref).max(), np.abs(cpp - ref).max()


def test_a_sentencepiece_vocabulary_is_refused(tiny_llama, tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.conftest import TINY_CORPUS
    from trainer.text.gguf_merged import _vocab_kind

    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TINY_CORPUS, trainer=trainers.BpeTrainer(vocab_size=200))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="byte-level BPE vocabularies.*--gguf without --merged"):
        _vocab_kind(tmp_path, tokenizer)
