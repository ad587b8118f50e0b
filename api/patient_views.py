"""The care platform's fan-out endpoint and the patient identity mappings it relies on."""

from __future__ import annotations

import logging

from flask import Blueprint, current_app

from api.auth import Principal
from api.endpoints import endpoint, parse_id
from api.metrics import count_accepted, current_request_id, enqueue_with_request_id
from api.replay import remember_response
from api.request_session import commit_request_session, db_session
from api.schemas import (
    BulkMappingRequest,
    BulkMappingResponse,
    IdentityRequest,
    PageQuery,
    PatientPage,
    PatientSchema,
    PatientSendRequest,
    PatientSendResponse,
    StatusResponse,
)
from shared.clock import utcnow
from shared.errors import PatientNotFound
from shared.services import patient_push, patients

log = logging.getLogger(__name__)

bp = Blueprint("patients", __name__)

_NOT_FOUND = {404: "Patient not found / Identity mapping not found"}


@endpoint(
    bp, "/v1/push/send", "POST", summary="Fan out a web push notification to all subscribed devices for a patient",
    auth="m2m", request_schema=PatientSendRequest, responses={200: PatientSendResponse}, errors=_NOT_FOUND,
    tags=["patients"], idempotent=True, quota=True,
)
def patient_send(principal: Principal, body: dict, **_):
    """Waits for each subscription's first delivery attempt up to PUSHQ_FANOUT_WAIT_SECONDS; what is
    still unanswered then is reported as `pending` and its outcome is readable at
    GET /push/notifications/{notification_id}. With a future `sendAt` it answers at once, every
    subscription `pending` (the send is scheduled; cancel it with DELETE /push/notifications/{id}).
    Once the send is stored the answer is 200 even if the wait fails (e.g. Redis goes away): the
    subscriptions not known then are `pending`; only failures before the commit answer 503."""
    state = current_app.extensions["pushq"]
    started = patient_push.start_patient_send(
        db_session(), principal.app_id, body["patient_id"], title=body["title"], body=body["body"], url=body["url"],
        default_ttl=state.settings.default_ttl_seconds, enqueue=enqueue_with_request_id(state.dispatcher),
        quota=state.quota,
        request_id=current_request_id(),
        send_at=body["send_at"],
        options=body["options"],
    )
    count_accepted(1)  # once committed
    pending = [patient_push.SubscriptionResult(i, patient_push.PENDING, "") for i in started.subscription_ids]
    if started.scheduled:  # nothing goes out before sendAt: nothing to wait for
        headers = started.quota.headers(utcnow()) if started.quota else {}
        return _send_response(started, pending), 200, headers
    # Stored with the notification id before anything can fail: a replay never finds the key "in progress".
    remember_response(200, _send_response(started, pending))
    commit_request_session()
    # Committed: from here the answer is 200 whatever happens (with `pending` for what is not known),
    # or a caller retrying without an Idempotency-Key would send the patient the message twice.
    try:
        results = patient_push.wait_for_first_attempts(
            state.session_factory, state.redis, started, state.settings.fanout_wait_seconds,
            max_waits_per_app=state.settings.max_waits_per_app,
        )
    except Exception:
        log.exception("waiting for the first attempts of notification %s failed", started.notification_id)
        results = pending
    headers = started.quota.headers(utcnow()) if started.quota else {}
    return _send_response(started, results), 200, headers


def _send_response(started: patient_push.StartedSend, results: list[patient_push.SubscriptionResult]) -> dict:
    response = {
        "patient_id": str(started.patient_id),
        "person_id": str(started.person_id),
        "sent": sum(r.status == patient_push.SENT for r in results),
        "rejected": sum(r.status == patient_push.REJECTED for r in results),
        "results": [
            {"subscription_id": str(r.subscription_id), "status": r.status, "vendor_message_id": r.vendor_message_id}
            for r in results
        ],
        "notification_id": str(started.notification_id),
    }
    return PatientSendResponse().dump(response)


@endpoint(
    bp, "/v1/patients/{patient_id}/identity", "PUT", summary="Create or replace a patient's identity mapping",
    auth="service", request_schema=IdentityRequest, responses={200: PatientSchema, 201: PatientSchema}, tags=["patients"],
)
def put_identity(principal: Principal, body: dict, patient_id: str):
    """201 when the patient was new, 200 when an existing patient's mapping was set or replaced."""
    session = db_session()
    pid = parse_id(patient_id, PatientNotFound)
    created = patients.put_mapping(session, principal.app_id, pid, body["person_id"])
    session.expire_all()
    return PatientSchema().dump(patients.get_patient(session, principal.app_id, pid)), 201 if created else 200


@endpoint(
    bp, "/v1/patients/{patient_id}/identity", "GET", summary="Look up a patient's identity mapping",
    auth="service", responses={200: PatientSchema}, errors=_NOT_FOUND, tags=["patients"],
)
def get_identity(principal: Principal, _body, patient_id: str):
    session = db_session()
    pid = parse_id(patient_id, PatientNotFound)
    patients.resolve_person(session, principal.app_id, pid)
    return PatientSchema().dump(patients.get_patient(session, principal.app_id, pid)), 200


@endpoint(
    bp, "/v1/patients/{patient_id}/identity", "DELETE", summary="Remove a patient's identity mapping (the patient stays known)",
    auth="service", responses={200: StatusResponse}, errors=_NOT_FOUND, tags=["patients"],
)
def delete_identity(principal: Principal, _body, patient_id: str):
    patients.delete_mapping(db_session(), principal.app_id, parse_id(patient_id, PatientNotFound))
    return {"status": "ok"}, 200


@endpoint(
    bp, "/v1/patients/{patient_id}", "PUT", summary="Register a patient (without changing its mapping)",
    auth="service", responses={200: PatientSchema}, tags=["patients"],
)
def put_patient(principal: Principal, _body, patient_id: str):
    patient = patients.register_patient(db_session(), principal.app_id, parse_id(patient_id, PatientNotFound))
    return PatientSchema().dump(patient), 200


@endpoint(
    bp, "/v1/patients/{patient_id}", "DELETE", summary="Forget a patient and its mapping",
    auth="service", responses={200: StatusResponse}, errors={404: "Patient not found"}, tags=["patients"],
)
def delete_patient(principal: Principal, _body, patient_id: str):
    patients.delete_patient(db_session(), principal.app_id, parse_id(patient_id, PatientNotFound))
    return {"status": "ok"}, 200


@endpoint(
    bp, "/v1/patients", "GET", summary="List the calling app's patients",
    auth="service", query_schema=PageQuery, responses={200: PatientPage}, tags=["patients"],
)
def list_patients(principal: Principal, query: dict, **_):
    page = patients.list_patients(db_session(), principal.app_id, query["limit"], query["cursor"])
    return PatientPage().dump(page), 200


@endpoint(
    bp, "/v1/patients/identities", "POST", summary="Create or replace many identity mappings at once",
    auth="service", request_schema=BulkMappingRequest, responses={200: BulkMappingResponse}, tags=["patients"],
)
def bulk_identities(principal: Principal, body: dict, **_):
    """Up to 1000 mappings; a patient repeated in the list gets its last mapping."""
    count = patients.bulk_put_mappings(
        db_session(), principal.app_id, [(m["patient_id"], m["person_id"]) for m in body["mappings"]]
    )
    return {"upserted": count}, 200
