"""Every error a user, their data or their systems can cause, in one hierarchy.

The CLI prints any ``CourierError`` as one ``courier: error:`` line and exits
2; anything else is a bug and keeps its traceback. Each class also keeps the
standard-library base callers may catch (``ValueError``, ``LookupError``,
...). Standard library only.

    CourierError
    +-- ConfigError                 a config key or value
    +-- SqlFileError                an analyst SQL file: missing, not one statement, unknown placeholder
    |   +-- ReadOnlySqlError        a statement that would do more than read (refused unexecuted)
    +-- DataError                   the data cannot support what is asked
    |   +-- ContractError           a bronze table's schema breaks the contract
    |   +-- FeatureTableSchemaError a feature table's columns are not this release's
    +-- MissingArtifactError        a model, result or centroid set a stage needs is absent
    |   +-- MissingTableError       a table a stage needs does not exist
    +-- VersionNotFoundError        a requested version does not exist (lists what does)
    |   +-- TableVersionError       ... of a Delta table
    |   +-- FeatureVersionError     ... of a feature table
    |   +-- ArtifactNotFoundError   ... of a model
    +-- CorruptArtifactError        a model or checkpoint file is truncated or not ours
    |   +-- CorruptModelError       a model artifact
    |   +-- CheckpointError         a training checkpoint
    |   +-- TamperedCacheError      a training-loader cache file that would run code
    +-- ServiceError                a system the platform runs on failed or refused
        +-- FilesystemError         a root or URI that cannot be used
        |   +-- MissingRootError    a dataset root that does not exist (where one must)
        +-- OnlineStoreError        the online store (Redis)
        +-- ConcurrentWriteError    a MERGE lost to concurrent writers after every retry
        +-- DistributedTrainingError  a distributed training job failed or stalled
        +-- StreamError             the streaming query stopped with an error
"""
from __future__ import annotations


class CourierError(Exception):
    """Base of every error whose message is meant for the user."""


class ConfigError(CourierError, ValueError):
    """A configuration key or value is invalid; the message names it."""


class SqlFileError(CourierError, ValueError):
    """An analyst SQL file (``courier sql``, the report) is missing, holds not
    exactly one statement, or uses a placeholder other than ``${root}``."""


class ReadOnlySqlError(SqlFileError):
    """A statement on the read-only SQL path (``courier sql``, the report's
    queries) whose parsed plan does more than read; refused before it runs."""


class DataError(CourierError, ValueError):
    """The data cannot support what the config asks (e.g. more clusters than
    items, CTR events without features, a corrupt centroid table)."""


class ContractError(DataError):
    """A bronze table's schema breaks the contract (names the column)."""


class FeatureTableSchemaError(DataError):
    """A feature table's columns are not what this write produces (e.g. written by an older release)."""


class MissingArtifactError(CourierError, FileNotFoundError):
    """A non-table artefact a stage needs (model, results, centroids) is absent; names the stage that makes it."""


class MissingTableError(MissingArtifactError, RuntimeError):
    """A table the stage needs does not exist; the message says which stage makes it."""


class VersionNotFoundError(CourierError, LookupError):
    """A requested model, centroid or table version does not exist (message lists what does)."""


class TableVersionError(VersionNotFoundError):
    """A requested Delta version of a table does not exist (message lists the range that does)."""


class FeatureVersionError(VersionNotFoundError):
    """A requested feature-table version does not exist (message lists the available ones)."""


class ArtifactNotFoundError(VersionNotFoundError, FileNotFoundError):
    """The requested model version does not exist (message lists what does)."""


class CorruptArtifactError(CourierError, ValueError):
    """A stored file of ours is truncated, tampered with or not ours (message names the file)."""


class CorruptModelError(CorruptArtifactError):
    """A model artefact's files are truncated, tampered with or not ours (message names the file)."""


class CheckpointError(CorruptArtifactError):
    """A checkpoint file is truncated, tampered with or not a courier checkpoint."""


class TamperedCacheError(CorruptArtifactError):
    """A file in the training loader's cache (petastorm metadata) names code, not data; nothing was unpickled."""


class ServiceError(CourierError, RuntimeError):
    """A system the platform runs on (filesystem, Redis, Spark, workers) failed or refused."""


class FilesystemError(ServiceError):
    """A root or URI that cannot be used: unknown scheme, missing client
    package, unreachable filesystem, or a file where a directory must be.
    The message is one line naming the URI."""


class MissingRootError(FilesystemError):
    """The dataset root does not exist where it must (a reader, or a stage
    whose inputs would be there): nothing was created."""


class OnlineStoreError(ServiceError):
    """The online store cannot be reached, refused the credentials, or failed a write."""


class ConcurrentWriteError(ServiceError):
    """A MERGE kept losing against concurrent writers after every retry."""


class DistributedTrainingError(ServiceError):
    """A distributed training job failed or stalled; the message names the worker and the cause."""


class StreamError(ServiceError):
    """The streaming query stopped with an error (the message carries its cause)."""
