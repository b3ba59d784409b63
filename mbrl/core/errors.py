"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """A problem with the user's input (a bad option, path, env id or file).

    The CLI prints its message on one line and exits with status 2; every other
    exception is an internal error and keeps its traceback.
    """
