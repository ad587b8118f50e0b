"""Identity mappings: the API for service callers and the CSV import."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.harness import TEST_ENV

BIN = Path(sys.executable).parent


def test_create_replace_look_up_delete(client, tenant):
    patient, person, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    headers = tenant.service_headers()
    created = client.put(f"/v1/patients/{patient}/identity", json={"person_id": str(person)}, headers=headers)
    assert created.status_code == 201
    assert created.json["person_id"] == str(person)
    replaced = client.put(f"/v1/patients/{patient}/identity", json={"person_id": str(other)}, headers=headers)
    assert replaced.status_code == 200
    looked_up = client.get(f"/v1/patients/{patient}/identity", headers=headers)
    assert looked_up.status_code == 200 and looked_up.json["person_id"] == str(other)
    assert client.delete(f"/v1/patients/{patient}/identity", headers=headers).json == {"status": "ok"}
    missing = client.get(f"/v1/patients/{patient}/identity", headers=headers)
    assert (missing.status_code, missing.json["message"]) == (404, "Identity mapping not found")
    assert client.delete(f"/v1/patients/{patient}", headers=headers).status_code == 200
    gone = client.get(f"/v1/patients/{patient}/identity", headers=headers)
    assert (gone.status_code, gone.json["message"]) == (404, "Patient not found")


def test_bulk_upsert_and_pagination(client, tenant):
    headers = tenant.service_headers()
    mappings = [{"patient_id": str(uuid.uuid4()), "person_id": str(uuid.uuid4())} for _ in range(25)]
    response = client.post("/v1/patients/identities", json={"mappings": mappings}, headers=headers)
    assert response.json == {"upserted": 25}
    seen, cursor = [], None
    while True:
        page = client.get("/v1/patients", query_string={"limit": 10, **({"cursor": cursor} if cursor else {})},
                          headers=headers).json
        seen += [item["patient_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(m["patient_id"] for m in mappings)
    assert client.post("/v1/patients/identities", json={"mappings": mappings * 41}, headers=headers).status_code == 400


def test_a_known_patient_without_mapping_is_told_apart(client, tenant):
    patient = uuid.uuid4()
    headers = tenant.service_headers()
    assert client.put(f"/v1/patients/{patient}", headers=headers).json["person_id"] is None
    response = client.post("/v1/push/send", json={"patientId": str(patient), "title": "t", "body": "b"}, headers=headers)
    assert (response.status_code, response.json["message"]) == (404, "Identity mapping not found")


def test_mappings_are_per_app(client, tenant, other_tenant):
    patient, person = uuid.uuid4(), uuid.uuid4()
    created = client.put(f"/v1/patients/{patient}/identity", json={"person_id": str(person)},
                         headers=tenant.service_headers())
    assert created.status_code == 201, created.json
    # The positive control: the owning app finds the mapping the other app must not.
    own = client.get(f"/v1/patients/{patient}/identity", headers=tenant.service_headers())
    assert (own.status_code, own.json["person_id"]) == (200, str(person))
    for method, path in (("get", f"/v1/patients/{patient}/identity"), ("delete", f"/v1/patients/{patient}/identity"),
                         ("delete", f"/v1/patients/{patient}")):
        response = getattr(client, method)(path, headers=other_tenant.service_headers())
        assert (response.status_code, response.json["message"]) == (404, "Patient not found")
    response = client.post("/v1/push/send", json={"patientId": str(patient), "title": "t", "body": "b"},
                           headers=other_tenant.service_headers())
    assert response.status_code == 404


def test_csv_import(client, tenant, tmp_path):
    rows = [(uuid.uuid4(), uuid.uuid4()) for _ in range(3)]
    csv_path = tmp_path / "patients.csv"
    csv_path.write_text("patient_id,person_id\n" + "".join(f"{p},{q}\n" for p, q in rows))
    result = subprocess.run([str(BIN / "pushq"), "import-patients", str(tenant.id), str(csv_path)],
                            env={**TEST_ENV, "PATH": str(BIN)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "imported 3 mapping(s)" in result.stdout
    for patient, person in rows:
        assert client.get(f"/v1/patients/{patient}/identity", headers=tenant.service_headers()).json["person_id"] == str(person)

    bad = tmp_path / "bad.csv"
    bad.write_text(f"patient_id,person_id\n{uuid.uuid4()},{uuid.uuid4()}\nnot-a-uuid,{uuid.uuid4()}\n")
    result = subprocess.run([str(BIN / "pushq"), "import-patients", str(tenant.id), str(bad)],
                            env={**TEST_ENV, "PATH": str(BIN)}, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "line 3" in result.stderr
