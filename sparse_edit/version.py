"""The package version: a leaf module, so that what records it never imports the package's face."""

__version__ = "0.1.0"
