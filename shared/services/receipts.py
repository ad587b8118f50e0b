"""Recording a receipt from pushq's service worker: a delivery was displayed, or its notification clicked."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, literal, update
from sqlalchemy.orm import Session

from shared.db import rows_affected
from shared.models import Delivery


def record_receipt(session: Session, delivery_id: uuid.UUID, event: str, now: datetime,
                   action: str | None = None) -> bool:
    """Set ``displayed_at`` (and for a click ``clicked_at``) once: the first time wins, repeats change nothing.

    One UPDATE by primary key; a click also marks the delivery displayed (it was
    shown to be clicked), and keeps the action button clicked (``clicked_action``,
    None for the notification itself) of that first click. False when the delivery
    no longer exists (deleted by housekeeping after its retention).
    """
    values: dict[str, Any] = {"displayed_at": func.coalesce(Delivery.displayed_at, now)}
    if event == "clicked":
        values["clicked_at"] = func.coalesce(Delivery.clicked_at, now)
        values["clicked_action"] = case((Delivery.clicked_at.is_(None), literal(action, Delivery.clicked_action.type)),
                                        else_=Delivery.clicked_action)
    return rows_affected(session.execute(
        update(Delivery).where(Delivery.id == delivery_id).values(**values).execution_options(synchronize_session=False)
    )) == 1
