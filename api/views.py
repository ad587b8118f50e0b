"""The push API's routes: parse, authorize, call one service function, serialize."""

from __future__ import annotations

from flask import Blueprint, current_app

from api.auth import Principal
from api.endpoints import endpoint, parse_id
from api.metrics import count_accepted, current_request_id
from api.request_session import db_session
from api.schemas import (
    BatchSendRequest,
    BulkSendRequest,
    DeviceIdResponse,
    DeviceListQuery,
    DevicePage,
    EnrollmentPage,
    EnrollmentSchema,
    EnrollRequest,
    EnrollResponse,
    NotificationIdResponse,
    NotificationIdsResponse,
    NotificationListQuery,
    NotificationPage,
    NotificationSchema,
    PageQuery,
    RegisterDeviceRequest,
    SendRequest,
    StatusResponse,
)
from shared.clock import utcnow
from shared.errors import DeviceNotFound, EnrollmentNotFound, NotificationNotFound
from shared.outbox import signaller
from shared.services import devices, enrollments, notifications, scheduled, sends

bp = Blueprint("push", __name__)


def _pushq():
    return current_app.extensions["pushq"]


@endpoint(
    bp, "/push/devices/register", "POST", summary="Register a device for push notifications",
    auth="user", request_schema=RegisterDeviceRequest, responses={201: DeviceIdResponse},
    errors={404: "App not found", 400: "Invalid request / Invalid push token",
            429: "Too many registrations, try again later"}, tags=["devices"],
)
def register_device(principal: Principal, body: dict, **_):
    """Deduplicates on (app_id, token hash): re-registering returns the same device_id and updates last_seen_at.

    Only into an app the user is enrolled in (404 App not found otherwise). A Web Push endpoint must be an
    https URL of a known push service. Beyond PUSHQ_MAX_DEVICES_PER_USER active devices per user and app,
    the least recently seen one is disabled.
    """
    settings = _pushq().settings
    registration = devices.register_device(
        db_session(),
        app_id=body["app_id"],
        user_id=principal.user_id,
        platform=body["platform"],
        push_token=body["push_token"],
        allow_http_endpoints=settings.allow_http_endpoints,
        extra_push_hosts=settings.webpush_extra_hosts,
        max_devices=settings.max_devices_per_user,
        limiter=_pushq().registration_limiter,
    )
    return DeviceIdResponse().dump({"device_id": registration.device_id}), 201


@endpoint(
    bp, "/push/devices/{device_id}", "DELETE", summary="Unregister a device",
    auth="any", responses={200: StatusResponse}, errors={404: "Device not found"}, tags=["devices"],
)
def unregister_device(principal: Principal, _body, device_id: str):
    """A user may remove their own devices; a service with push:send its app's devices."""
    devices.unregister_device(
        db_session(),
        parse_id(device_id, DeviceNotFound),
        app_id=principal.app_id if principal.is_service else None,
        user_id=None if principal.is_service else principal.user_id,
    )
    return {"status": "ok"}, 200


def _create(principal: Principal, requests: list[sends.SendRequest]) -> tuple[list, dict[str, str]]:
    """Create the notifications; returns their ids and the quota headers for the response."""
    pushq = _pushq()
    accepted = sends.create_notifications(
        db_session(),
        principal.app_id,
        requests,
        default_ttl=pushq.settings.default_ttl_seconds,
        enqueue=signaller(pushq.redis),  # the rows are the outbox: wake the fan-out workers' pump
        quota=pushq.quota,
        request_id=current_request_id(),
    )
    count_accepted(len(accepted.notification_ids))  # once committed
    headers = accepted.quota.headers(utcnow()) if accepted.quota else {}
    headers.update(pushq.backpressure.headers())
    return accepted.notification_ids, headers


_SEND_ERRORS = {400: "User not enrolled / Data payload too large / Invalid request"}


@endpoint(
    bp, "/push/send", "POST", summary="Send a notification to every device of one user",
    auth="service", request_schema=SendRequest, responses={200: NotificationIdResponse},
    errors=_SEND_ERRORS, tags=["send"], idempotent=True, quota=True,
)
def send(principal: Principal, body: dict, **_):
    """The notification is stored, then fanned out by the workers to the user's active devices."""
    (notification_id,), headers = _create(principal, [sends.SendRequest(**body)])
    return NotificationIdResponse().dump({"notification_id": notification_id}), 200, headers


@endpoint(
    bp, "/push/send/bulk", "POST", summary="Send the same notification to many users",
    auth="service", request_schema=BulkSendRequest, responses={200: NotificationIdsResponse},
    errors=_SEND_ERRORS, tags=["send"], idempotent=True, quota=True,
)
def send_bulk(principal: Principal, body: dict, **_):
    """One notification per user, ids in request order. All users must be enrolled, or nothing is sent."""
    common = {k: v for k, v in body.items() if k != "user_ids"}
    ids, headers = _create(principal, [sends.SendRequest(user_id=user_id, **common) for user_id in body["user_ids"]])
    return NotificationIdsResponse().dump({"notification_ids": ids}), 200, headers


