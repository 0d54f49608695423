"""Mammography second opinion: settings, errors, texts and the `mammo` command line."""

__version__ = "0.1.0"
