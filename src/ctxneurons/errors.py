"""The one base class of errors in what a user gave (a parameter, a file, a model, a corpus,
a folder): the command line prints such an error's message alone, one line that names the
input, what was wrong and the fix; anything else is a bug and says so."""


class InputError(Exception):
    """Something the user gave cannot be used; the message names it and says what to do."""
