"""The errors a command reports as one line, and the exit status each gets.

A mistake in what the user asked for (a config key or value, a preset, a file, a workdir, data
that no source has) raises a `UserError` whose message names it and what would be valid. A run
that cannot go on for a reason outside the code (it diverged, the disk is full) raises a `Fatal`.
Every command line (the experiments, research.evals.score_samples, research.report, the
benchmarks) reports either as one line on stderr, `FATAL <message>`, with no traceback (an
experiment's --debug shows it); anything else is a programming error and keeps its traceback.

    exit status 2   a user mistake (UserError; argparse's usage errors too)
    exit status 1   a run that failed (Fatal): diverged, disk full, a lost peer process
    143 / 130       stopped by SIGTERM / Ctrl-C after saving a checkpoint (research.train.loop);
                    130 also for a Ctrl-C outside training or a second one, which save nothing
"""
import argparse
import contextlib
import errno
import sys


class Fatal(Exception):
    """Stops the command with one FATAL line and `exit_status`, without a traceback."""
    exit_status = 1


class UserError(Fatal):
    """A mistake in what the user asked for; the message names it and what would be valid."""
    exit_status = 2


class InputError(UserError, ValueError):
    """A file or an argument that cannot work (a ValueError too, for callers that catch those)."""


class ConfigError(InputError):
    """A config key or value that cannot work."""


class DiskFullError(Fatal):
    """A write failed for lack of space; what was written before it is intact."""


class Interrupted(Fatal):
    """Ctrl-C outside the train loop's steps, or a second one: stopped without saving."""
    exit_status = 130


def one_line(message: str) -> str:
    """The message on one line: its lines joined with spaces."""
    return ' '.join(line.strip() for line in str(message).splitlines() if line.strip())


def exit_with(error: Fatal):
    print(f'FATAL {one_line(error)}', file=sys.stderr, flush=True)
    sys.exit(error.exit_status)


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or what it wraps: orbax and tensorstore re-raise) is a lack of space."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if 'No space left on device' in str(error) or 'Disk quota exceeded' in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def reported(debug: bool = False):
    """Turns a Fatal (and a write that found the disk full) into its FATAL line and exit
    status; with `debug` they propagate, traceback and all."""
    try:
        yield
    except Fatal as e:
        if debug:
            raise
        exit_with(e)
    except OSError as e:
        if debug or not is_disk_full(e):
            raise
        exit_with(DiskFullError(f'no space left on the device: {e}; free some space and run the '
                                'same command again'))
    except KeyboardInterrupt:
        if debug:
            raise
        exit_with(Interrupted('stopped at once by Ctrl-C, without saving: run the same command '
                              'to resume from the last checkpoint'))


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'not an integer: {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one FATAL line (exit status 2) naming --help."""

    def error(self, message: str):
        exit_with(UserError(f'{self.prog}: {message} (see {self.prog} --help)'))
