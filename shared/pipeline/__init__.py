"""The delivery pipeline's rules: batched fan-out, chunk claims, outcomes, status, sweep.

Plain functions over a session, so they are testable without Celery. The worker
tasks call them in this order, each step in its own transaction, and each step
costs a constant number of SQL statements whatever the number of rows:

1. :func:`shared.pipeline.fanout.fan_out` turns a batch of notifications (a whole
   bulk request) into delivery rows and groups them into chunks per platform and
   app, across notifications and users.
2. :func:`shared.pipeline.claim.claim_chunk` claims a chunk with one statement that
   also returns all an adapter needs (message, token); the claim commits *before*
   anything is pushed, so a redelivered task finds the deliveries claimed and
   never pushes them twice.
3. the vendor adapter pushes; :func:`shared.pipeline.record.record_outcomes` writes
   every outcome of the chunk in one statement, only under the claim that pushed,
   disables dead devices in one statement and refreshes the notifications'
   statuses (:mod:`shared.pipeline.status`).

:mod:`shared.pipeline.sweep` releases what was lost on the way (an enqueue, a
worker, a due retry); :mod:`shared.pipeline.values` holds the plain value types
the steps hand each other. Database-specific branches (PostgreSQL's RETURNING
joins and arrays, SQLite for ``make run``) sit beside the statement they serve.
"""
