"""TUF repositories: signed metadata that vehicles verify with python-tuf's `ngclient`."""
