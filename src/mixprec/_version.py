"""The package version, importable without the package face."""

__version__ = "0.1.0"
