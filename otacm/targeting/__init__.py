"""Device management: which vehicles and ECUs an update applies to, and why not."""
