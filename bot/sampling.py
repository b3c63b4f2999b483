"""What a sample may look like in Discord.

Generating happens in ``sample`` jobs on the queue's workers (``storage.jobkinds.sample``);
the bot asks for them (``bot.cogs.sample.request_sample``) and posts what they made
(``LoracordBot.post_sampling``). ``sample_message`` makes what a model wrote safe to post:
control characters gone, mentions that would ping defused, code fences kept closed, and a
long sample cut at a line or word boundary with an ellipsis so the message fits Discord's limit.
"""

from __future__ import annotations

import re


# ---------------------------------------------------------------- what a sample may look like in Discord

MESSAGE_LIMIT = 2000  # characters in one Discord message
# Control characters (tabs and newlines stay), direction overrides, and U+FFFD: a model that emits
# half a character leaves a replacement mark that says nothing to a member.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufffd]")
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")  # terminal colour and cursor codes
_BROADCAST = re.compile(r"@(everyone|here)", re.IGNORECASE)
_MENTION = re.compile(r"<(@[!&]?|#)(\d+)>")
_ZWSP = "\u200b"


def no_pings(text: str) -> str:
    """``text`` with ``@everyone``/``@here`` and ``<@id>``/``<@&id>``/``<#id>`` shown as written but inert."""
    text = _BROADCAST.sub(lambda m: f"@{_ZWSP}{m.group(1)}", text)
    return _MENTION.sub(lambda m: f"<{m.group(1)}{_ZWSP}{m.group(2)}>", text)


def clean_sample(text: str) -> str:
    """A model's output as members may see it: no control characters (tabs and newlines stay), no pings,
    and no code fence that would close the block it is shown in."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", _ANSI.sub("", text))
    return no_pings(text).replace("```", f"`{_ZWSP}`{_ZWSP}`").strip()


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: cut at the last line break or space in its second half,
    else mid-word, with an ellipsis."""
    if len(text) <= limit:
        return text
    room = max(1, limit - 1)
    window = text[:room]
    at = max(window.rfind("\n"), window.rfind(" "))
    if at < room // 2:
        at = room
    return window[:at].rstrip() + "…"


def sample_message(head: str, text: str | None = None, tail: str | None = None) -> str:
    """The message posting a sample: ``head`` (one line, its prompt defused), then the text in a code
    block, then ``tail`` (our own words: the sample's scores), kept whole however long the text."""
    tail = f"\n{cut(tail, 400)}" if tail else ""
    head = no_pings(_CONTROL.sub("", head).replace("\n", " "))
    if text is None:
        return cut(head, MESSAGE_LIMIT - len(tail)) + tail
    head = cut(head, 300)
    body = clean_sample(text) or "(the model wrote nothing)"
    fence = "\n```\n{}\n```"
    return head + fence.format(cut(body, MESSAGE_LIMIT - len(head) - len(fence.format("")) - len(tail))) + tail
