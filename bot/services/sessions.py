"""Sessions: the session a channel holds, its members, and what each of them may do there.

The rules of ``/session`` itself (joining, leaving, closing, settings) are the session cog's
(``bot.cogs.session``); the lookups and the permission check every feature asks are here.
"""

from __future__ import annotations

from storage.db import Member, Session

from .base import Actor, Refusal, Service


class Sessions(Service):
    # ---- finding sessions
    def session_here(self, channel_id: int | None) -> Session:
        """The session living in this channel (its thread), or a ``Refusal`` that says where sessions are."""
        session = self.in_channel(channel_id)
        if session is None or session.status == "deleted":
            if not self._config.session_threads:  # sessions live in channels (the offline playground)
                raise Refusal("No session lives in this channel yet: `/session new` starts one here.")
            raise Refusal("This is not a session thread. Run this inside a session's thread: "
                          "`/session list` shows them, `/session new` starts one.")
        return session

    def in_channel(self, channel_id: int | None) -> Session | None:
        """The session of this channel as stored (a closed one too), or None; no refusal."""
        return self._db.session_by_thread(channel_id) if channel_id else None

    def get(self, session_id: int) -> Session:
        return self._db.get_session(session_id)

    def in_server(self, guild_id: int) -> list[Session]:
        """The server's sessions, oldest first, without deleted ones."""
        return [s for s in self._db.list_sessions(guild_id) if s.status != "deleted"]

    def create(self, *, guild_id: int, owner: Actor, kind: str, base_model: str, visibility: str, title: str,
               thread_id: int) -> Session:
        return self._db.create_session(guild_id=guild_id, owner_id=owner.user_id, kind=kind, thread_id=thread_id,
                                       base_model=base_model, visibility=visibility, title=title)

    def update(self, session: Session, **changes) -> Session:
        """Store ``changes`` (status, title, visibility, base_model, thread_id); returns the session as it is now."""
        return self._db.update_session(session.id, **changes) if changes else self._db.get_session(session.id)

    # ---- members and their rights
    def role(self, session: Session, actor: Actor) -> str | None:
        """'owner', 'editor' (a contributor), 'viewer' (invited, not joined) or None."""
        return self._db.member_role(session.id, actor.user_id)

    def members(self, session: Session) -> list[Member]:
        return self._db.list_members(session.id)

    def add_member(self, session: Session, user_id: int, role: str) -> None:
        self._db.add_member(session.id, user_id, role)

    def remove_member(self, session: Session, user_id: int) -> None:
        self._db.remove_member(session.id, user_id)

    def require(self, session: Session, actor: Actor, action: str) -> None:
        """Raise a Refusal unless ``actor`` may ``action`` ('contribute', 'train', 'manage', 'vote') in ``session``."""
        role = self.role(session, actor)
        if action == "manage":
            if role == "owner" or actor.manager:
                return
            raise Refusal(f"Only the session's owner <@{session.owner_id}> or a server manager can do that.")
        if action in ("contribute", "train") and session.status != "open":
            raise Refusal(f"This session is {session.status}: nothing more can be added or trained. "
                          f"Start a new one with `/session new`.")
        if role in ("owner", "editor") or actor.manager:
            return
        if role == "viewer":
            raise Refusal("You are invited to this session but have not joined it yet: run `/session join` here first.")
        if session.visibility == "private":
            raise Refusal(f"This session is private. Ask its owner <@{session.owner_id}> to invite you "
                          f"(`/session settings invite:`), then `/session join`.")
        raise Refusal("You are not a contributor of this session yet: run `/session join` here first.")

    def require_author_or_manager(self, session: Session, actor: Actor, author_id: int | None, refusal: str) -> None:
        """Let the member who made a thing act on it; anyone else needs the session's manage right."""
        if author_id == actor.user_id:
            return
        try:
            self.require(session, actor, "manage")
        except Refusal:
            raise Refusal(refusal) from None
