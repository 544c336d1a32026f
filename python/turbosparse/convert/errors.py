"""The one exception the converter raises for bad input."""


class ConvertError(Exception):
    """A conversion cannot go on. The message names the file or tensor at fault."""
