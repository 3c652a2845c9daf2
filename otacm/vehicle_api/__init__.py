"""The vehicle side: credentials, the vehicle API, the per-vehicle director repository."""
