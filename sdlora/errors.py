"""The configuration error every module raises for a bad value (its own module, so that
`sdlora.backbone` can subclass it without importing `sdlora.config`, which imports it back)."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names it and what would be valid."""