@endpoint(
    bp, "/push/send/batch", "POST", summary="Send different notifications in one call",
    auth="service", request_schema=BatchSendRequest, responses={200: NotificationIdsResponse},
    errors=_SEND_ERRORS, tags=["send"], idempotent=True, quota=True,
)
def send_batch(principal: Principal, body: dict, **_):
    """Ids in request order; all accepted or none."""
    ids, headers = _create(principal, [sends.SendRequest(**item) for item in body["notifications"]])
    return NotificationIdsResponse().dump({"notification_ids": ids}), 200, headers


@endpoint(
    bp, "/push/notifications", "GET", summary="The calling app's notifications, newest first",
    auth="service", query_schema=NotificationListQuery, responses={200: NotificationPage}, tags=["send"],
)
def list_notifications(principal: Principal, query: dict, **_):
    """Filter by user_id and/or status; follow next_cursor for older ones."""
    page = notifications.list_notifications(
        db_session(), principal.app_id, limit=query["limit"], cursor=query["cursor"],
        user_id=query["user_id"], status=query["status"],
    )
    return NotificationPage().dump(page), 200


@endpoint(
    bp, "/push/devices", "GET", summary="The calling app's devices (without their tokens)",
    auth="service", query_schema=DeviceListQuery, responses={200: DevicePage}, tags=["devices"],
)
def list_devices(principal: Principal, query: dict, **_):
    """Ordered by id; filter by user_id; disabled devices show when and why."""
    page = devices.list_devices(
        db_session(), principal.app_id, limit=query["limit"], after=query["cursor"], user_id=query["user_id"]
    )
    return DevicePage().dump(page), 200


@endpoint(
    bp, "/push/notifications/{notification_id}", "GET", summary="A notification and its per-device outcomes",
    auth="service", responses={200: NotificationSchema}, errors={404: "Notification not found"}, tags=["send"],
)
def get_notification(principal: Principal, _body, notification_id: str):
    """Visible only to the app that sent it."""
    found = notifications.get_notification(db_session(), principal.app_id, parse_id(notification_id, NotificationNotFound))
    return NotificationSchema().dump(found), 200


@endpoint(
    bp, "/push/notifications/{notification_id}", "DELETE", summary="Cancel a scheduled notification",
    auth="service", responses={200: StatusResponse},
    errors={404: "Notification not found", 409: "Notification is already being sent"}, tags=["send"],
)
def cancel_notification(principal: Principal, _body, notification_id: str):
    """Only while it is `scheduled` (its send_at has not come): 200 {"status": "cancelled"}, also when asked
    again. Once released (queued, sending or final) 409. The daily quota it took is not given back."""
    status = scheduled.cancel(db_session(), principal.app_id, parse_id(notification_id, NotificationNotFound), utcnow())
    return StatusResponse().dump({"status": status}), 200


@endpoint(
    bp, "/push/enrollments", "POST", summary="Enroll users in the calling app",
    auth="service", request_schema=EnrollRequest, responses={200: EnrollResponse}, tags=["enrollments"],
)
def enroll(principal: Principal, body: dict, **_):
    """Idempotent: users already enrolled are skipped."""
    count = enrollments.enroll(db_session(), principal.app_id, body["user_ids"])
    return {"enrolled": count}, 200


@endpoint(
    bp, "/push/enrollments", "GET", summary="List the calling app's enrolled users",
    auth="service", query_schema=PageQuery, responses={200: EnrollmentPage}, tags=["enrollments"],
)
def list_enrollments(principal: Principal, query: dict, **_):
    """Ordered by user id; follow next_cursor for the next page."""
    page = enrollments.list_enrollments(db_session(), principal.app_id, query["limit"], query["cursor"])
    return EnrollmentPage().dump(page), 200


@endpoint(
    bp, "/push/enrollments/{user_id}", "PUT", summary="Enroll one user in the calling app",
    auth="service", responses={200: EnrollmentSchema}, errors={404: "User not enrolled"}, tags=["enrollments"],
)
def enroll_one(principal: Principal, _body, user_id: str):
    """Idempotent."""
    session = db_session()
    uid = parse_id(user_id, EnrollmentNotFound)
    enrollments.enroll(session, principal.app_id, [uid])
    return EnrollmentSchema().dump(enrollments.get_enrollment(session, principal.app_id, uid)), 200


@endpoint(
    bp, "/push/enrollments/{user_id}", "GET", summary="Whether a user is enrolled in the calling app",
    auth="service", responses={200: EnrollmentSchema}, errors={404: "User not enrolled"}, tags=["enrollments"],
)
def get_enrollment(principal: Principal, _body, user_id: str):
    found = enrollments.get_enrollment(db_session(), principal.app_id, parse_id(user_id, EnrollmentNotFound))
    return EnrollmentSchema().dump(found), 200


@endpoint(
    bp, "/push/enrollments/{user_id}", "DELETE", summary="Unenroll a user from the calling app",
    auth="service", responses={200: StatusResponse}, errors={404: "User not enrolled"}, tags=["enrollments"],
)
def unenroll(principal: Principal, _body, user_id: str):
    """Their devices stay registered; sends to them are refused until they are enrolled again."""
    enrollments.unenroll(db_session(), principal.app_id, parse_id(user_id, EnrollmentNotFound))
    return {"status": "ok"}, 200
