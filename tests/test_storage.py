"""The database, the blob store and the settings: real SQLite files and folders in tmp_path."""

from __future__ import annotations

import sqlite3

import pytest
import sqlite_utils

from storage.blobs import BlobNotFound, BlobStore, sha256_bytes
from storage.db import Database, JobNotFound, migrations
from storage.lock import DatabaseBusy, WriterLock
from storage.settings import Settings, redact_url
from trainer.errors import UserError


@pytest.fixture
def db(tmp_path):
    with Database(tmp_path / "loracord.db") as database:
        yield database


def test_database_is_wal_and_fully_migrated(db):
    assert db.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert db.applied_migrations() == [m.name for m in migrations._migrations]
    assert db.pending_migrations() == []


def test_session_members_and_guild_settings_round_trip(db):
    session = db.create_session(guild_id=10, owner_id=1, kind="text", thread_id=99, base_model="smollm2-135m",
                                visibility="private", title="poems")
    assert db.get_session(session.id) == session
    assert db.session_by_thread(99) == session
    assert (session.visibility, session.base_model, session.status) == ("private", "smollm2-135m", "open")
    assert db.member_role(session.id, 1) == "owner"
    db.add_member(session.id, 2, "viewer")
    db.add_member(session.id, 2, "editor")  # a second add changes the role
    assert [(m.user_id, m.role) for m in db.list_members(session.id)] == [(1, "owner"), (2, "editor")]
    db.remove_member(session.id, 2)
    assert db.member_role(session.id, 2) is None
    assert db.update_session(session.id, status="closed").status == "closed"
    assert db.list_sessions(10) == [db.get_session(session.id)]
    assert db.set_guild_setting(10, "max_jobs_per_guild", 4) == {"max_jobs_per_guild": 4}
    db.upsert_guild(10, "A guild")
    assert db.get_guild(10).settings == {"max_jobs_per_guild": 4} and db.get_guild(10).name == "A guild"
    assert db.set_guild_setting(10, "max_jobs_per_guild", None) == {}


@pytest.mark.parametrize("bad", [dict(visibility="secret"), dict(role="admin")])
def test_bad_values_are_user_errors(db, bad):
    session = db.create_session(guild_id=1, owner_id=1, kind="image")
    with pytest.raises(UserError):
        if "role" in bad:
            db.add_member(session.id, 5, bad["role"])
        else:
            db.create_session(guild_id=1, owner_id=1, kind="image", **bad)


def test_dataset_items_are_stored_once_per_blob(db):
    session = db.create_session(guild_id=1, owner_id=1, kind="image")
    first = db.add_dataset_item(session_id=session.id, blob_hash="a" * 64, kind="image", uploader_id=1,
                                caption="a cat", filename="cat.png", size=123, checks={"nsfw": False})
    again = db.add_dataset_item(session_id=session.id, blob_hash="a" * 64, kind="image", uploader_id=2)
    assert again == first
    db.set_item_caption(first.id, "a black cat")
    db.set_item_checks(first.id, {"nsfw": False, "faces": 0})
    [item] = db.list_dataset_items(session.id)
    assert (item.caption, item.checks, item.uploader_id) == ("a black cat", {"nsfw": False, "faces": 0}, 1)
    db.remove_dataset_item(item.id)
    assert db.list_dataset_items(session.id) == []


