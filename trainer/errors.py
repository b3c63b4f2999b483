"""The named errors of loracord's trainer.

Two families: what the user gave us was wrong (``UserError`` and its children; the message
says what to do), and what broke while we worked (``TrainingError``). The edges translate
them: the CLI prints one line and exits non-zero, the bot answers with an ephemeral message.
"""


class LoracordError(Exception):
    """Base class of every error loracord raises on purpose."""


class UserError(LoracordError):
    """The input is wrong; the message says what to change."""


class DataError(UserError):
    """A dataset file or example is unusable (encoding, size, format, too few examples)."""


class ModelError(UserError):
    """A base model reference cannot be resolved or loaded."""


class ConfigError(UserError):
    """A training setting is out of range or conflicts with another."""


class TrainingError(LoracordError):
    """Training itself failed (not the user's input)."""


class Cancelled(LoracordError):
    """The run was cancelled cooperatively; its last checkpoint is kept."""
