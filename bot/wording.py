"""Where a session lives, in the words members read.

On Discord each session has a thread of its own. The offline playground shows one channel, so
there a session lives in the channel where it was started (``BotSettings.session_threads``
off). The commands' descriptions are written for threads; ``reword_for_channels`` rewrites a
command tree's descriptions for sessions that live in channels before the tree is synced, so no
text a member reads points to a thread that is not there.
"""

from __future__ import annotations

from discord import app_commands

# Each phrase that speaks of a session's thread, and what it says where sessions live in channels.
CHANNEL_WORDS = (
    ("one thread per model", "one per channel"),
    ("in a new thread of this channel", "in this channel"),
    ("The thread's name", "The session's name"),
    ("A new thread name", "A new session name"),
    ("this thread's session", "this channel's session"),
    ("this session and its thread", "this session"),
    ("the session and its thread", "the session"),
)


def in_channels(text):
    """``text`` (a string or discord.py's ``locale_str``) as it reads where each session lives in a
    channel rather than a thread."""
    if isinstance(text, app_commands.locale_str):
        return app_commands.locale_str(in_channels(text.message), **text.extras)
    for thread_words, channel_words in CHANNEL_WORDS:
        text = text.replace(thread_words, channel_words)
    return text


def reword_for_channels(tree: app_commands.CommandTree) -> None:
    """Rewrite every command's, group's and option's description in ``tree`` with ``in_channels``."""
    for command in tree.walk_commands():
        command.description = in_channels(command.description)
        for parameter in getattr(command, "_params", {}).values():
            parameter.description = in_channels(parameter.description)
