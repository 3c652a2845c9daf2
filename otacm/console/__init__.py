"""The web console: server-rendered pages for every operator role."""
