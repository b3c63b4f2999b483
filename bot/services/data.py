"""A session's dataset: its items, the room left for an upload, and the manifest a run gets.

Checking the files themselves happens off the database thread (``bot.ingest``); ``/data``
(``bot.cogs.data``) chains the two.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.db import DatasetItem, Session
from trainer import kinds
from trainer.captions import MEMBER_SOURCES, fit_caption, has_trigger, source_name, trigger_word
from trainer.spec import DataItem, DatasetManifest

from ..ingest import CheckResult
from .base import Actor, Refusal, Service


def caption_source(item: DatasetItem) -> str:
    """Where an item's caption came from, as members see it (``trainer.captions.SOURCES``)."""
    return source_name(item.checks.get("caption_from") or "member" if item.caption else None)


def member_wrote(item: DatasetItem) -> bool:
    """Whether a member wrote this item's caption (then only a member's edit replaces it)."""
    return bool(item.caption) and (item.checks.get("caption_from") or "member") in MEMBER_SOURCES


@dataclass
class CaptionEdit:
    """A caption as stored after an edit, and what the member is told about it."""
    item: DatasetItem
    caption: str
    notes: list[str]


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
            DataItem(blob=i.blob_hash, filename=i.filename or "file", caption=i.caption, uploader=i.uploader_id,
                     caption_source=caption_source(i) if i.caption else None)
            for i in self.items(session)])

    # ---- captions: who wrote them, edits, and the ``caption`` job's answers
    def instance_prompt(self) -> str:
        """The caption of images nobody captioned: the bot's image default, else the trainer's."""
        from trainer.image.config import ImageTrainConfig

        return (self._config.image_train_defaults.get("instance_prompt")
                or ImageTrainConfig.model_fields["instance_prompt"].default)

    def trigger(self) -> str:
        """The trigger word automatic captions start with: the instance prompt's last word."""
        return trigger_word(self.instance_prompt())

    def caption_tokens(self, session: Session) -> int:
        """How long a caption the session's base family's text encoder reads, in tokens."""
        from trainer.image.sizes import guess_family

        return guess_family(session.base_model or "").part.CAPTION_TOKENS

    def fit_upload_captions(self, session: Session, checked: CheckResult) -> str | None:
        """Cut the accepted files' captions to what the session's text encoder reads; what to tell the member."""
        if not kinds.get(session.kind).captioned:
            return None
        limit, cut = self.caption_tokens(session), []
        for c in checked.accepted:
            if c.caption:
                c.caption, was_cut = fit_caption(c.caption, limit)
                cut += [f"`{c.filename}`"] if was_cut else []
        if not cut:
            return None
        return (f"The caption of {', '.join(cut[:5])}{' and more' if len(cut) > 5 else ''} was cut to about {limit} "
                f"tokens, what this base's text encoder reads; the rest would never reach the model.")

    def item(self, session: Session, item_id: int) -> DatasetItem:
        found = next((i for i in self.items(session) if i.id == item_id), None)
        if found is None:
            raise Refusal(f"This session has no item #{item_id}: `/data captions` shows the numbers.")
        return found

    def edit_caption(self, session: Session, actor: Actor, item_id: int, text: str) -> CaptionEdit:
        """Store a member's caption for one image: cut to what the text encoder reads (they are told),
        allowed without the trigger word (with a warning). It is the member's from now on."""
        self.services.sessions.require(session, actor, "contribute")
        item = self.item(session, item_id)
        if not kinds.get(session.kind).captioned:
            raise Refusal("Only images have captions; this session trains on texts.")
        text = " ".join(text.split())
        if not text:
            raise Refusal("A caption cannot be empty: write what the image shows, starting with the trigger word.")
        limit = self.caption_tokens(session)
        caption, cut = fit_caption(text, limit)
        notes = []
        if cut:
            notes.append(f"The caption was cut to about {limit} tokens, what this base's text encoder reads: "
                         f"the end (“{text[len(caption):].strip()[:80]}”) would never reach the model.")
        trigger = self.trigger()
        if not has_trigger(caption, trigger):
            notes.append(f"⚠️ The caption no longer has the trigger word `{trigger}`: this image will not teach "
                         f"the model what `{trigger}` means. Kept as you wrote it.")
        self._db.set_item_caption(item.id, caption)
        self._db.set_item_checks(item.id, {**item.checks, "caption_from": "member"})
        return CaptionEdit(self.item(session, item_id), caption, notes)

    def to_caption(self, session: Session, item_ids: list[int] | None = None) -> list[DatasetItem]:
        """The images a ``caption`` job should caption: those named (refusing a member's caption), else
        every image without a caption."""
        items = self.items(session)
        if item_ids is None:
            return [i for i in items if not i.caption]
        chosen = [self.item(session, n) for n in item_ids]
        mine = [f"#{i.id}" for i in chosen if member_wrote(i)]
        if mine:
            raise Refusal(f"A member wrote the caption of {', '.join(mine)}: it is never replaced by a model's. "
                          f"Edit it instead.")
        return chosen

    def store_model_captions(self, session_id: int, captions: list[dict], model: str | None) -> list[DatasetItem]:
        """Store what a ``caption`` job wrote, never over a member's caption (written meanwhile);
        returns the items whose caption it set."""
        by_id = {i.id: i for i in self._db.list_dataset_items(session_id)}
        stored = []
        for row in captions:
            item = by_id.get(row.get("item"))
            if item is None or member_wrote(item) or not str(row.get("caption") or "").strip():
                continue  # removed meanwhile, or a member's own
            self._db.set_item_caption(item.id, str(row["caption"]).strip())
            self._db.set_item_checks(item.id, {**item.checks, "caption_from": "model", "caption_model": model})
            stored.append(item)
        return stored
