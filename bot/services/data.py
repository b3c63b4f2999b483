"""A session's dataset: its items, the room left for an upload, and the manifest a run gets.

Checking the files themselves happens off the database thread (``bot.ingest``); ``/data``
(``bot.cogs.data``) chains the two.
"""

from __future__ import annotations

from storage.db import DatasetItem, Session
from trainer.spec import DataItem, DatasetManifest

from ..ingest import CheckResult
from .base import Actor, Refusal, Service


def examples_in(item: DatasetItem) -> int:
    """The examples one item counts: as many as its check found in it (a text file), else one (an image)."""
    return int(item.checks.get("examples", 1))


class Datasets(Service):
    def items(self, session: Session) -> list[DatasetItem]:
        return self._db.list_dataset_items(session.id)

    @staticmethod
    def examples(items: list[DatasetItem]) -> int:
        """The examples a dataset of ``items`` counts."""
        return sum(examples_in(i) for i in items)

    def check_dataset_room(self, session: Session, actor: Actor, n_files: int, n_bytes: int) -> None:
        """Refuse an upload that would not fit the session's dataset limits (before downloading it)."""
        self.services.sessions.require(session, actor, "contribute")
        server = self.services.server
        items = self.items(session)
        max_items = int(server.limit(session.guild_id, "max_dataset_items"))
        max_bytes = float(server.limit(session.guild_id, "max_dataset_mb")) * 2**20
        if len(items) >= max_items:
            raise Refusal(f"The dataset already holds {len(items)} files, this server's limit is {max_items}. "
                          f"Remove some with `/data remove`, or combine texts into fewer files.")
        used = sum(i.size or 0 for i in items)
        if used + n_bytes > max_bytes:
            raise Refusal(f"This upload would bring the dataset to {(used + n_bytes) / 2**20:.1f} MiB, over this "
                          f"server's {max_bytes / 2**20:.0f} MiB limit. Remove files with `/data remove` first.")

    def add_items(self, session: Session, actor: Actor, checked: CheckResult) -> tuple[list[DatasetItem], list[str]]:
        """Record accepted files; returns (new items, names that were already in the dataset)."""
        existing = {i.blob_hash for i in self.items(session)}
        added, duplicates = [], []
        for c in checked.accepted:
            if c.blob_hash in existing:
                duplicates.append(c.filename)
                continue
            existing.add(c.blob_hash)
            added.append(self._db.add_dataset_item(session_id=session.id, blob_hash=c.blob_hash, kind=session.kind,
                                                   uploader_id=actor.user_id, caption=c.caption, filename=c.filename,
                                                   size=c.size, checks=c.checks))
        return added, duplicates

    def remove_item(self, session: Session, actor: Actor, item_id: int) -> DatasetItem:
        """Remove one item (its uploader, the session's owner or a manager)."""
        item = next((i for i in self.items(session) if i.id == item_id), None)
        if item is None:
            raise Refusal(f"This session has no item #{item_id}: `/data list` shows the numbers.")
        self.services.sessions.require_author_or_manager(
            session, actor, item.uploader_id, f"Item #{item_id} was uploaded by <@{item.uploader_id}>: only they, "
                                              f"the session owner or a server manager can remove it.")
        self._db.remove_dataset_item(item_id)
        return item

    def manifest(self, session: Session) -> DatasetManifest:
        """The dataset as the trainer gets it: blobs with their names, captions and uploaders.

        Nothing is copied here: the worker that runs the job fetches the blobs and writes the
        captions beside them (``trainer.spec.DatasetManifest.materialize``)."""
        return DatasetManifest(items=[
            DataItem(blob=i.blob_hash, filename=i.filename or "file", caption=i.caption, uploader=i.uploader_id)
            for i in self.items(session)])