def test_jobs_queue_position_and_lifecycle(db):
    low = db.enqueue_job("sleep", {"steps": 1}, user_id=1, guild_id=1)
    high = db.enqueue_job("sleep", {"steps": 2}, user_id=2, guild_id=1, priority=5)
    assert [db.queue_position(high.id), db.queue_position(low.id)] == [1, 2]
    db.mark_job_dispatched(high.id, "task-1")
    assert db.count_active_jobs(guild_id=1) == 1 and db.count_active_jobs(user_id=1) == 0
    assert db.mark_job_running(high.id, worker="w:1", attempt=2) is False  # not the current attempt
    assert db.mark_job_running(high.id, worker="w:1", attempt=1)
    assert db.queue_position(high.id) is None and db.queue_position(low.id) == 1
    assert db.record_heartbeat(high.id, "1:1") and not db.record_heartbeat(high.id, "1:1")
    db.set_job_checkpoint(high.id, "step-000002/" + "c" * 64)
    requeued = db.requeue_job(high.id, "worker lost")
    assert (requeued.status, requeued.attempts, requeued.checkpoint) == ("queued", 1, "step-000002/" + "c" * 64)
    assert db.finish_job(high.id, "done", result={"adapter": "x"}, attempt=2)
    assert not db.finish_job(high.id, "failed", error="late report")  # finished jobs stay finished
    job = db.get_job(high.id)
    assert (job.status, job.result, job.error, job.finished) == ("done", {"adapter": "x"}, None, True)
    assert [j.id for j in db.list_jobs(status=["done"])] == [high.id]
    with pytest.raises(JobNotFound):
        db.get_job(999)
    with pytest.raises(UserError):
        db.enqueue_job("mine_bitcoin")


def test_samples_votes_adapters_trials_events(db):
    job = db.enqueue_job("train_image", {"base": "tiny-sd"})
    sample = db.add_sample(blob_hash="b" * 64, job_id=job.id, kind="image", prompt="a cat", seed=3)
    assert db.add_sample(blob_hash="b" * 64, job_id=job.id, kind="image", prompt="a cat", seed=3).id == sample.id
    assert db.add_sample(blob_hash="b" * 64, job_id=job.id, kind="image", prompt="a cat", seed=4).id != sample.id
    db.record_vote(sample.id, 1, 1)
    db.record_vote(sample.id, 2, 1)
    db.record_vote(sample.id, 2, -1)  # a member changes their vote
    assert db.get_sample(sample.id).votes == 0
    assert db.record_vote(sample.id, 3, 1).votes == 1
    assert db.record_vote(sample.id, 3, 0).votes == 0
    assert len(db.list_samples(job_id=job.id)) == 2

    adapter = db.add_adapter(job_id=job.id, blob_hash="d" * 64, base_model="tiny-sd", metrics={"val_loss": 0.5})
    assert db.add_adapter(job_id=job.id, blob_hash="e" * 64) == adapter  # one adapter per job
    assert db.adapter_for_job(job.id).metrics == {"val_loss": 0.5} and db.list_adapters() == [adapter]

    db.record_trial(job.id, 0, params={"lr": 1e-4})
    trial = db.record_trial(job.id, 0, value=0.25, status="done")
    assert (trial.params, trial.value, trial.status) == ({"lr": 1e-4}, 0.25, "done")

    event = {"kind": "step", "step": 3, "total_steps": 10, "loss": 1.5}
    assert db.add_event(job.id, 1, 0, event) and not db.add_event(job.id, 1, 0, event)
    db.add_event(job.id, 2, 0, {"kind": "start", "step": 3, "total_steps": 10})
    assert [(e.attempt, e.seq, e.kind) for e in db.list_events(job.id)] == [(1, 0, "step"), (2, 0, "start")]
    assert db.latest_event(job.id).attempt == 2 and db.list_events(job.id)[0].data == event


