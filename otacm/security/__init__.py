"""Operators: accounts, roles and permissions, API tokens, console sessions, the audit log."""
