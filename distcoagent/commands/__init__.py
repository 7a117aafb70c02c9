"""Subcommands beyond train/validate: each module here exposes ``register(subparsers)``."""
import pkgutil

COMMANDS = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
