"""The DynamoDB adapters: the only code that touches boto3's DynamoDB API, one module per table or concern.

``values`` (items to plain Python values and back, numbers exact), ``calls`` (every page of a Query
through boto3's paginator, retried batch reads, what an error code means), ``fencing`` (writes under a
user's lease: ``FencedWrites``), ``users`` (the users table: reading and updating one user's item),
``user_schedule`` (pings, claims, the lease, the due index), ``user_tokens`` (authorisation and the
token pair), ``user_health`` (the operator's allow-listed reads), ``mirror`` (the calendars and events
tables), ``listings`` (every collection's listing state: the calendar list's on the user, each
calendar's events' in the event-listings table), ``oauth_states`` (single-use OAuth states),
``rate_gate`` (the Feishu rate gate) and ``agenda_reader`` (the read side's projected reads).

Each adapter satisfies the narrow ``Protocol`` its consumer declares next to itself (``pings``,
``resync``, ``sync``, ``onboarding``, ``status``, ``agenda``); ``composition`` builds them.
"""
