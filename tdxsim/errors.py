"""The root of every error tdxsim raises, so a caller can catch the simulator's errors at once."""


class TdxsimError(Exception):
    """Base of every tdxsim exception; subclasses keep their standard bases (ValueError, ...)."""
