"""fgbg: train and tune a foreground mask + depth network on Ray (see README.md)."""

__version__ = "0.1.0"
