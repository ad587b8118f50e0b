"""Patients and their identity mapping (patient id -> person id, the user whose devices get pushes)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.clock import utcnow
from shared.db import rows_affected
from shared.db_upsert import dialect_insert
from shared.errors import IdentityMappingNotFound, PatientNotFound
from shared.models import Patient
from shared.pagination import Page, keyset_page


def _upsert(session: Session, app_id: uuid.UUID, rows: Sequence[tuple[uuid.UUID, uuid.UUID | None]]) -> None:
    now = utcnow()
    insert = dialect_insert(session, Patient).values(
        [{"app_id": app_id, "patient_id": patient, "person_id": person, "created_at": now, "updated_at": now}
         for patient, person in rows]
    )
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["app_id", "patient_id"],
            set_={"person_id": insert.excluded.person_id, "updated_at": now},
        )
    )


def put_mapping(session: Session, app_id: uuid.UUID, patient_id: uuid.UUID, person_id: uuid.UUID) -> bool:
    """Create or replace a patient's mapping; True when the patient was new."""
    existed = session.get(Patient, (app_id, patient_id)) is not None
    _upsert(session, app_id, [(patient_id, person_id)])
    return not existed


def bulk_put_mappings(session: Session, app_id: uuid.UUID, mappings: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> int:
    """Create or replace many mappings in one statement (the last one wins for a repeated patient)."""
    rows = list(dict(mappings).items())
    if rows:
        _upsert(session, app_id, rows)
    return len(rows)


def register_patient(session: Session, app_id: uuid.UUID, patient_id: uuid.UUID) -> Patient:
    """Make a patient known without a mapping (idempotent; an existing mapping is kept)."""
    patient = session.get(Patient, (app_id, patient_id))
    if patient is None:
        patient = Patient(app_id=app_id, patient_id=patient_id, person_id=None)
        session.add(patient)
        session.flush()
    return patient


def get_patient(session: Session, app_id: uuid.UUID, patient_id: uuid.UUID) -> Patient:
    patient = session.get(Patient, (app_id, patient_id))
    if patient is None:
        raise PatientNotFound()
    return patient


def resolve_person(session: Session, app_id: uuid.UUID, patient_id: uuid.UUID) -> uuid.UUID:
    """The person a patient maps to; tells an unknown patient from a missing mapping."""
    patient = get_patient(session, app_id, patient_id)
    if patient.person_id is None:
        raise IdentityMappingNotFound()
    return patient.person_id


def delete_mapping(session: Session, app_id: uuid.UUID, patient_id: uuid.UUID) -> None:
    """Remove the mapping; the patient stays known (sends then get "Identity mapping not found")."""
    patient = get_patient(session, app_id, patient_id)
    if patient.person_id is None:
        raise IdentityMappingNotFound()
    patient.person_id = None


def delete_patient(session: Session, app_id: uuid.UUID, patient_id: uuid.UUID) -> None:
    result = session.execute(delete(Patient).where(Patient.app_id == app_id, Patient.patient_id == patient_id))
    if not rows_affected(result):
        raise PatientNotFound()


def list_patients(session: Session, app_id: uuid.UUID, limit: int, after: uuid.UUID | None = None) -> Page[Patient]:
    """The app's patients ordered by patient id; follow ``next_cursor``."""
    return keyset_page(session, select(Patient).where(Patient.app_id == app_id), Patient.patient_id, limit, after)
