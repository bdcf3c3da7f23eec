"""Column mapping and schema-drift errors (pure logic)."""

import pytest

from recfactory.features.schema import ColumnMapping, SchemaDriftError, check_columns


def test_mapping_parse_and_identity():
    m = ColumnMapping.parse("user_id=uid, item_id = movie")
    assert m.source("user_id") == "uid" and m.source("item_id") == "movie"
    assert m.source("ts") == "ts"
    assert ColumnMapping.parse(["a=b"]).mapping == {"a": "b"}
    with pytest.raises(ValueError, match="canonical=source"):
        ColumnMapping.parse("user_id")


def test_drift_names_every_missing_column_and_suggests_a_mapping():
    cols = ["userid", "item_id", "event", "timestamp"]
    with pytest.raises(SchemaDriftError) as e:
        check_columns(cols, ("user_id", "item_id", "event_type", "ts"), ColumnMapping(), "events")
    msg = str(e.value)
    for missing in ("'user_id'", "'event_type'", "'ts'"):
        assert missing in msg
    assert "'item_id'" not in msg.split("Columns present")[0]
    assert msg.endswith("not mapped: userid, event, timestamp")
    assert "user_id=userid" in msg


def test_mapped_column_missing_is_reported_with_its_source_name():
    with pytest.raises(SchemaDriftError, match="looked for source column 'uid'"):
        check_columns(["user_id"], ("user_id",), ColumnMapping({"user_id": "uid"}), "events")
