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


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tmp_path_factory):
    return train_tiny_text(tmp_path_factory.mktemp("merged-tiny"), tiny_llama, steps=3, lr=5e-2, eval_every=3,
                           max_new_tokens=2).run_dir


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory):
    return train_tiny_text(tmp_path_factory.mktemp("merged-smollm2"), "smollm2-135m", steps=2, lr=1e-2,
                           eval_every=2, max_new_tokens=1, batch_size=1, seq_len=32).run_dir


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
def test_the_files_vocabulary_tokenizes_as_transformers_does(references, model, tmp_path):
    import llama_cpp

    ref = references(model)
    path = export_merged_gguf(ref.run, tmp_path, outtype="q8_0").path
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            # as transformers tokenizes by default (special tokens parsed, BOS only where the base adds one)
            assert llm.tokenize(text.encode(), special=True) == ref.tokenizer(text)["input_ids"], text
            assert llm.tokenize(text.encode(), add_bos=False) == ref.tokenizer(text, split_special_tokens=True,
                                                                               add_special_tokens=False)["input_ids"]
    finally:
        llm.close()


def test_smollm2s_modelfile_names_its_chatml_template(smollm2_run, tmp_path):
    from gguf import GGUFReader

    written = export_merged_gguf(smollm2_run, tmp_path, outtype="q8_0")
    text = (tmp_path / "Modelfile").read_text()
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
