"""Errors users see.

Every problem a user can cause (a bad recipe, an unknown layer, a corrupt file) is raised as
a subclass of :class:`PrunekitError` with a message that names the offending thing, so a user
never has to read a traceback from deep inside torch to learn what they did wrong.
"""


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """A recipe, rule or option is malformed (unknown key, wrong type, value out of range)."""


class TargetError(ConfigError):
    """A target rule does not fit the model (unknown layer, unsupported type, wrong scheme)."""


class DataError(PrunekitError, OSError):
    """A data set or checkpoint file is missing, truncated or corrupt."""
