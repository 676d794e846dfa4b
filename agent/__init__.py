"""TrackLeak: find the line that leaks memory in a running Python process."""

__version__ = "0.1.0"
