"""The package's version, in a module of its own so that no module imports the package root
(which loads both doors) just to name it."""

__version__ = "1.0.0.dev0"
