"""The single-controller driver loops (``retro-ray train``)."""
