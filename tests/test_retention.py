"""Retention, single deletes and keep annotations give the same answer as Barman's.

The comparison tests write one catalog twice into a fresh bucket, under `barman/` and `ours/`:
backup.info objects with controlled begin and end times, WAL positions and timelines (DONE,
FAILED, an old and a young STARTED backup), archives, keep annotations, and fake WAL objects on
three timelines (history, .backup and .partial files, compressed names, a stray object in a
hash directory and a directory that is no WAL's). barman-cloud-backup-delete 3.20 runs on
`barman/`, pgcloud-backup-delete on `ours/`, with the same options; the objects left must be the
same (ours also has this project's manifests, which must be gone exactly with their backups),
the exit codes too, and barman-cloud-backup-list must list what is left. Expected deletions
are also spelled out, so that both doing nothing would not pass.

The store tests check the bulk deletes themselves: batches on SeaweedFS, Azurite and the GCS
emulator, the fallback to one request per object when the store answers 501 (through the
fault proxy), per-key errors, and 100,000 WAL segments expired in one run on SeaweedFS.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from botocore.stub import Stubber

from airflow_provider_pgcloud.runner import backup_info as bi
from airflow_provider_pgcloud.runner import layout
from airflow_provider_pgcloud.runner.catalog import Catalog, CatalogEntry
from airflow_provider_pgcloud.runner.cli import backup_delete, backup_keep
from airflow_provider_pgcloud.runner.errors import InputError
from airflow_provider_pgcloud.runner.retention import (
    KEEP_FULL,
    KEEP_STANDALONE,
    NONE,
    OBSOLETE,
    POTENTIALLY_OBSOLETE,
    VALID,
    WalArchive,
    apply_retention,
    classify,
    parse_policy,
    plan_wal_cleanup,
)
from airflow_provider_pgcloud.runner.storage import ObjectStore, StoreConfig, open_store
from airflow_provider_pgcloud.runner.storage.deletes import batch_size_for
from airflow_provider_pgcloud.runner.storage.s3 import S3Store
from tests.rig.azurite import AzuriteServer
from tests.rig.barman import run_barman
from tests.rig.faultproxy import FaultProxy, Request
from tests.rig.gcs import GcsEmulator
from tests.rig.s3server import S3Server

SERVER = "pg"
NOW = dt.datetime.now(dt.UTC)


# ------------------------------------------------------------------------------ the catalog

def wal(tli: int, log: int, seg: int) -> str:
    return f"{tli:08X}{log:08X}{seg:08X}"


@dataclass(frozen=True)
class Spec:
    """One backup of the test catalog: its age, where its WAL starts, its status."""

    label: str
    age: dt.timedelta
    tli: int
    log: int
    status: str
    seg: int = 0x04
    name: str | None = None

    @property
    def begin(self) -> dt.datetime:
        return (NOW - self.age).replace(microsecond=0)

    @property
    def backup_id(self) -> str:
        return layout.new_backup_id(self.begin.astimezone())

    @property
    def begin_wal(self) -> str:
        return wal(self.tli, self.log, self.seg)

    def info(self) -> dict[str, Any]:
        done = self.status == bi.DONE
        info: dict[str, Any] = {
            "version": 150000, "server_name": "cloud", "status": self.status,
            "systemid": "7000000000000000001", "pgdata": "/var/lib/pg/data",
            "xlog_segment_size": 16 << 20, "timeline": self.tli,
            "begin_time": self.begin, "begin_wal": self.begin_wal,
            "begin_xlog": f"{self.log:X}/{self.seg:X}000028", "begin_offset": 40,
            "tablespaces": [("tbs1", 16384, "/var/lib/pg/tbs1")],
            "backup_name": self.name,
        }
        if done:
            info.update(end_time=self.begin + dt.timedelta(minutes=30),
                        end_wal=wal(self.tli, self.log, self.seg + 1),
                        end_xlog=f"{self.log:X}/{self.seg + 1:X}000100", end_offset=256)
        if self.status == bi.FAILED:
            info["error"] = "failure uploading data (simulated)"
        return info


D, H = dt.timedelta(days=1), dt.timedelta(hours=1)
BACKUPS = [
    Spec("b1", 30 * D, 1, 0, bi.DONE),
    Spec("b2", 25 * D, 1, 1, bi.DONE),
    Spec("b3", 20 * D, 1, 2, bi.FAILED),
    Spec("b4", 15 * D, 1, 3, bi.DONE),
    Spec("b5", 10 * D, 2, 5, bi.DONE),
    Spec("b6", 6 * D, 2, 6, bi.STARTED),  # a dead run, older than the grace period
    Spec("b7", 3 * D, 2, 7, bi.DONE),
    Spec("b8", 1 * D, 2, 8, bi.DONE, name="nightly"),
    Spec("b9", 2 * H, 2, 8, bi.STARTED, seg=0x0C),  # a run that may still be going
]
ID = {spec.label: spec.backup_id for spec in BACKUPS}


def wal_objects() -> dict[str, bytes]:
    """Keys under `<server>/wals/` -> content: timeline 1 up to log 4 segment 8 (then a
    .partial), timeline 2 from there to log 8, a branch to timeline 3 at log 8."""
    names: list[str] = []
    for log_id in range(5):
        names += [wal(1, log_id, seg) for seg in range(16 if log_id < 4 else 8)]
    names.append(wal(1, 4, 8) + ".partial")
    names += [wal(2, 4, seg) for seg in range(8, 16)]
    for log_id in range(5, 9):
        names += [wal(2, log_id, seg) for seg in range(16)]
    names += [wal(3, 8, seg) for seg in range(0x10, 0x16)]
    names += [spec.begin_wal + ".00000028.backup" for spec in BACKUPS]
    objects: dict[str, bytes] = {}
    for number, name in enumerate(names):
        suffix = (".gz", "", "", ".lz4", "")[number % 5] if not name.endswith(".backup") else ""
        objects[layout.wal_key("", SERVER, name, suffix)] = name.encode()
    for name in ("00000002.history", "00000003.history"):
        objects[layout.wal_key("", SERVER, name)] = b"1\t0/4000000\tno recovery target\n"
    objects[f"{SERVER}/wals/0000000100000001/README"] = b"not a WAL file"
    objects[f"{SERVER}/wals/garbage/object"] = b"not a WAL directory"
    return objects


def catalog_objects(keeps: dict[str, str], *, manifests: bool) -> dict[str, bytes]:
    """Every object of the test catalog (keys relative to the destination's path)."""
    objects = wal_objects()
    for spec in BACKUPS:
        prefix = layout.backup_prefix("", SERVER, spec.backup_id)
        objects[layout.info_key(prefix)] = bi.encode(spec.info())
        names = ["data.tar.gz"] if spec.status == bi.STARTED else [
            "data.tar.gz", "data_0001.tar.gz", "16384.tar.gz", "16384_0001.tar.gz"]
        if spec.label == "b2":  # not archives barman-cloud-restore would read: left behind
            names += ["notes.txt", "163840.tar", "data.tar.gz.tmp"]
        for name in names:
            objects[f"{prefix}/{name}"] = b"archive"
        if manifests:
            objects[layout.index_key(prefix)] = b"{}"
            objects[layout.archive_manifest_key(prefix, "data")] = b"{}"
        if spec.label in keeps:
            objects[layout.keep_key(prefix)] = keeps[spec.label].encode()
    return objects


@dataclass
class Copies:
    """The same catalog under two paths of one bucket: one for Barman, one for pgcloud."""

    s3: S3Server
    bucket: str
    keeps: dict[str, str] = field(default_factory=dict)

    def url(self, who: str) -> str:
        return f"s3://{self.bucket}/{who}"

    def write(self) -> None:
        client = self.s3.client()
        work = [(f"{who}/{key}", data) for who in ("barman", "ours")
                for key, data in catalog_objects(self.keeps, manifests=who == "ours").items()]
        with ThreadPoolExecutor(10) as pool:  # the client's connection pool
            list(pool.map(lambda item: client.put_object(Bucket=self.bucket, Key=item[0],
                                                         Body=item[1]), work))

    def objects(self, who: str) -> set[str]:
        return {key[len(who) + 1:] for key in self.s3.list_objects(self.bucket, who + "/")}

    def barman(self, command: str, *args: str) -> int:
        return run_barman(command, *args, self.url("barman"), SERVER, s3=self.s3,
                          check=False).returncode

    def ours(self, main: Any, *args: str) -> int:
        code: int = main(["--endpoint-url", self.s3.endpoint_url, *args, self.url("ours"),
                          SERVER])
        return code

    def both_delete(self, *args: str) -> tuple[int, int]:
        """barman-cloud-backup-delete and pgcloud-backup-delete with the same options."""
        return (self.barman("barman-cloud-backup-delete", *args),
                self.ours(backup_delete.main, *args))

    def backup_ids(self, who: str) -> set[str]:
        base = layout.base_prefix("", SERVER)
        return {key[len(base):].split("/")[0] for key in self.objects(who)
                if key.startswith(base) and key.endswith("/" + layout.INFO_NAME)}

    def assert_same(self) -> None:
        """The same objects left, manifests aside; manifests exactly of the backups left."""
        manifests = layout.manifest_prefix("", SERVER)
        ours = self.objects("ours")
        assert {k for k in ours if not k.startswith(manifests)} == self.objects("barman")
        left = self.backup_ids("ours")
        assert {k[len(manifests):].split("/")[0] for k in ours if k.startswith(manifests)} \
            == left & set(ID.values())
        listed = run_barman("barman-cloud-backup-list", "--format", "json", self.url("ours"),
                            SERVER, s3=self.s3)
        assert {b["backup_id"] for b in json.loads(listed.stdout)["backups_list"]} == left

    def wal_left(self, who: str = "ours") -> set[str]:
        wals = layout.wals_prefix("", SERVER)
        return {key[len(wals):] for key in self.objects(who) if key.startswith(wals)}


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The commands run in process (quicker than a subprocess each) and set logger levels as a
    command does: put them back for the tests that follow."""
    names = ["", "pgcloud", "botocore", "boto3", "urllib3", "s3transfer", "azure", "google"]
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.fixture
def copies(s3_env: S3Server, bucket: str) -> Copies:
    return Copies(s3_env, bucket)


def ids(*labels: str) -> set[str]:
    return {ID[label] for label in labels}


# ------------------------------------------------------------------ policies, as Barman does

def test_redundancy_with_an_older_standalone_backup(copies: Copies) -> None:
    """REDUNDANCY 2: b8, b7 valid; b1 is kept standalone, so only its own WAL range survives
    in the timeline-1 directory the deletes of b2 and b4 would otherwise empty."""
    copies.keeps = {"b1": "standalone"}
    copies.write()
    before = copies.wal_left()
    assert copies.both_delete("-r", "REDUNDANCY 2") == (0, 0)
    copies.assert_same()
    assert copies.backup_ids("ours") == ids("b1", "b3", "b6", "b7", "b8", "b9")
    gone = before - copies.wal_left()
    left_in_first = {layout.stored_wal_name(key) for key in copies.wal_left()
                     if key.startswith("0000000100000000/")}
    assert left_in_first == {wal(1, 0, 4), wal(1, 0, 5), wal(1, 0, 4) + ".00000028.backup"}
    assert "0000000100000001/README" in gone  # a whole directory goes, whatever it holds


def test_recovery_window_with_a_full_keep(copies: Copies) -> None:
    """RECOVERY WINDOW OF 1 WEEK: b8, b7 ended inside it, b5 is the newest before it; b4 is
    kept full, so b2 and b1 go with the WAL before b4 and nothing after it."""
    copies.keeps = {"b4": "full"}
    copies.write()
    assert copies.both_delete("-r", "recovery window of 1 week") == (0, 0)
    copies.assert_same()
    assert copies.backup_ids("ours") == ids("b3", "b4", "b5", "b6", "b7", "b8", "b9")
    assert not any(name.startswith(("0000000100000000/", "0000000100000001/"))
                   for name in copies.wal_left())


def test_recovery_window_below_the_minimum_redundancy(copies: Copies) -> None:
    copies.write()
    assert copies.both_delete("-r", "RECOVERY WINDOW OF 2 DAYS", "-m", "4") == (0, 0)
    copies.assert_same()
    assert copies.backup_ids("ours") == ids("b3", "b4", "b5", "b6", "b7", "b8", "b9")


def test_redundancy_raised_to_the_minimum_with_a_standalone_in_the_middle(
        copies: Copies) -> None:
    """REDUNDANCY 1 -m 2 keeps two; b4 (standalone) counts as one of them."""
    copies.keeps = {"b4": "standalone", "b7": "full"}
    copies.write()
    assert copies.both_delete("-r", "REDUNDANCY 1", "-m", "2") == (0, 0)
    copies.assert_same()
    assert copies.backup_ids("ours") == ids("b3", "b4", "b6", "b7", "b8", "b9")


def test_dry_run_deletes_nothing(copies: Copies, caplog: pytest.LogCaptureFixture) -> None:
    copies.write()
    before = copies.objects("ours")
    with caplog.at_level(logging.INFO, "pgcloud"):
        assert copies.ours(backup_delete.main, "--dry-run", "-r", "REDUNDANCY 1") == 0
    assert copies.objects("ours") == before
    assert f"would delete backup {ID['b1']}" in caplog.text
    assert "dry run: server pg by REDUNDANCY 1: would delete 5 backups" in caplog.text


def test_single_deletes_and_refusals(copies: Copies) -> None:
    """-b by ID, by shortcut and by name; refused for a keep and below -m, by both."""
    copies.keeps = {"b1": "standalone", "b8": "full"}
    copies.write()
    wal_before = copies.wal_left()
    # b2's older neighbour is kept standalone: a single delete keeps all WAL
    assert copies.both_delete("-b", ID["b2"]) == (0, 0)
    copies.assert_same()
    assert copies.wal_left() == wal_before
    assert copies.both_delete("-b", "oldest") == (1, 1)  # b1: kept
    assert copies.both_delete("-b", "nightly") == (1, 1)  # b8: kept
    assert copies.both_delete("-b", "last-failed") == (0, 0)  # b3 goes, WAL stays
    copies.assert_same()
    assert copies.backup_ids("ours") == ids("b1", "b4", "b5", "b6", "b7", "b8", "b9")
    # release b1 (each with its own keep command), then the oldest goes with WAL up to b4
    run_barman("barman-cloud-backup-keep", "-r", copies.url("barman"), SERVER, ID["b1"],
               s3=copies.s3)
    assert backup_keep.main(["--endpoint-url", copies.s3.endpoint_url, "-r", copies.url("ours"),
                             SERVER, ID["b1"]]) == 0
    assert copies.both_delete("-b", "oldest") == (0, 0)
    copies.assert_same()
    assert not any(name.startswith("0000000100000002/") for name in copies.wal_left())
    # five backups that are not STARTED remain: -m 5 refuses, an unknown ID is only a warning
    assert copies.both_delete("-b", ID["b4"], "-m", "5") == (1, 1)
    assert copies.both_delete("-b", "20000101T000000") == (0, 0)
    copies.assert_same()
    assert copies.backup_ids("ours") == ids("b4", "b5", "b6", "b7", "b8", "b9")


def test_nothing_is_deleted_while_a_backup_info_cannot_be_read(copies: Copies) -> None:
    copies.write()
    broken = layout.info_key(layout.backup_prefix("", SERVER, "20200101T000000"))
    for who in ("barman", "ours"):
        copies.s3.put_object(copies.bucket, f"{who}/{broken}", b"status=DONE\nversion=abc\n")
    before = {who: copies.objects(who) for who in ("barman", "ours")}
    assert copies.both_delete("-r", "REDUNDANCY 1") == (1, 1)
    assert copies.both_delete("-b", "oldest") == (1, 1)
    assert {who: copies.objects(who) for who in ("barman", "ours")} == before


def test_a_young_started_backup_is_never_deleted(copies: Copies) -> None:
    """Barman deletes any backup by ID; a STARTED one within the grace period may belong to a
    run still going, so pgcloud refuses (an older STARTED one goes)."""
    copies.write()
    assert copies.ours(backup_delete.main, "-b", ID["b9"]) == 1
    assert ID["b9"] in copies.backup_ids("ours")
    assert copies.both_delete("-b", ID["b6"]) == (0, 0)
    copies.assert_same()


# ------------------------------------------------------------------------- keep annotations

def test_keep_is_barmans_keep(copies: Copies, capsys: pytest.CaptureFixture[str]) -> None:
    """Marks written by either command are read by the other, in the same object."""
    copies.write()
    url = copies.url("ours")

    def barman_status(backup_id: str) -> str:
        return run_barman("barman-cloud-backup-keep", "-s", url, SERVER, backup_id,
                          s3=copies.s3).stdout.strip()

    def ours(*args: str) -> int:
        code: int = backup_keep.main(["--endpoint-url", copies.s3.endpoint_url, *args])
        return code

    assert ours("--target", "full", url, SERVER, ID["b2"]) == 0
    assert barman_status(ID["b2"]) == "Keep: full"
    assert copies.s3.get_object(copies.bucket, "ours/" + layout.keep_key(
        layout.backup_prefix("", SERVER, ID["b2"]))) == b"full"
    run_barman("barman-cloud-backup-keep", "--target", "standalone", url, SERVER, "nightly",
               s3=copies.s3)
    capsys.readouterr()
    assert ours("-s", url, SERVER, "nightly") == 0
    assert capsys.readouterr().out == "Keep: standalone\n"
    assert ours("-r", url, SERVER, ID["b2"]) == 0
    assert barman_status(ID["b2"]) == "Keep: nokeep"
    assert ours("-s", url, SERVER, ID["b2"]) == 0
    assert capsys.readouterr().out == "Keep: nokeep\n"
    # only DONE backups can be kept: exit 1 for both
    assert ours("--target", "full", url, SERVER, ID["b3"]) == 1
    assert run_barman("barman-cloud-backup-keep", "--target", "full", url, SERVER, ID["b3"],
                      s3=copies.s3, check=False).returncode == 1
    assert barman_status(ID["b3"]) == "Keep: nokeep"
    assert ours("--target", "full", url, SERVER, "no-such-name") == 4


# ----------------------------------------------------------------------- engine, in memory

def _entry(spec: Spec, keep: str | None = None) -> CatalogEntry:
    return CatalogEntry(spec.backup_id, spec.info(), has_keep=keep is not None, keep=keep)


def _catalog(keeps: dict[str, str] | None = None) -> Catalog:
    keeps = keeps or {}
    catalog = Catalog(SERVER, layout.base_prefix("", SERVER))
    for spec in BACKUPS:
        catalog.backups[spec.backup_id] = _entry(spec, keeps.get(spec.label))
    return catalog


def test_classify_reports_barmans_statuses_with_reasons() -> None:
    verdicts = classify(_catalog({"b2": "standalone", "b4": "full"}),
                        parse_policy("RECOVERY WINDOW OF 2 DAYS"), 3, NOW)
    assert {label: verdicts[ID[label]].status for label in ID} == {
        "b1": OBSOLETE, "b2": KEEP_STANDALONE, "b3": NONE, "b4": KEEP_FULL,
        "b5": POTENTIALLY_OBSOLETE, "b6": NONE, "b7": VALID, "b8": VALID, "b9": NONE}
    assert "minimum redundancy of 3" in verdicts[ID["b5"]].reason
    assert "recovery to the window's start" in verdicts[ID["b7"]].reason


def test_wal_of_a_young_started_backup_is_spared() -> None:
    """Deleting b5 removes timeline-2 WAL up to b7's begin_wal (b6, a dead run, is not DONE);
    a young STARTED b6 keeps everything from its begin_wal on, where Barman would not."""
    catalog = _catalog()
    for label in ("b1", "b2", "b3", "b4"):  # deleted already
        del catalog.backups[ID[label]]
    archive = WalArchive(layout.wals_prefix("", SERVER), wal_objects())
    b5, b6 = catalog.backups[ID["b5"]], catalog.backups[ID["b6"]]
    plain = plan_wal_cleanup(catalog, archive, b5, single=False, young_started=[])
    spared = plan_wal_cleanup(catalog, archive, b5, single=False, young_started=[b6])
    assert wal(2, 6, 4) in {layout.stored_wal_name(key) for key in plain.keys}
    assert {layout.stored_wal_name(key) for key in set(plain.keys) - set(spared.keys)} == {
        name for name in (layout.stored_wal_name(k) for k in wal_objects())
        if name and name[:8] == "00000002" and wal(2, 6, 4) <= name[:24] < wal(2, 7, 4)}
    assert "STARTED backups in progress" in spared.note


@pytest.mark.parametrize("text", ["REDUNDANCY 0", " redundancy  7 ", "RECOVERY WINDOW OF 3 DAY",
                                  "recovery window of 1 months", "Recovery Window Of 2 Weeks"])
def test_policies_in_barmans_syntax(text: str) -> None:
    policy = parse_policy(text)
    assert parse_policy(str(policy)) == policy


@pytest.mark.parametrize("text", ["REDUNDANCY", "REDUNDANCY -1", "RECOVERY WINDOW 3 DAYS",
                                  "RECOVERY WINDOW OF 3 YEARS", "KEEP 3"])
def test_other_policies_are_bad_input(text: str) -> None:
    with pytest.raises(InputError):
        parse_policy(text)
    assert backup_delete.main(["-r", text, "s3://b/p", SERVER]) == 3


def test_batch_size_is_clamped_and_bad_options_are_exit_3() -> None:
    assert [batch_size_for(n, 256) for n in (None, 0, -5, 1, 100, 256, 1000)] == \
        [256, 1, 1, 1, 100, 256, 256]
    for wrong in ([], ["-b", "x", "-r", "REDUNDANCY 1"], ["-r", "REDUNDANCY 1", "-m", "-1"],
                  ["-r", "REDUNDANCY 1", "--batch-size", "many"]):
        with pytest.raises(SystemExit) as exited:  # argparse: exit 3, as Barman
            backup_delete.main([*wrong, "s3://b/p", SERVER])
        assert exited.value.code == 3


# ------------------------------------------------------------------------------ bulk deletes

def _keys(count: int, prefix: str = "p/pg/wals/0000000100000000/") -> list[str]:
    return [f"{prefix}{wal(1, 0, n)}" for n in range(count)]


def _proxied_s3(proxy: FaultProxy, bucket: str) -> ObjectStore:
    return open_store(StoreConfig(f"s3://{bucket}/p", endpoint_url=proxy.endpoint_url))


def _is_bulk_delete(request: Request) -> bool:
    return (request.method == "POST" and ("delete" in request.query
                                          or "comp" in request.query
                                          or request.path.startswith("/batch/")))


def test_s3_deletes_in_batches_and_falls_back_on_501(
        s3_env: S3Server, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    client = s3_env.client()
    keys = _keys(1500)
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b""), keys))
    seen: list[str] = []

    def count(request: Request) -> None:
        if _is_bulk_delete(request):
            seen.append(request.path)

    with FaultProxy(s3_env.endpoint_url, plan=count) as proxy:
        store = _proxied_s3(proxy, bucket)
        assert store.delete_many([*keys[:1100], "p/never/written"]) == {}
        store.close()
    assert len(seen) == 2  # 1000 + 101 keys
    assert set(s3_env.list_objects(bucket)) == set(keys[1100:])
    refused = FaultProxy(s3_env.endpoint_url,
                         plan=lambda r: "501" if _is_bulk_delete(r) else None)
    with refused, caplog.at_level(logging.WARNING, "pgcloud"):
        store = _proxied_s3(refused, bucket)
        assert store.delete_many(keys[1100:], batch_size=100) == {}
        store.close()
    assert s3_env.list_objects(bucket) == {}
    assert len(refused.injected) == 1  # asked once, then one request per object
    assert caplog.text.count("refused a bulk delete") == 1


def test_s3_reports_the_keys_a_bulk_delete_could_not_delete(s3_env: S3Server) -> None:
    store = open_store(StoreConfig("s3://bkt/p", endpoint_url=s3_env.endpoint_url))
    assert isinstance(store, S3Store)
    with Stubber(store._client) as stub:  # an answer SeaweedFS cannot be made to give
        stub.add_response("delete_objects", {"Errors": [
            {"Key": "a", "Code": "AccessDenied", "Message": "Access Denied"},
            {"Key": "b", "Code": "NoSuchKey", "Message": "gone already"}]})
        assert store.delete_many(["a", "b", "c"]) == {"a": "AccessDenied: Access Denied"}
    store.close()


@dataclass
class CloudStore:
    """Azurite or the GCS emulator, maybe behind a fault proxy."""

    emulator: AzuriteServer | GcsEmulator
    bucket: str
    monkeypatch: pytest.MonkeyPatch

    def open(self, endpoint: str | None = None) -> ObjectStore:
        if isinstance(self.emulator, AzuriteServer):
            endpoint = endpoint or self.emulator.endpoint
            self.monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
            self.monkeypatch.setenv("AZURE_STORAGE_KEY", self.emulator.key)
            url = f"{endpoint}/{self.emulator.account}/{self.bucket}/p"
            return open_store(StoreConfig(url, "azure-blob-storage"))
        self.monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint or self.emulator.endpoint)
        return open_store(StoreConfig(f"gs://{self.bucket}/p", "google-cloud-storage"))

    def objects(self) -> set[str]:
        return set(self.emulator.list_objects(self.bucket))


@pytest.fixture(params=["azure", "gcs"])
def cloud(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CloudStore:
    if request.param == "azure":
        return CloudStore(request.getfixturevalue("azurite"),
                          request.getfixturevalue("azure_container"), monkeypatch)
    return CloudStore(request.getfixturevalue("gcs_emulator"),
                      request.getfixturevalue("gcs_bucket"), monkeypatch)


def test_cloud_deletes_in_batches_and_falls_back_on_501(
        cloud: CloudStore, caplog: pytest.LogCaptureFixture) -> None:
    """Azure blob batches of 256 and GCS batches of 100 (both emulators serve them); a store
    that answers 501 to a batch gets one request per object, with one warning."""
    azure = isinstance(cloud.emulator, AzuriteServer)
    keys = _keys(300 if azure else 130)
    store = cloud.open()
    for key in keys:
        store.put(key, b"")
    store.close()
    seen: list[str] = []

    def count(request: Request) -> None:
        if _is_bulk_delete(request):
            seen.append(request.path)

    with FaultProxy(cloud.emulator.endpoint, plan=count) as proxy:
        store = cloud.open(proxy.endpoint_url)
        assert store.delete_many([*keys[:-20], keys[0] + "-never-written"]) == {}
        store.close()
    assert len(seen) == 2  # 256 + 25 keys, or 100 + 11
    assert cloud.objects() == set(keys[-20:])

    refused = FaultProxy(cloud.emulator.endpoint,
                         plan=lambda r: "501" if _is_bulk_delete(r) else None)
    with refused, caplog.at_level(logging.WARNING, "pgcloud"):
        store = cloud.open(refused.endpoint_url)
        assert store.delete_many(keys[-20:-10], batch_size=5) == {}
        assert store.delete_many(keys[-10:]) == {}
        store.close()
    assert cloud.objects() == set()
    assert len(refused.injected) == 1
    assert caplog.text.count("refused a bulk delete") == 1


def test_azure_reports_the_blobs_a_batch_could_not_delete(
        azurite: AzuriteServer, azure_container: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leased blob cannot be deleted without its lease: the batch says so for that key."""
    cloud = CloudStore(azurite, azure_container, monkeypatch)
    store = cloud.open()
    keys = _keys(5)
    for key in keys:
        store.put(key, b"")
    with azurite.service() as service:
        service.get_blob_client(azure_container, keys[2]).acquire_lease(-1)
    errors = store.delete_many(keys)
    store.close()
    assert list(errors) == [keys[2]] and "412" in errors[keys[2]]
    assert cloud.objects() == {keys[2]}


# ------------------------------------------------------------------------------------ scale

# The scale: 100,000 segments, ~65 s on this 2-core machine, nearly all of it
# SeaweedFS's: ~20 s to create them (through the filer), ~11 s to list them, ~32 s to carry out
# 100 DeleteObjects requests of 1,000 keys. PGCLOUD_SCALE_SEGMENTS sets another count.
SCALE_SEGMENTS = int(os.environ.get("PGCLOUD_SCALE_SEGMENTS", "100000"))


def _filer_put_all(s3: S3Server, bucket: str, keys: list[str], workers: int = 4) -> None:
    """Create empty objects through SeaweedFS's filer: one keep-alive connection per thread,
    no request signing (S3 PUTs are ~8x slower here)."""
    target = urlsplit(s3.filer_url)

    def put(part: list[str]) -> None:
        connection = http.client.HTTPConnection(target.hostname or "", target.port)
        try:
            for key in part:
                connection.request("PUT", f"/buckets/{bucket}/{quote(key)}", body=b"",
                                   headers={"Content-Length": "0"})
                response = connection.getresponse()
                response.read()
                assert response.status < 300, (key, response.status)
        finally:
            connection.close()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, [keys[i::workers] for i in range(workers)]))


