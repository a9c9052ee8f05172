"""The errors a user can cause (config, root, data, versions). The CLI prints
any ``CourierError`` as one ``courier: error:`` line and exits 2; anything
else is a bug and keeps its traceback. Standard library only."""
from __future__ import annotations


class CourierError(Exception):
    """Base of every error whose message is meant for the user."""


class ConfigError(CourierError, ValueError):
    """A configuration key or value is invalid; the message names it."""


class DataError(CourierError, ValueError):
    """The data cannot support what the config asks (e.g. more clusters than items)."""


class MissingArtifactError(CourierError, FileNotFoundError):
    """A non-table artefact a stage needs (model, results, centroids) is absent; names the stage that makes it."""


class VersionNotFoundError(CourierError, LookupError):
    """A requested model, centroid or table version does not exist (message lists what does)."""
