"""Notifications that leave otacm: outbound webhooks to an owner app, a CRM or an alert channel,
and alert email.

`webhooks.py` is the library (message format, signatures, one delivery attempt, the retry
schedule, URL rules); it does no database work. `models.py` holds the endpoints, their wrapped
secrets (`_sealing.py`) and the outbox; `outbox.py` queues messages in the caller's transaction
(alerts do, in `alerts.service.raise_alert`); `delivery.py` sends them in rounds, by HTTP or by
email (`mail.py`); `service.py`, `endpoints.py` and `cli.py` are the operators' side;
`repository.py` holds the queries both sides share.
`docs/webhooks.md` is the receivers' contract and the operators' guide.
"""
