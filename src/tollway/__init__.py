"""tollway: serve AI, sell it, and let agents spend safely — one self-hosted service."""

__version__ = "0.1.0"
