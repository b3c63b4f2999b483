"""``loracord publish RUN --repo USER/NAME``: the adapter and its card go to the Hub in one commit, or nothing does.

No machine here reaches the Hugging Face Hub, so the uploads go to a local stand-in for its
HTTP API (``tests.hub_standin``: a threaded http.server answering the calls huggingface_hub
makes), set through ``HF_ENDPOINT``; huggingface_hub's own client code runs unchanged against
it, and the card is read back by huggingface_hub's own card parser. A real tiny text run is
published and loaded back with peft from what the stand-in stored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from tests.conftest import train_tiny_text
from tests.hub_standin import READ_TOKEN, TOKEN, hub  # noqa: F401 (the stand-in Hub, a fixture)
from trainer.publish import PublishError, check_repo_name, publish_folder, stage_run



@pytest.fixture(scope="module")
def text_run(tiny_llama, tmp_path_factory):
    return train_tiny_text(tmp_path_factory.mktemp("publish-text"), tiny_llama).run_dir


def stage(run: Path, tmp_path: Path, repo: str = "alice/fox-lora", **kw) -> Path:
    return stage_run(run, repo, tmp_path / "staged", **kw)


# ---------------------------------------------------------------- a run goes up whole


def test_a_run_is_published_in_one_commit_with_a_card_the_hub_parser_reads(hub, text_run, tmp_path, tiny_llama):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    published = publish_folder(stage(text_run, tmp_path), "alice/fox-lora", private=True)
    assert published.created and hub.private["alice/fox-lora"] is True
    stored = hub.repos["alice/fox-lora"]
    assert sorted(stored) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert stored["adapter_model.safetensors"] == (text_run / "adapter" / "adapter_model.safetensors").read_bytes()
    commits = [c for c in hub.calls if "/commit/" in c]
    assert commits == ["POST /api/models/alice/fox-lora/commit/main"]  # one commit holds every file
    assert any(c.startswith("PUT /lfs-upload/") for c in hub.calls)  # the weights went up by LFS
    assert hub.calls.index("GET /api/whoami-v2") < hub.calls.index("POST /api/repos/create")

    card = ModelCard(stored["README.md"].decode())
    assert card.data.library_name == "peft" and "loracord" in card.data.tags
    assert 'PeftModel.from_pretrained(base, "alice/fox-lora")' in card.text
    for heading in ("## How to load it", "## Training settings", "## Data", "## Results", "## Samples", "## Licence"):
        assert heading in card.text
    assert "llama-cli -m base.gguf --lora adapter.gguf" in card.text
    assert "the training files themselves are not published" in card.text

    downloaded = tmp_path / "downloaded"  # what someone gets from the Hub loads with peft
    downloaded.mkdir()
    for name, data in stored.items():
        (downloaded / name).write_bytes(data)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), downloaded)
    assert model.peft_config["default"].r == 4


def test_an_existing_repository_gets_a_new_commit(hub, text_run, tmp_path):
    hub.repos["alice/fox-lora"] = {"old.txt": b"kept"}
    published = publish_folder(stage(text_run, tmp_path), "alice/fox-lora")
    assert not published.created
    assert "README.md" in hub.repos["alice/fox-lora"] and hub.repos["alice/fox-lora"]["old.txt"] == b"kept"


def test_an_organization_the_token_may_write_is_a_namespace(hub, text_run, tmp_path):
    publish_folder(stage(text_run, tmp_path, "foxes/fox-lora"), "foxes/fox-lora")
    assert "adapter_model.safetensors" in hub.repos["foxes/fox-lora"]


def test_the_training_files_go_up_only_when_asked(hub, text_run, tmp_path):
    from trainer.publish import training_files

    staged = stage(text_run, tmp_path, data=training_files(text_run))
    assert (staged / "data" / "texts.txt").is_file()
    publish_folder(staged, "alice/fox-lora")
    stored = hub.repos["alice/fox-lora"]
    assert "data/texts.txt" in stored
    assert "published with the adapter, under `data/` (1 files)" in stored["README.md"].decode()


def test_a_gguf_export_is_published_beside_the_adapter(hub, text_run, tmp_path):
    shutil.rmtree(text_run / "export", ignore_errors=True)
    (text_run / "export").mkdir()
    (text_run / "export" / "adapter.gguf").write_bytes(b"GGUF stand-in bytes")
    try:
        publish_folder(stage(text_run, tmp_path), "alice/fox-lora")
    finally:
        shutil.rmtree(text_run / "export")
    stored = hub.repos["alice/fox-lora"]
    assert stored["adapter.gguf"] == b"GGUF stand-in bytes"
    assert "`adapter.gguf` beside this card is the adapter in llama.cpp's GGUF LoRA format" in stored["README.md"].decode()


def test_cli_publishes_a_run(hub, text_run):
    from loracord.cli import app

    result = CliRunner().invoke(app, ["publish", str(text_run), "--repo", "alice/cli-lora"])
    assert result.exit_code == 0, result.output
    assert f"published 3 files to {hub.endpoint}/alice/cli-lora" in result.output
    assert "adapter_model.safetensors" in hub.repos["alice/cli-lora"]


# ---------------------------------------------------------------- or nothing goes up


@pytest.mark.parametrize("name", ["fox-lora", "alice/", "/fox", "alice/fox/lora", "alice/fox lora", "al ice/fox",
                                  "alice/fox..lora", "alice/-fox", "alice/fox.git", ""])
def test_a_name_that_is_not_user_slash_name_is_refused(name):
    with pytest.raises(PublishError, match="give it as USER/NAME"):
        check_repo_name(name)


def test_without_a_token_nothing_is_sent(hub, text_run, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(PublishError, match="No Hugging Face token: set HF_TOKEN to a token with write access"):
        publish_folder(stage(text_run, tmp_path), "alice/fox-lora")
    assert hub.calls == [] and hub.repos == {}


@pytest.mark.parametrize("token, repo, said", [
    ("hf_unknown", "alice/fox-lora", "The Hub does not accept this token"),
    (READ_TOKEN, "alice/fox-lora", "The token (HF_TOKEN) of alice can only read"),
    (TOKEN, "bob/fox-lora", "belongs to alice, who cannot write in 'bob': publish as alice/fox-lora"),
    (TOKEN, "owls/fox-lora", "belongs to alice, who cannot write in 'owls'"),
])
def test_a_token_that_cannot_write_there_creates_nothing(hub, text_run, tmp_path, monkeypatch, token, repo, said):
    monkeypatch.setenv("HF_TOKEN", token)
    with pytest.raises(PublishError, match=re_escape(said)) as caught:
        publish_folder(stage(text_run, tmp_path, repo), repo)
    assert "Nothing was uploaded" in str(caught.value)
    assert hub.calls == ["GET /api/whoami-v2"] and hub.repos == {}


def test_a_failed_commit_leaves_no_repository_it_created(hub, text_run, tmp_path):
    hub.fail_commit = True
    with pytest.raises(PublishError, match=r"The Hub refused the upload to alice/fox-lora \(422: .*Nothing was published"):
        publish_folder(stage(text_run, tmp_path), "alice/fox-lora")
    assert hub.repos == {} and "DELETE /api/repos/delete" in hub.calls


def test_a_failed_commit_to_an_existing_repository_leaves_it_as_it_was(hub, text_run, tmp_path):
    hub.repos["alice/fox-lora"] = {"old.txt": b"kept"}
    hub.fail_commit = True
    with pytest.raises(PublishError, match="Nothing was published"):
        publish_folder(stage(text_run, tmp_path), "alice/fox-lora")
    assert hub.repos == {"alice/fox-lora": {"old.txt": b"kept"}} and "DELETE /api/repos/delete" not in hub.calls


def test_an_unreachable_hub_is_said_so(hub, text_run, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(PublishError, match="The Hugging Face Hub cannot be reached from here"):
        publish_folder(stage(text_run, tmp_path), "alice/fox-lora")
    assert hub.repos == {}


def test_a_folder_without_loracords_card_is_refused_before_the_hub(hub, tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# someone else's card\n")
    with pytest.raises(PublishError, match="not loracord's model card"):
        publish_folder(folder, "alice/fox-lora")
    assert hub.calls == []


def test_cli_says_one_line_without_a_token(hub, text_run, monkeypatch):
    from loracord.cli import app

    monkeypatch.delenv("HF_TOKEN")
    result = CliRunner().invoke(app, ["publish", str(text_run), "--repo", "alice/fox-lora"])
    assert isinstance(result.exception, PublishError) and "set HF_TOKEN" in str(result.exception)
    assert hub.repos == {}


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_card_reads_back_with_the_hub_parser_for_an_image_run_with_its_samples(tmp_path):
    """An image run's card for the Hub shows its sample grids (published beside it) and its trigger word."""
    from trainer.card import model_card

    metrics = {"kind": "image", "base": "stable-diffusion-v1-5/stable-diffusion-v1-5", "family": "sd",
               "config": {"rank": 4, "instance_prompt": "a photo of sks fox", "sample_seeds": [0, 1]},
               "samples": ["samples/final.png"], "sample_prompts": ["a photo of sks fox"],
               "data_report": {"train_images": 6, "val_images": 2, "sources": ["a.png", "b.jpg", "c.png"],
                               "caption_sources": {"sidecar": 3, "metadata": 0, "instance_prompt": 5}}}
    card = ModelCard(str(model_card(metrics, adapter="alice/fox-lora", beside={"samples/final.png"})))
    assert card.data.instance_prompt == "a photo of sks fox"
    assert "## Trigger word\n\nPut `a photo of sks fox` in your prompt" in card.text
    assert "![final](samples/final.png)" in card.text and "1. `a photo of sks fox`" in card.text
    assert "With ComfyUI, AUTOMATIC1111, Forge and other UIs:" in card.text
    assert "- files by type: 1 .jpg, 2 .png" in card.text and "- captions from: sidecar 3, instance prompt 5" in card.text
    assert json.dumps(card.data.to_dict())  # metadata the Hub can store


