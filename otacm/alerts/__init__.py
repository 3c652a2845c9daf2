"""Alerts for operators: a campaign paused, a timeout spike, a campaign finished."""
