"""Code shipping for clusters: a wheel as Spark and Ray load it."""

from __future__ import annotations

import zipfile

import pytest

from recfactory.jobs.runtime.shipping import ray_py_modules, spark_py_files


def _wheel(path, body: str):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/__init__.py", body)
        z.writestr("pkg/sub/mod.py", "X = 1\n")
        z.writestr("pkg-0.1.dist-info/METADATA", "Name: pkg\n")
    return path


def test_spark_gets_a_zip_copy_keyed_by_content_and_other_files_as_they_are(tmp_path):
    w = _wheel(tmp_path / "pkg-0.1-py3-none-any.whl", "V = 1\n")
    out = spark_py_files(f"{w}, extra.py,s3a://b/lib.zip")
    z, extra, remote = out.split(",")
    assert z.endswith(".zip") and open(z, "rb").read() == w.read_bytes()
    assert (extra, remote) == ("extra.py", "s3a://b/lib.zip")
    assert spark_py_files(str(w)) == z  # idempotent
    _wheel(w, "V = 2\n")  # rebuilt, same name: a new copy
    z2 = spark_py_files(str(w))
    assert z2 != z and open(z2, "rb").read() == w.read_bytes()
    assert spark_py_files(z2) == z2


def test_ray_gets_the_wheels_packages_as_directories(tmp_path):
    w = _wheel(tmp_path / "pkg-0.1-py3-none-any.whl", "V = 1\n")
    (d,) = ray_py_modules(str(w))
    assert d.endswith("/pkg") and open(f"{d}/sub/mod.py").read() == "X = 1\n"
    assert ray_py_modules(f"{w},other_dir") == [d, "other_dir"]


def test_a_deployments_shuffle_partitions_reach_each_spark_submit_it_launches(monkeypatch):
    from recfactory.jobs.runtime.spark import submit_conf

    monkeypatch.setenv("RECFACTORY_SHUFFLE_PARTITIONS", "4")
    assert submit_conf() == {"spark.sql.shuffle.partitions": "4", "spark.default.parallelism": "4"}
    monkeypatch.delenv("RECFACTORY_SHUFFLE_PARTITIONS")
    assert submit_conf() == {}  # spark-defaults.conf / the cluster's own settings
    for bad in ("0", "-3", "four", "4; rm"):
        monkeypatch.setenv("RECFACTORY_SHUFFLE_PARTITIONS", bad)
        with pytest.raises(ValueError, match="RECFACTORY_SHUFFLE_PARTITIONS must be a positive integer"):
            submit_conf()
