"""The config directory: Haraka-style files, parsed and validated, and the process environment.

Both sides read it.  ``load()`` / ``current()`` give the process's :class:`Config`;
the modules inside are the readers (``files``), the registry of every key
(``settings``), the environment (``environ``), where runtime state lives
(``state``), plugins, and what every process does before it works (``startup``).
"""

from mailflow.config.files import ConfigError
from mailflow.config.loader import (
    RELOAD_CHECK_INTERVAL,
    Auth,
    Config,
    Tls,
    current,
    default_directory,
    load,
)

__all__ = ["Auth", "Config", "ConfigError", "RELOAD_CHECK_INTERVAL", "Tls", "current",
           "default_directory", "load"]
