"""feishu_mirror: keeps each authorised Feishu user's calendar list mirrored in DynamoDB.

Organised by concern: ``config`` (settings and credentials), ``observability`` (logger, tracer,
metrics), ``errors``, ``identifiers`` (the one rule for each of Feishu's ids: open_id, delivery id,
calendar_id, event_id), ``models``, ``crypto`` and ``callback`` (verifying Feishu pushes), ``feishu``
(the HTTP client), ``store`` (all DynamoDB access), ``token_vault`` (users' tokens sealed with KMS
envelope encryption), ``sync`` (the sync algorithm), ``pings`` (turning a push into sync invocations),
``resync`` (the scheduled safety net), ``onboarding`` and ``oauth_state`` (OAuth, signed states),
``health`` (per-user health, the push → mirror lag metric), ``status`` (the operator's service: views as
data), ``status_http`` (its HTTP edge: content negotiation, parameters, the origin check) and
``status_pages`` (its HTML), and the read side: ``recurrence`` (Feishu times and RRULEs expanded in the
event's zone), ``agenda`` (the agenda index's attributes, occurrences, free/busy, the service),
``agenda_http`` (the read routes' parameters and JSON) and ``agenda_store`` (its DynamoDB reads).
Nothing here imports Lambda-specific code; the handlers in ``functions/`` wire it to triggers.
"""