def test_a_hundred_thousand_wal_segments_expire_in_one_run(s3_env: S3Server,
                                                              bucket: str) -> None:
    """REDUNDANCY 1 over two backups SCALE_SEGMENTS segments apart: one run deletes the old
    backup and every segment before the new one's begin_wal, in DeleteObjects requests of 1000
    keys."""
    last_log, last_seg = divmod(SCALE_SEGMENTS, 256)
    old = Spec("old", 3 * D, 1, 0, bi.DONE)
    new = Spec("new", 1 * D, 1, last_log, bi.DONE, seg=last_seg)
    names = [wal(1, n // 256, n % 256) for n in range(SCALE_SEGMENTS + 40)]
    _filer_put_all(s3_env, bucket, [layout.wal_key("p", SERVER, name) for name in names])
    client = s3_env.client()
    for spec in (old, new):
        prefix = layout.backup_prefix("p", SERVER, spec.backup_id)
        client.put_object(Bucket=bucket, Key=layout.info_key(prefix), Body=bi.encode(spec.info()))
        client.put_object(Bucket=bucket, Key=f"{prefix}/data.tar", Body=b"archive")
    store = open_store(StoreConfig(f"s3://{bucket}/p", endpoint_url=s3_env.endpoint_url))
    try:
        report = apply_retention(store, SERVER, "REDUNDANCY 1")
    finally:
        store.close()
    assert report.errors == [] and report.deleted_backups == [old.backup_id]
    assert len(report.deleted_wal) == SCALE_SEGMENTS
    left = s3_env.list_objects(bucket, f"p/{SERVER}/wals/")
    assert sorted(key.rsplit("/", 1)[1] for key in left) == names[SCALE_SEGMENTS:]
