"""What a command reports without a traceback: the user's mistake, or an interrupted run."""


INTERRUPTED = 130   # the exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


class CommandError(Exception):
    """A problem with what the user asked for (data, files): printed without a traceback."""
