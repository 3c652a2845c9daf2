"""Notifications that leave otacm: outbound webhooks to an owner app, a CRM or an alert channel.

`webhooks.py` is the library (message format, signatures, one delivery attempt, the retry
schedule, URL rules); it does no database work. `docs/webhooks.md` is the receivers' contract.
"""
