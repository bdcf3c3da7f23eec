"""No credential reaches a record or a log: every form redacted, and a failing run that was handed
a signed URL and a secret leaves neither in `_runs`, its error, its log or the exception."""

from __future__ import annotations

import json
import logging

import pytest

from recfactory.jobs.runtime.env import MASK, RedactingFilter, redact

FORMS = {  # input → the secret parts that must not survive
    "s3a://AKIAABCDEFGHIJKLMNOP:wJalrXUtnFEMI@bucket/p": ["wJalrXUtnFEMI", "AKIAABCDEFGHIJKLMNOP"],
    "https://acct.blob.core.windows.net/c/x.parquet?sv=2020-08-04&se=2026&sig=AbC%2Bdef%3D": ["AbC%2Bdef%3D"],
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIAX%2F2026&X-Amz-Signature=deadbeef"
    "&X-Amz-Security-Token=FQoGZXIv": ["deadbeef", "FQoGZXIv", "AKIAX%2F2026"],
    "https://storage.googleapis.com/b/o?X-Goog-Signature=abc123def&X-Goog-Credential=svc%40p": ["abc123def", "svc%40p"],
    "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=Zm9vYmFyYmF6==;EndpointSuffix=core": ["Zm9vYmFyYmF6"],
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.cGF5bG9hZA.c2ln": ["eyJhbGciOiJIUzI1NiJ9"],
    "https://api.example.com/v1?api_key=k-998877&user=me": ["k-998877"],
    "connecting with key AKIAABCDEFGHIJKLMNOP": ["AKIAABCDEFGHIJKLMNOP"],
}


def test_every_form_of_credential_is_masked_and_the_rest_kept(monkeypatch):
    monkeypatch.setenv("WAREHOUSE_DB_PASSWORD", "pw-5f4dcc3b5aa7")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/tmp/auth_token")  # where a secret is: kept
    for text, secrets in FORMS.items():
        out = redact(text)
        assert MASK in out and not any(s in out for s in secrets), out
    assert redact("login failed for pw-5f4dcc3b5aa7") == f"login failed for {MASK}"
    kept = [
        "/tmp/auth_token",
        "s3a://bucket/events?versionId=3",
        "keys=user=user_id,item=item_id",
        "monkey=1",
        "token sequences of length 12345678",
    ]
    for text in kept:
        assert redact(text) == text
    nested = redact({"a": ["s3a://u:p@b/x", ("sig=1234",)], "n": 3})
    assert nested == {"a": [f"s3a://{MASK}@b/x", (f"sig={MASK}",)], "n": 3}


def test_the_log_filter_redacts_messages_arguments_and_exceptions():
    rec = logging.LogRecord("recfactory", logging.INFO, __file__, 1, "reading %s", ("s3a://u:secret@b/x",), None)
    RedactingFilter().filter(rec)
    assert "secret" not in rec.getMessage()
    err = ValueError("cannot open https://h/x?sig=SIGNATURE123")
    rec = logging.LogRecord("recfactory", logging.ERROR, __file__, 1, "failed", (), (ValueError, err, None))
    RedactingFilter().filter(rec)
    assert "SIGNATURE123" not in str(err)


@pytest.mark.spark
def test_a_failed_run_records_and_logs_no_credential(spark, tmp_path, monkeypatch, capfd):
    from deltalake import DeltaTable

    from recfactory.jobs.runtime.job import run_job

    monkeypatch.setenv("EVENTS_BUCKET_SECRET", "s3cr3t-value-42")
    missing = tmp_path / "nothing-here"
    path = f"file://user:hunter2@localhost{missing}?X-Amz-Signature=SIG0123456789&note=s3cr3t-value-42"
    wh = str(tmp_path / "wh")
    with pytest.raises(Exception) as e:
        run_job(
            "ingest",
            [
                "--warehouse",
                wh,
                "--as-of",
                "2025-06-30",
                "--dataset",
                "tables",
                "--events-path",
                path,
                "--items-path",
                path,
            ],
            spark=spark,
        )
    leaked = ("hunter2", "SIG0123456789", "s3cr3t-value-42")
    assert not any(s in str(e.value) for s in leaked), str(e.value)
    row = DeltaTable(f"{wh}/_runs").to_pandas().iloc[0]
    assert row["status"] == "failed" and row["error"]
    record = json.dumps({k: str(row[k]) for k in row.index})
    assert not any(s in record for s in leaked), record
    metadata = json.dumps([h.get("userMetadata") for h in DeltaTable(f"{wh}/_runs").history()])
    assert "events_path" in metadata and not any(s in metadata for s in leaked)
    out = capfd.readouterr()
    assert not any(s in out.out + out.err for s in leaked)
