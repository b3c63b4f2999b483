"""/session through SimCord: start, join, leave, info, list, settings, close, delete, and refusals."""

from __future__ import annotations

import pytest

from tests.bot_world import *  # noqa: F401,F403

pytestmark = pytest.mark.asyncio


async def new_session(w, who=None, **options):
    who = who or w.alice
    options = {"kind": "text", "title": "Fox stories", **options}
    result = await who.slash(w.channel, "session new", **options)
    thread = w.channel.threads[-1]
    return result, thread


async def test_new_session_opens_a_thread_and_says_what_comes_next(world):
    result, thread = await new_session(world)
    assert not result.ephemeral
    assert "Started public text session #1 on `smollm2-135m`" in result.response.content
    assert thread.name == "Fox stories"
    welcome = thread.last_message.content
    assert "Step 1:" in welcome and "/data add" in welcome and "/data report" in welcome


async def test_info_shows_the_session_and_the_next_step(world):
    _, thread = await new_session(world)
    result = await world.alice.slash(thread, "session info")
    embed = result.response.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    assert embed.title == "Session #1: Fox stories"
    assert fields["Kind"] == "text" and fields["Owner"] == world.alice.mention
    assert "/data add" in fields["Next"]


async def test_a_model_outside_the_allowed_list_is_refused(world):
    result = await world.alice.slash(world.channel, "session new", kind="text", title="x", base_model="gpt-9")
    assert result.ephemeral
    assert "`gpt-9` is not one of this server's text models" in result.response.content
    assert world.channel.threads == []


async def test_session_commands_outside_a_session_thread_are_refused(world):
    result = await world.alice.slash(world.channel, "session info")
    assert result.ephemeral and "not a session thread" in result.response.content


async def test_public_join_and_leave(world):
    _, thread = await new_session(world)
    joined = await world.bob.slash(thread, "session join")
    assert f"{world.bob.mention} joined session #1 as a contributor" in joined.response.content
    again = await world.bob.slash(thread, "session join")
    assert again.ephemeral and "already a contributor" in again.response.content
    left = await world.bob.slash(thread, "session leave")
    assert left.ephemeral and "You left session #1" in left.response.content
    owner = await world.alice.slash(thread, "session leave")
    assert owner.ephemeral and "owner cannot leave" in owner.response.content


async def test_private_sessions_live_in_a_private_thread_joined_by_invitation(world):
    import discord
    from simcord.backend.errors import BackendError

    _, thread = await new_session(world, visibility="private")
    seen = world.env.bot.get_channel(thread.id)  # the thread as the bot's discord.py cache has it
    assert seen.type is discord.ChannelType.private_thread  # members who were not added do not see it
    assert {m.id for m in seen.members} == {world.alice.id}
    with pytest.raises(BackendError, match="Missing Access"):
        await world.bob.slash(thread, "session join")
    not_owner = await world.alice.slash(thread, "session settings", invite=world.bob)
    assert f"{world.bob.mention} is invited" in not_owner.response.content
    assert world.bob.id in {m.id for m in seen.members}
    stranger = await world.bob.slash(thread, "session settings", invite=world.carol)
    assert stranger.ephemeral and "Only the session's owner" in stranger.response.content
    joined = await world.bob.slash(thread, "session join")
    assert "joined session #1" in joined.response.content
    removed = await world.alice.slash(thread, "session settings", remove=world.bob)
    assert f"{world.bob.mention} was removed" in removed.response.content and world.bob.id not in {m.id for m in seen.members}


async def test_settings_change_visibility_and_model(world):
    _, thread = await new_session(world)
    result = await world.alice.slash(thread, "session settings", visibility="private", title="Fox tales")
    fields = {f.name: f.value for f in result.response.embeds[0].fields}
    assert fields["Visibility"] == "private"
    assert thread.name == "Fox tales"
    bad = await world.alice.slash(thread, "session settings", base_model="image-model")
    assert bad.ephemeral and "not one of this server's text models" in bad.response.content


async def test_list_shows_private_sessions_only_to_their_members_and_managers(world):
    await new_session(world)
    await new_session(world, who=world.bob, title="Cat haiku", visibility="private")
    stranger = await world.carol.slash(world.channel, "session list")
    assert stranger.ephemeral
    text = stranger.response.embeds[0].description
    assert "#1 " in text and "#2 " not in text and "private" not in text and world.bob.mention not in text
    for who in (world.bob, world.mod):  # its owner, and a server manager
        text = (await who.slash(world.channel, "session list")).response.embeds[0].description
        assert "#1 " in text and "#2 " in text and "private" in text


async def test_close_refuses_contributors_and_stops_uploads(world):
    _, thread = await new_session(world)
    await world.bob.slash(thread, "session join")
    refused = await world.bob.slash(thread, "session close")
    assert refused.ephemeral and "Only the session's owner" in refused.response.content
    closed = await world.alice.slash(thread, "session close")
    assert "Session #1 is closed" in closed.response.content
    upload = await world.bob.slash(thread, "data add", file=("a.txt", b"one\n\ntwo\n"))
    assert upload.ephemeral and "This session is closed" in upload.response.content


async def test_a_manager_may_delete_anyones_session_after_confirming(world):
    _, thread = await new_session(world)
    refused = await world.bob.slash(thread, "session delete", confirm=True)
    assert refused.ephemeral and "Only the session's owner" in refused.response.content
    unconfirmed = await world.mod.slash(thread, "session delete")
    assert unconfirmed.ephemeral and "confirm:True" in unconfirmed.response.content
    deleted = await world.mod.slash(thread, "session delete", confirm=True)
    assert deleted.ephemeral  # its message went with the thread
    assert world.channel.threads == []
    listed = await world.alice.slash(world.channel, "session list")
    assert "No sessions yet" in listed.response.content
