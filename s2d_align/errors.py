"""Exceptions with messages that name the file, entry or key that is wrong."""


class S2DError(Exception):
    """Base class for errors the suite reports to users (the CLI prints them without a traceback)."""


class ConfigError(S2DError, ValueError):
    """An unknown key, a wrong type or an invalid value in a config file or override."""


class DataError(S2DError, ValueError):
    """Bad input data: missing or corrupt image, malformed JSON/XML, empty report, bad split..."""
