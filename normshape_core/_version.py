"""The package version: one literal, read by setuptools (pyproject.toml) and by the
checkpoints' provenance, imported by nothing else so that any layer may use it."""

__version__ = "0.1.0"