# ---------------------------------------------------------------- the licence the adapter inherits


def test_the_card_names_the_licence_of_a_built_in_base():
    from trainer.card import model_card

    card = ModelCard(str(model_card({"kind": "text", "base": "smollm2-135m"})))
    assert card.data.license == "apache-2.0" and "inherits its licence: **apache-2.0**" in card.text


@pytest.mark.parametrize("header, licence, shown", [
    ("license: creativeml-openrail-m", "creativeml-openrail-m", "creativeml-openrail-m"),
    ("license: other\nlicense_name: flux-1-dev-non-commercial-license", "other", "flux-1-dev-non-commercial-license"),
])
def test_the_card_names_the_licence_a_local_bases_own_card_gives(tmp_path, header, licence, shown):
    from trainer.card import model_card

    base = tmp_path / "my-base"
    base.mkdir()
    (base / "README.md").write_text(f"---\n{header}\n---\n# a base\n")
    card = ModelCard(str(model_card({"kind": "image", "base": str(base), "base_path": str(base)})))
    assert card.data.license == licence and f"inherits its licence: **{shown}**" in card.text
    assert str(tmp_path) not in card.content


def test_a_base_without_a_licence_is_said_so(tmp_path):
    from trainer.card import model_card

    card = ModelCard(str(model_card({"kind": "text", "base": str(tmp_path / "nothing-here")})))
    assert card.data.license is None and "The base's licence was not recorded" in card.text
