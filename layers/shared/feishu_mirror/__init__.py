"""feishu_mirror: keeps each authorised Feishu user's calendars and their events mirrored in DynamoDB.

Module map, one line a module (the README's "How it is built" draws them). Domain modules do no I/O
and declare, next to themselves, the narrow ``Protocol`` (in parentheses) each needs; the adapters
satisfy those; ``composition`` wires them.

Wiring
- ``composition``: the object graph — ``build(settings, clients, feishu)``, and ``for_lambda`` for handlers.
- ``aws_clients``: the boto3 clients of a Lambda container, all with the one ``Config``.
- ``config``: settings from environment variables, parsed once; the Feishu app's credentials.
- ``observability``: the Logger and Metrics every module logs and counts with.

Domain
- ``callback``: verifying a Feishu push (signature, token, timestamp) and parsing it.
- ``identifiers``: the one rule for each of Feishu's ids (open_id, delivery id, calendar_id, event_id).
- ``crypto``: decrypting Feishu's encrypted pushes.
- ``pings``: a push becomes at most one pending sync per user (``PingTargets``).
- ``resync``: the scheduled safety net starts due users' syncs (``DueUsers``).
- ``sync``: one user's sync: the lease, passes, each calendar's events (``SyncLeases``, ``CalendarApi``, …).
- ``listing``: the one listing engine: pages, checkpoints, sync tokens, 190008, held mass deletions.
- ``mirror_collection``: a collection as the engine sees it (``MirroredItems``, ``ListingRecords``).
- ``sync_tokens``: a user's tokens during a sync; single-use refresh tokens (``TokenRecords``).
- ``concurrency``: listings side by side within one sync: a bounded map and a lock (``Concurrency``).
- ``onboarding``: the OAuth consent and its callback (``OAuthApi``, ``Authorizations``, ``StateClaims``).
- ``oauth_state``: the signed, expiring OAuth state and its PKCE verifier.
- ``status``: the operator's service, views as data, and "resync now" (``HealthReads``, ``MirroredCalendars``, …).
- ``status_http``: the status routes' HTTP edge: content negotiation, parameters, the origin check.
- ``status_pages``: the status routes' HTML.
- ``health``: one user's health as an operator sees it; the push → mirror lag metric.
- ``agenda``: the read side's service: a user's calendars, agenda and free/busy (``AgendaSource``).
- ``agenda_http``: the read routes' parameters and JSON.
- ``recurrence``: Feishu's times and RRULEs, expanded in the event's zone.
- ``changes``: mirror-table stream records as change events for EventBridge.
- ``models``: domain values (calendars, events, pages, listing state, tokens, the ``Fence``).
- ``errors``: the exception hierarchy.
- ``storable``: which Feishu values DynamoDB can hold, and the item-size estimate.

Adapters (the only I/O)
- ``feishu``: the Feishu HTTP client: retries, rate-limit waits, the token endpoint.
- ``token_vault``: users' tokens sealed with KMS envelope encryption.
- ``invoker``: starting a sync through the Lambda API.
- ``dynamodb.values``: DynamoDB items to plain Python values and back, numbers exact.
- ``dynamodb.calls``: every page of a Query (boto3's paginator), batch reads, what an error means.
- ``dynamodb.fencing``: writes under a user's lease (``FencedWrites``).
- ``dynamodb.users``: the users table: reading and updating one user's item.
- ``dynamodb.user_schedule``: pings, claims, the sync's lease, the due index.
- ``dynamodb.user_tokens``: a user's authorisation and token pair, re-authorisation.
- ``dynamodb.user_health``: the operator's allow-listed reads of users.
- ``dynamodb.mirror``: the calendars and events tables.
- ``dynamodb.listings``: every collection's listing state (the calendar list's, each calendar's events').
- ``dynamodb.oauth_states``: single-use OAuth states.
- ``dynamodb.rate_gate``: the app-wide Feishu rate gate, each API on its own.
- ``dynamodb.agenda_reader``: the read side's projected reads.

Nothing here imports Lambda-specific code; the handlers in ``functions/`` wire it to triggers.
"""
