"""otacm: over-the-air software update campaign manager for vehicle fleets."""

__version__ = "0.1.0"
