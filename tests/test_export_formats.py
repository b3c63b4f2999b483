"""The table of export formats (``trainer.export``) and where a blob too large to post is linked.

The format table is read by the bot without torch: its entries name functions as strings, each
of which must import; options are checked by name and value before anything runs.
"""

from __future__ import annotations

import pytest

from bot.cogs.adapter import export_link
from bot.config import BotSettings
from storage.blobs import BlobStore
from trainer import export, kinds
from trainer.errors import UserError


@pytest.mark.parametrize("fmt", export.FORMATS.values(), ids=lambda fmt: fmt.name)
def test_every_format_names_a_function_options_and_runs_it_fits(fmt):
    assert callable(export._load(fmt.entry))
    assert set(fmt.options) <= set(export.OPTIONS)
    assert fmt.description and any(fmt.fits(kind) for kind in kinds.KINDS.values())
    assert fmt.estimate is None or callable(export._load(fmt.estimate))


def test_formats_fit_runs_by_their_kind_record():
    assert [f.name for f in export.fitting(kinds.TEXT)] == ["gguf", "gguf-merged"]
    assert [f.name for f in export.fitting(kinds.IMAGE)] == ["merged"]
    # the merged ones load the base: a worker makes them, never the bot
    assert [f.name for f in export.FORMATS.values() if f.big] == ["gguf-merged", "merged"]


def test_the_merged_formats_estimate_their_size_from_the_base_on_this_machine(tiny_llama, tmp_path):
    """The bot's estimate before it queues a merged export (the server's quota): the base's parameters
    from its safetensors headers at the format's bytes each; no number where the base is elsewhere."""
    from trainer.quantize import count_params

    metrics = {"kind": "text", "base": str(tiny_llama), "base_path": str(tiny_llama)}
    fmt = export.FORMATS["gguf-merged"]
    params = count_params(tiny_llama)
    assert fmt.estimated_bytes(metrics, 0) == 2 * params
    assert fmt.estimated_bytes(metrics, 0, outtype="q8_0") == params * 34 // 32
    assert fmt.estimated_bytes({"kind": "text", "base": "someone/elsewhere"}, 0) is None
    assert export.FORMATS["merged"].estimated_bytes({"kind": "image", "base": "someone/elsewhere"}, 0) is None


def test_options_are_checked_by_name_and_value():
    from dataclasses import replace

    merged = replace(export.FORMATS["gguf"], name="gguf-merged", options=("outtype",))
    assert merged.parse_options("outtype=q8_0") == {"outtype": "q8_0"}
    with pytest.raises(UserError, match=r"`outtype` takes f16 or q8_0; got 'q4'"):
        merged.parse_options("outtype=q4")
    with pytest.raises(UserError, match=r"does not take `weight=1`: it takes `outtype` \(f16 or q8_0, default f16\)"):
        merged.parse_options("weight=1")
    weighted = replace(merged, options=("weight",))
    with pytest.raises(UserError, match="`weight` takes a number from 0 to 2; got '3'"):
        weighted.parse_options("weight=3")
    with pytest.raises(UserError, match="takes no option outtype"):
        export.FORMATS["gguf"].export("run", "out", outtype="f16")
    with pytest.raises(UserError, match="unknown export format 'tflite'; choose gguf, gguf-merged, merged"):
        export.get("tflite")


def test_a_blob_too_large_to_post_is_linked_signed_by_public_url_or_by_its_place(tmp_path, monkeypatch):
    blobs = BlobStore(tmp_path / "blobs")
    blob = blobs.put_bytes(b"GGUF and more")
    config = BotSettings(_env_file=None, export_link_hours=2)
    assert export_link(blobs, config, blob) == f"on the bot's host at `{blobs.path(blob)}`: ask the host for it"
    config.export_base_url = "https://files.example.org/b"
    assert export_link(blobs, config, blob) == f"<https://files.example.org/b/{blob[:2]}/{blob[2:4]}/{blob}>"
    # A store that signs links (s3fs, gcsfs; none is reachable here): its signing is stood in for.
    signed = []
    monkeypatch.setattr(blobs.fs, "sign", lambda path, expiration: signed.append((path, expiration)) or "https://s/x?sig",
                        raising=False)
    link = export_link(blobs, config, blob)
    assert link.startswith("<https://s/x?sig> (valid until <t:") and signed == [(blobs.path(blob), 7200)]
    assert blobs.size(blob) == len(b"GGUF and more")


def test_the_export_kind_makes_a_format_from_the_blob_store_and_keeps_to_the_quota(tiny_llama, tmp_path):
    """The ``export`` job kind as a worker runs it: the adapter and metrics come from the blob store
    into a fresh run folder, the job process writes the format, the worker publishes its files."""
    from gguf import GGUFReader

    from storage import jobkinds
    from storage.jobrun import run_job
    from tests.conftest import train_tiny_text
    from trainer.rundir import RunDir

    (tmp_path / "trained").mkdir()
    train_tiny_text(tmp_path / "trained", tiny_llama, steps=2)
    trained = tmp_path / "trained" / "out"
    blobs = BlobStore(tmp_path / "blobs")
    config = {"source_job": 4, "format": "gguf", "options": {}, "max_bytes": 2**20, "kind": "text",
              "base": str(tiny_llama), "adapter": blobs.put_tree(trained / "adapter"),
              "metrics": blobs.put_file(trained / "metrics.json")}
    kind = jobkinds.get("export")
    assert kind.lane == "runs"  # a merged export holds the whole base: a run's place, not a thread beside one
    run = RunDir(tmp_path / "worker" / "job-9")
    run.root.mkdir(parents=True)
    config = kind.prepare_inputs(blobs, run, config)
    result = run_job("export", config, run, resume=False)
    assert (result["status"], result["files"], result["note"]) == ("done", ["export/adapter.gguf"], "")
    assert result["details"]["arch"] == "llama"
    outputs = {"result": result}
    kind.publish_outputs(blobs, run, outputs)
    [made] = outputs["export"]["files"]
    assert made["name"] == "adapter.gguf" and made["bytes"] == blobs.size(made["blob"])
    assert GGUFReader(blobs.get_file(made["blob"], tmp_path / "got.gguf")).fields["general.type"].contents() == "adapter"

    over = RunDir(tmp_path / "worker" / "job-10")
    over.root.mkdir(parents=True)
    config = kind.prepare_inputs(blobs, over, {**config, "max_bytes": 1000})
    with pytest.raises(UserError, match=r"the export is [\d,]+ bytes, over this server's export quota of 1,000 bytes"):
        run_job("export", config, over, resume=False)
    assert not (over.root / "export").exists()  # nothing over the quota is kept
