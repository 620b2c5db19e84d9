"""Errors that reach the user as one line: they name the bad value and what was expected."""


class FeatvisError(Exception):
    """Base class: the message is complete and printed as is, without a traceback."""


class ConfigError(FeatvisError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DataError(FeatvisError):
    """A data source is missing, empty or unreadable."""


class CheckpointError(FeatvisError):
    """A checkpoint is missing, unreadable, of the wrong kind or incompatible."""


class NumericsError(FeatvisError):
    """A loss, weight or sampler term became NaN/inf, or a GAN diverged."""


class RankLostError(FeatvisError):
    """A rank of a distributed job died or stopped answering; the others end instead of waiting."""
