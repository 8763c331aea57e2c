"""The configuration error every module raises for a bad value (its own module, so that
`sdlora.backbone` can subclass it without importing `sdlora.config`, which imports it back)."""

__all__ = ["ConfigError", "refused_field"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and what would be valid."""


def refused_field(err: Exception, values: dict) -> str | None:
    """The field of `values` that the ConfigError `err` refused (its message starts with
    ``field=``), so a command line can name the option that set it; None when the error names
    none of them (then the message stands alone)."""
    return next((k for k in values if str(err).startswith(f"{k}=")), None)
