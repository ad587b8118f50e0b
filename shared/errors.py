"""Errors that business rules raise and the API turns into ``{"error", "message"}``.

``message`` is the text the API contract documents for the case (for example
"User not enrolled"); ``code`` is a stable machine-readable name; ``details``
carries optional extra context (which user ids, which fields).
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 400
    code = "bad_request"
    message = "Bad request"

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None, **details: Any) -> None:
        super().__init__(message or self.message)
        if message is not None:
            self.message = message
        self.headers = headers or {}
        self.details = details


class UserNotEnrolled(ServiceError):
    status, code, message = 400, "user_not_enrolled", "User not enrolled"


class DataTooLarge(ServiceError):
    status, code, message = 400, "data_too_large", "Data payload too large"


class OptionsNotDeliverable(ServiceError):
    status, code, message = 400, "options_not_deliverable", "Options cannot be delivered"


class InvalidPushToken(ServiceError):
    status, code, message = 400, "invalid_push_token", "Invalid push token"


class AppNotFound(ServiceError):
    status, code, message = 404, "app_not_found", "App not found"


class DeviceNotFound(ServiceError):
    status, code, message = 404, "device_not_found", "Device not found"


class NotificationNotFound(ServiceError):
    status, code, message = 404, "notification_not_found", "Notification not found"


class EnrollmentNotFound(ServiceError):
    status, code, message = 404, "enrollment_not_found", "User not enrolled"


class PatientNotFound(ServiceError):
    status, code, message = 404, "patient_not_found", "Patient not found"


class IdentityMappingNotFound(ServiceError):
    status, code, message = 404, "identity_mapping_not_found", "Identity mapping not found"


class InvalidPageCursor(ServiceError):
    status, code, message = 400, "invalid_cursor", "Invalid request"
