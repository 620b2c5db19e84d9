"""Errors that reach the user as one line: they name the bad value and what was expected."""

import errno

# A full disk and a full quota end a job the same way: nothing more can be written until space is freed.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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


def readable_size(count: int) -> str:
    """Bytes as people read them on a disk: 980 B, 120 kB, 2.3 MB, 1.5 GB (powers of 1000, as `df -H`)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= 0.9995 * scale:  # 999,999 B is "1 MB", not "1e+03 kB"
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


class DiskFullError(FeatvisError):
    """An output could not be written for want of space (ENOSPC, or a full quota).

    Raised by the writers with the path they were writing, which the OSError of a failed
    write() does not carry, and the size of the file: at least that much must be freed.
    """

    def __init__(self, path: object, needed: int, free: int | None, reason: str | None = None):
        self.path, self.needed, self.free, self.reason = path, needed, free, reason
        have = f"{readable_size(free)} free there" if free is not None else "free space unknown"
        super().__init__(f"{(reason or 'no space left on device').lower()} writing {path} "
                         f"({readable_size(needed)}; {have}); expected at least {readable_size(needed)} "
                         "free on its filesystem")

    def __reduce__(self):  # rebuilt from its fields, not its message, where it crosses processes
        return type(self), (self.path, self.needed, self.free, self.reason)


class RankLostError(FeatvisError):
    """A rank of a distributed job died or stopped answering; the others end instead of waiting."""
