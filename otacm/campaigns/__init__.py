"""Campaigns: creation, approval, scheduling and the rollout engine."""
