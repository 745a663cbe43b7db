"""The one base class of errors in what a user gave (a parameter, a file, a model, a corpus,
a folder): the command line prints such an error's message alone, one line that names the
input, what was wrong and the fix; anything else is a bug and says so."""


class InputError(Exception):
    """Something the user gave cannot be used; the message names it and says what to do."""


class PremiseFails(ValueError):
    """No head of the model has a slowly decaying kernel and a stable denominator: the
    contextual circuit's premise does not hold, and neurons found through it mean nothing.
    Not an input error and not a bug: the method's answer for this model."""
