"""The package version (one place; importing it pulls in nothing else)."""

__version__ = "0.1.0"