def test_migration_from_the_first_schema_keeps_data(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrations.apply(old, stop_before="m002_job_retries")
    old["jobs"].insert({"kind": "train_text", "config": '{"steps": 5}', "status": "done", "priority": 0,
                        "queued_at": 1.0, "result": "{}"})
    assert "attempts" not in old["jobs"].columns_dict
    old.close()

    old = sqlite_utils.Database(path)
    old["samples"].insert({"blob_hash": "ab" * 32, "job_id": 1, "kind": "text", "prompt": "p", "seed": 0})
    old.close()

    with Database(path, migrate=False) as db:
        later = ["m002_job_retries", "m003_sample_trials", "m004_trial_adapters", "m005_comparisons",
                 "m006_sample_scores"]
        assert db.pending_migrations() == later
        assert db.migrate() == later
        job = db.get_job(1)
        sample = db.get_sample(1)
    assert (job.kind, job.config, job.status, job.attempts, job.max_attempts) == ("train_text", {"steps": 5}, "done", 0, 3)
    assert (sample.prompt, sample.trial, sample.scores) == ("p", None, {})  # scored before scores: none


def test_votes_rank_the_trials_of_a_tuning_job(db):
    job = db.enqueue_job("tune", {"trials": 3})
    for number, value in [(0, 2.5), (1, 2.4), (2, None)]:
        db.record_trial(job.id, number, params={"lr": 1e-4 * (number + 1)}, value=value,
                        status="complete" if value else "pruned")
    a = db.add_sample(blob_hash="a" * 64, job_id=job.id, prompt="p", seed=0, trial=0)
    b = db.add_sample(blob_hash="b" * 64, job_id=job.id, prompt="p", seed=0, trial=1)
    db.add_sample(blob_hash="c" * 64, job_id=job.id, prompt="p", seed=0)  # the best run's own sample
    db.record_vote(a.id, user_id=1, value=1)
    db.record_vote(a.id, user_id=2, value=1)
    db.record_vote(b.id, user_id=1, value=-1)
    assert db.trial_votes(job.id) == {0: 2, 1: -1}
    assert [(t.number, t.status) for t in db.list_trials(job.id)] == [(0, "complete"), (1, "complete"), (2, "pruned")]


def test_backup_is_a_readable_copy(db, tmp_path):
    db.create_session(guild_id=1, owner_id=1, kind="text")
    copy = db.backup(tmp_path / "backups" / "b.db")
    assert sqlite3.connect(copy).execute("select count(*) from sessions").fetchone()[0] == 1


@pytest.mark.parametrize("url", ["local", "memory://loracord-test-blobs"])
def test_blob_store_round_trip(tmp_path, url):
    store = BlobStore(tmp_path / "blobs" if url == "local" else url)
    data = b"\x89PNG fake image"
    digest = store.put_bytes(data)
    assert digest == sha256_bytes(data) and store.put_bytes(data) == digest
    assert store.exists(digest) and store.get_bytes(digest) == data
    (tmp_path / "f.bin").write_bytes(b"file bytes")
    assert store.get_bytes(store.put_file(tmp_path / "f.bin")) == b"file bytes"
    assert store.get_file(digest, tmp_path / "out" / "x.png").read_bytes() == data

    tree = tmp_path / "adapter"
    (tree / "sub").mkdir(parents=True)
    (tree / "adapter_config.json").write_text("{}")
    (tree / "sub" / "weights.bin").write_bytes(b"w" * 10)
    manifest = store.put_tree(tree)
    assert set(store.tree_files(manifest)) == {"adapter_config.json", "sub/weights.bin"}
    copy = store.get_tree(manifest, tmp_path / "copy")
    assert (copy / "sub" / "weights.bin").read_bytes() == b"w" * 10
    with pytest.raises(BlobNotFound):
        store.get_bytes("0" * 64)
    with pytest.raises(BlobNotFound):
        store.path("../../etc/passwd")


def test_local_blobs_are_laid_out_by_hash(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    digest = store.put_bytes(b"x")
    assert (tmp_path / "blobs" / digest[:2] / digest[2:4] / digest).is_file()
    assert not list((tmp_path / "blobs").rglob("*.tmp"))


def test_writer_lock_keeps_a_second_writer_out(tmp_path):
    with WriterLock(tmp_path):
        with pytest.raises(DatabaseBusy, match="in use by process"):
            WriterLock(tmp_path).acquire()
    assert WriterLock(tmp_path).try_acquire()


def test_settings_from_env_and_redaction(monkeypatch, tmp_path):
    monkeypatch.setenv("LORACORD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LORACORD_QUEUE_URL", "redis://:hunter2@gpu-box:6379/0")
    monkeypatch.setenv("LORACORD_MAX_JOBS_PER_USER", "3")
    settings = Settings()
    assert settings.uses_redis and settings.max_jobs_per_user == 3
    assert settings.db_path == tmp_path / "loracord.db" and settings.blob_location == str(tmp_path / "blobs")
    assert "hunter2" not in settings.describe_queue()
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
