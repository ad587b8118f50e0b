"""Queue and task names: the wire format between the API, the CLI, the scheduler and the workers.

Both sides import these names from here, so neither imports the other.
"""

from __future__ import annotations

from shared.platforms import PLATFORMS

FANOUT_QUEUE = "fanout"
MAINTENANCE_QUEUE = "maintenance"
# Outcome webhooks: their own queue and time limits, so a slow or dead endpoint never delays a push.
WEBHOOKS_QUEUE = "webhooks"
# One queue per vendor so operators can size a worker pool per vendor (the platform registry names them).
PLATFORM_QUEUES = {name: spec.queue for name, spec in PLATFORMS.items()}
ALL_QUEUES = (FANOUT_QUEUE, *PLATFORM_QUEUES.values(), MAINTENANCE_QUEUE, WEBHOOKS_QUEUE)

# Task names are part of the wire format between API, scheduler and workers.
FANOUT_TASK = "pushq.fanout"
BROADCAST_STEP_TASK = "pushq.broadcast_step"
DELIVER_TASK = "pushq.deliver"
SWEEP_TASK = "pushq.sweep"
RELEASE_SCHEDULED_TASK = "pushq.release_scheduled"
HOUSEKEEPING_TASK = "pushq.housekeeping"
RELEASE_WEBHOOKS_TASK = "pushq.release_webhooks"
DELIVER_WEBHOOKS_TASK = "pushq.deliver_webhooks"
