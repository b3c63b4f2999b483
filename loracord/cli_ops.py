"""Operations commands: ``loracord worker``, ``loracord jobs list|cancel``, ``loracord db migrate|backup``.

Thin wrappers over ``storage``. Commands that write the database take the writer lock, so
they refuse while the bot runs (``jobs cancel`` then asks the bot through the queue instead).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

jobs_app = typer.Typer(help="List and cancel queued and running jobs.", no_args_is_help=True)
db_app = typer.Typer(help="Database maintenance: migrate, backup.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker_cmd)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(db_app, name="db")


def worker_cmd(
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Jobs this worker runs at once (default: LORACORD_WORKERS or 1)."),
) -> None:
    """Run jobs from the queue on this machine (one per GPU machine; set LORACORD_QUEUE_URL to share a Redis queue)."""
    import logging

    from storage.settings import Settings
    from storage.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("huey").setLevel(logging.WARNING)
    settings = Settings()
    if jobs is not None:
        settings = settings.model_copy(update={"workers": jobs})
    run_worker(settings)


@jobs_app.command("list")
def jobs_list_cmd(
    status: Optional[str] = typer.Option(None, help="Only jobs in this status (queued, dispatched, running, done, failed, cancelled)."),
    limit: int = typer.Option(20, help="Show at most this many jobs, newest first."),
) -> None:
    """Show recent jobs with their status, place in line and progress."""
    from rich.console import Console
    from rich.table import Table

    from storage.db import Database
    from storage.settings import Settings

    db = Database(Settings().db_path, migrate=False)
    table = Table("id", "kind", "status", "line", "user", "guild", "attempt", "progress", "error")
    for job in db.list_jobs(status=status, limit=limit):
        event = db.latest_event(job.id)
        progress = f"{event.step}/{event.total_steps}" if event and event.total_steps else ""
        table.add_row(str(job.id), job.kind, job.status, str(db.queue_position(job.id) or ""), str(job.user_id or ""),
                      str(job.guild_id or ""), str(job.attempts + 1), progress, (job.error or "")[:60])
    Console().print(table)


@jobs_app.command("cancel")
def jobs_cancel_cmd(job_id: int = typer.Argument(..., help="The job to cancel.")) -> None:
    """Cancel a job: at once if it has not started, else the trainer stops at its next step."""
    from storage.lock import WriterLock
    from storage.queue import JobQueue
    from storage.settings import Settings

    settings = Settings()
    lock = WriterLock(settings.data_dir)
    if not lock.try_acquire():
        from storage.channel import Channel

        Channel(settings).request_cancel(job_id)
        typer.echo(f"asked the running bot to cancel job {job_id}")
        return
    try:
        queue = JobQueue(settings)
        job = queue.cancel(job_id)
        typer.echo(f"job {job_id}: {'cancel requested' if job.status == 'running' else job.status}")
        queue.close()
    finally:
        lock.release()


@db_app.command("migrate")
def db_migrate_cmd() -> None:
    """Apply pending schema migrations (the bot also does this at start-up)."""
    from storage.db import Database
    from storage.lock import WriterLock
    from storage.settings import Settings

    settings = Settings()
    with WriterLock(settings.data_dir):
        db = Database(settings.db_path, migrate=False)
        applied = db.migrate()
        typer.echo(f"applied {', '.join(applied)}" if applied else "schema is up to date")
        typer.echo(f"{settings.db_path}: {len(db.applied_migrations())} migrations")


@db_app.command("backup")
def db_backup_cmd(
    dest: Optional[Path] = typer.Argument(None, help="Backup file (default DATA/backups/loracord-<time>.db)."),
) -> None:
    """Copy the database with SQLite's online backup (safe while the bot runs)."""
    from storage.db import Database
    from storage.settings import Settings

    settings = Settings()
    dest = dest or settings.data_dir / "backups" / f"loracord-{time.strftime('%Y%m%d-%H%M%S')}.db"
    db = Database(settings.db_path, migrate=False)
    typer.echo(str(db.backup(dest)))
