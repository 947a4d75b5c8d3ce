"""Retention policies and deleting backups with the WAL nobody needs any more, with the same
answer as barman-cloud-backup-delete.

    pgcloud-backup-delete [OPTIONS] (-r POLICY | -b BACKUP_ID) SOURCE_URL SERVER_NAME
                                                              (runner/cli/backup_delete.py)

**Which backups a policy deletes.** Only DONE backups are judged; STARTED, FAILED and any other
status are never deleted by a policy. Walking from the newest backup to the oldest:

* `REDUNDANCY n`: the n newest DONE backups are VALID, older ones OBSOLETE. A backup with a keep
  annotation is never obsolete, but it counts among the n. `--minimum-redundancy m` above n
  raises n to m.
* `RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS` (a month is 31 days): backups that ended inside the
  window are VALID, and so is the newest one that ended before it (recovery to the start of the
  window starts from it); older ones are OBSOLETE, except that the first `m` DONE backups
  counting from the newest are kept whatever their age (POTENTIALLY OBSOLETE, `-m m`).
  Kept backups are never obsolete.

Obsolete backups are deleted oldest first: their archives, this project's manifests, then
their backup.info (last, so a delete that fails half way is found again and can be retried).
`-b BACKUP_ID` deletes one backup of any status instead, unless it has a keep annotation or
`-m m` says at least m backups that are not STARTED must remain.

**Which WAL goes with a deleted backup** (Barman's rules). When a backup is deleted, the WAL
from before it is deleted only if no older backup still needs it: there is no older DONE
backup, or (with a policy, not with `-b`) all older ones are kept `standalone`, whose own
begin_wal..end_wal ranges are then spared. WAL is deleted up to the begin_wal of the next DONE
backup (or of the deleted one when it was the newest), on that backup's timeline only: every
other timeline that some remaining backup is on is left whole, and history files always stay.
A hash directory whose WAL all comes before that point is deleted whole (whatever it holds);
the rest file by file. A keep `full` backup therefore keeps all WAL from it on.

**What this adds to Barman.** A STARTED backup younger than the grace period (the cleanup's,
runner/cleanup.py, 24 hours by default) may belong to a run still going: it is never deleted,
not even with `-b`, and the WAL from its begin_wal on stays. A snapshot backup is not deleted
(its disk snapshots would be left behind): use barman-cloud-backup-delete for those.

**Locked backups** (`pgcloud-backup --lock-days`, or a bucket's own retention rules). Before a
backup is deleted, the store is asked for the locks on every object that would go (its
archives, manifests and backup.info): if any is still locked, or held, nothing of it is
deleted. A policy keeps it, with the reason `locked until <date>` in its log line and the
report, and goes on with the next obsolete backup; `-b` refuses (exit 1). Deleting a backup's
archives and then failing at a locked one would leave a backup that no restore can use; and
on S3, whose deletes in an Object Lock bucket only add delete markers, it would hide a backup
that still exists and is billed until its date. The kept backup stays in the catalog, so the
WAL rules above keep the WAL it needs; WAL itself is not locked by this project.

Every decision is logged at INFO and returned in a DeleteReport; `--dry-run` decides the same
and deletes nothing. Deletes go in the store's bulk requests (ObjectStore.delete_many).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import backup_info as bi
from . import layout
from .catalog import Catalog, CatalogEntry, parse_backup_id, read_catalog
from .cleanup import DEFAULT_GRACE_SECONDS, begin_time
from .errors import BackupFailed, InputError, PgCloudError, first_line
from .keep import TARGET_STANDALONE
from .storage import ObjectStore
from .storage.locks import lock_reason

log = logging.getLogger("pgcloud")

# Barman's retention statuses, as its reports spell them
VALID = "VALID"
OBSOLETE = "OBSOLETE"
POTENTIALLY_OBSOLETE = "OBSOLETE*"
KEEP_FULL = "KEEP:FULL"
KEEP_STANDALONE = "KEEP:STANDALONE"
NONE = "-"

_COPY_DONE = (bi.DONE, "WAITING_FOR_WALS")  # the backups whose WAL the next ones may need
_ARCHIVE_EXTENSIONS = frozenset({"tar", "tar.gz", "tar.bz2", "tar.snappy", "tar.lz4", "tar.zst"})


# --- policies --------------------------------------------------------------------------------

_REDUNDANCY = re.compile(r"^\s*redundancy\s+(\d+)\s*$", re.IGNORECASE)
_WINDOW = re.compile(r"^\s*recovery\s+window\s+of\s+(\d+)\s+(day|week|month)s?\s*$",
                     re.IGNORECASE)
_UNITS = {"day": "DAYS", "week": "WEEKS", "month": "MONTHS"}


@dataclass(frozen=True)
class RetentionPolicy:
    """`REDUNDANCY n` (unit None) or `RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS`."""

    value: int
    unit: str | None = None

    def __str__(self) -> str:
        if self.unit is None:
            return f"REDUNDANCY {self.value}"
        return f"RECOVERY WINDOW OF {self.value} {self.unit}"

    @property
    def window(self) -> dt.timedelta:
        days = {"DAYS": 1, "WEEKS": 7, "MONTHS": 31}[self.unit or "DAYS"]
        return dt.timedelta(days=self.value * days)


def parse_policy(text: str) -> RetentionPolicy:
    """Barman's retention policy syntax (case does not matter, the unit's `s` is optional).
    InputError (exit 3) for anything else."""
    if match := _REDUNDANCY.match(text):
        return RetentionPolicy(int(match[1]))
    if match := _WINDOW.match(text):
        return RetentionPolicy(int(match[1]), _UNITS[match[2].lower()])
    raise InputError(f"cannot parse retention policy {text!r}: expected REDUNDANCY n or "
                     "RECOVERY WINDOW OF n {DAYS|WEEKS|MONTHS}")


# --- the report ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """A backup's retention status (Barman's names) and why."""

    status: str
    reason: str


@dataclass
class DeleteReport:
    """What a run deleted and kept, and why: for the log and the Airflow task."""

    server_name: str
    dry_run: bool = False
    policy: str | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)  # every backup judged
    deleted_backups: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # backup ID -> why it stays
    deleted_objects: list[str] = field(default_factory=list)  # archives, manifests, infos
    deleted_wal: list[str] = field(default_factory=list)  # keys under wals/
    wal_notes: list[str] = field(default_factory=list)  # why WAL was or was not deleted
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        parts = [f"{verb} {len(self.deleted_backups)} backups"
                 + (f" ({', '.join(self.deleted_backups)})" if self.deleted_backups else ""),
                 f"{len(self.deleted_wal)} WAL objects",
                 f"kept {len(self.kept)} backups"]
        if self.errors:
            parts.append(f"{len(self.errors)} errors")
        policy = f" by {self.policy}" if self.policy else ""
        return f"server {self.server_name}{policy}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        """Small enough for XCom: WAL as a count, everything else in full."""
        return {
            "server_name": self.server_name, "dry_run": self.dry_run, "policy": self.policy,
            "verdicts": {k: [v.status, v.reason] for k, v in self.verdicts.items()},
            "deleted_backups": self.deleted_backups, "kept": self.kept,
            "deleted_objects": len(self.deleted_objects), "deleted_wal": len(self.deleted_wal),
            "wal_notes": self.wal_notes, "errors": self.errors,
        }


# --- judging the catalog ---------------------------------------------------------------------

def _keep_status(entry: CatalogEntry) -> str | None:
    """KEEP:STANDALONE, KEEP:FULL (any other non-empty target, to be safe) or None."""
    if entry.keep == TARGET_STANDALONE:
        return KEEP_STANDALONE
    return KEEP_FULL if entry.keep else None


def _end_time(entry: CatalogEntry) -> dt.datetime:
    end = entry.info.get("end_time")
    if not isinstance(end, dt.datetime):
        raise PgCloudError(f"backup {entry.backup_id} is DONE but has no end_time: a recovery "
                           "window cannot be applied")
    return end if end.tzinfo else end.astimezone()  # naive: the client's local time


def _not_judged(entry: CatalogEntry) -> Verdict | None:
    """Why a policy does not judge this backup (incremental, or not DONE), or None."""
    if entry.info.get("parent_backup_id"):
        return Verdict(NONE, "an incremental backup: not judged")
    if entry.status != bi.DONE:
        return Verdict(NONE, f"{entry.status}: only DONE backups are judged")
    return None


def classify(catalog: Catalog, policy: RetentionPolicy, minimum_redundancy: int = 0,
             now: dt.datetime | None = None) -> dict[str, Verdict]:
    """Every backup's retention status under `policy`, as Barman's retention policies judge
    them (the module doc)."""
    verdicts: dict[str, Verdict] = {}
    newest_first = list(reversed(catalog.ids()))
    if policy.unit is None:
        redundancy = policy.value
        if redundancy < minimum_redundancy:
            log.warning("retention policy %s is below the minimum redundancy %d: keeping %d",
                        policy, minimum_redundancy, minimum_redundancy)
            redundancy = minimum_redundancy
        counted = 0
        for backup_id in newest_first:
            entry = catalog.backups[backup_id]
            unjudged = _not_judged(entry)
            if unjudged:
                verdicts[backup_id] = unjudged
                continue
            keep = _keep_status(entry)
            if keep:
                verdicts[backup_id] = Verdict(keep, f"keep annotation: {entry.keep!r}")
            elif counted < redundancy:
                verdicts[backup_id] = Verdict(VALID, f"one of the {redundancy} newest DONE "
                                              "backups")
            else:
                verdicts[backup_id] = Verdict(OBSOLETE, f"older than the {redundancy} newest "
                                              "DONE backups")
            counted += 1
        return verdicts

    point = (now or dt.datetime.now(dt.UTC)) - policy.window
    shown = point.astimezone().isoformat(timespec="seconds")
    before_window = False
    valid = 0
    for backup_id in newest_first:
        entry = catalog.backups[backup_id]
        unjudged = _not_judged(entry)
        if unjudged:
            verdicts[backup_id] = unjudged
            continue
        keep = _keep_status(entry)
        if not before_window:
            if keep:
                verdicts[backup_id] = Verdict(keep, f"keep annotation: {entry.keep!r}")
            elif _end_time(entry) < point:
                verdicts[backup_id] = Verdict(VALID, f"the newest backup that ended before "
                                              f"{shown}: recovery to the window's start "
                                              "needs it")
            else:
                verdicts[backup_id] = Verdict(VALID, f"ended within the recovery window "
                                              f"(after {shown})")
            valid += 1
            if _end_time(entry) < point:
                before_window = True
        elif valid < minimum_redundancy:
            verdicts[backup_id] = (
                Verdict(keep, f"keep annotation: {entry.keep!r}") if keep
                else Verdict(POTENTIALLY_OBSOLETE, f"older than {shown}, kept for the minimum "
                             f"redundancy of {minimum_redundancy}"))
            valid += 1
        else:
            verdicts[backup_id] = (
                Verdict(keep, f"keep annotation: {entry.keep!r}") if keep
                else Verdict(OBSOLETE, f"older than the recovery window (before {shown})"))
    return verdicts


# --- the WAL archive -------------------------------------------------------------------------

class WalArchive:
    """The archived WAL of one server, listed once and kept current as objects are deleted."""

    def __init__(self, prefix: str, keys: Iterable[str]) -> None:
        self.prefix = prefix  # <path>/<server>/wals/
        self.by_name: dict[str, list[str]] = defaultdict(list)  # WAL name -> its objects
        self.by_dir: dict[str, set[str]] = defaultdict(set)  # hash directory -> every object
        for key in keys:
            directory, slash, _rest = key[len(prefix):].partition("/")
            if slash:
                self.by_dir[directory].add(key)
            name = layout.stored_wal_name(key)
            if name is not None:
                self.by_name[name].append(key)
        for directory in sorted(self.by_dir):
            if layout.parse_wal_hash_dir(directory) is None:
                log.warning("ignoring %s%s/: not a WAL directory", prefix, directory)

    def forget(self, keys: Iterable[str]) -> None:
        gone = set(keys)
        for directory in list(self.by_dir):
            self.by_dir[directory] -= gone
            if not self.by_dir[directory]:
                del self.by_dir[directory]
        for name in list(self.by_name):
            left = [key for key in self.by_name[name] if key not in gone]
            if left:
                self.by_name[name] = left
            else:
                del self.by_name[name]


@dataclass(frozen=True)
class _WalPlan:
    keys: list[str]
    note: str


def _neighbour(catalog: Catalog, backup_id: str, step: int) -> CatalogEntry | None:
    """The nearest older (step -1) or newer (+1) backup that is DONE (or WAITING_FOR_WALS)."""
    ids = catalog.ids()
    index = ids.index(backup_id) + step
    while 0 <= index < len(ids):
        entry = catalog.backups[ids[index]]
        if entry.status in _COPY_DONE:
            return entry
        index += step
    return None


def _older_backups_allow(catalog: Catalog, deleted: CatalogEntry,
                         single: bool) -> tuple[bool, list[tuple[str, str]], str]:
    """Whether WAL before `deleted` may go, the begin..end WAL ranges of older keep:standalone
    backups that must stay, and why. A `single` delete (-b) stops at a standalone backup,
    a policy looks past it."""
    ranges: list[tuple[str, str]] = []
    previous = _neighbour(catalog, deleted.backup_id, -1)
    while previous is not None:
        if previous.keep != TARGET_STANDALONE:
            why = (f"older backup {previous.backup_id} is kept full" if previous.keep
                   else f"older backup {previous.backup_id} needs it for point-in-time "
                   "recovery")
            return False, [], why
        if single:
            return False, [], (f"older backup {previous.backup_id} is kept standalone and a "
                               "single delete leaves its WAL alone")
        if not previous.begin_wal or not previous.end_wal:
            return False, [], f"older backup {previous.backup_id} has no begin_wal/end_wal"
        ranges.append((previous.begin_wal, previous.end_wal))
        previous = _neighbour(catalog, previous.backup_id, -1)
    return True, ranges, ""


def _segment_parts(name: str) -> tuple[int, int]:
    return int(name[0:8], 16), int(name[8:16], 16)


def plan_wal_cleanup(catalog: Catalog, wal: WalArchive, deleted: CatalogEntry, *,
                     single: bool, young_started: list[CatalogEntry]) -> _WalPlan:
    """The WAL objects to delete with `deleted` (still in `catalog`), by Barman's rules (the
    module doc), sparing the WAL of young STARTED backups too. `single`: a -b delete."""
    allowed, ranges, why = _older_backups_allow(catalog, deleted, single)
    if not allowed:
        return _WalPlan([], f"WAL before backup {deleted.backup_id} kept: {why}")
    following = _neighbour(catalog, deleted.backup_id, +1)
    until = following or deleted
    if not until.begin_wal:
        return _WalPlan([], f"WAL kept: backup {until.backup_id} has no begin_wal")
    protected_timelines = {entry.timeline for entry in catalog.backups.values()
                           if entry is not deleted} - {until.timeline}
    until_tli, until_log = _segment_parts(until.begin_wal)
    # a run still going needs everything from its begin_wal on, on its timeline
    open_ended = [(entry.begin_wal[:8].upper(), entry.begin_wal[:24].upper())
                  for entry in young_started if entry.begin_wal]

    whole_dirs: list[str] = []
    for directory in sorted(wal.by_dir):
        parsed = layout.parse_wal_hash_dir(directory)
        if parsed is None:
            continue  # WalArchive warned
        tli, log_id = parsed
        if tli in protected_timelines:
            continue
        if any(_segment_parts(begin)[0] <= tli <= _segment_parts(end)[0]
               and _segment_parts(begin)[1] <= log_id <= _segment_parts(end)[1]
               for begin, end in ranges):
            continue
        if any(tli == int(start_tli, 16) and log_id >= _segment_parts(start)[1]
               for start_tli, start in open_ended):
            continue
        if tli == until_tli and log_id < until_log:
            whole_dirs.append(directory)
    keys = sorted(key for directory in whole_dirs for key in wal.by_dir[directory])
    in_whole = set(keys)

    singles: list[str] = []
    for name, stored in wal.by_name.items():
        left = [key for key in stored if key not in in_whole]
        if not left or layout.is_history_name(name):
            continue
        if layout.wal_timeline(name) in protected_timelines:
            continue
        checked = name[:24] if layout.is_backup_file_name(name) else name
        if any(begin <= checked <= end for begin, end in ranges):
            continue
        if any(name[:8].upper() == start_tli and name[:24].upper() >= start
               for start_tli, start in open_ended):
            continue
        if name < until.begin_wal:
            singles.extend(left)
    keys.extend(sorted(singles))

    scope = f"timeline {until_tli}, before {until.begin_wal} (begin_wal of " + (
        f"the next backup {until.backup_id})" if following else "the deleted backup)")
    spared = []
    if protected_timelines - {None}:
        spared.append("timelines " + ", ".join(
            str(t) for t in sorted(t for t in protected_timelines if t is not None))
            + " of other backups")
    if ranges:
        spared.append("standalone ranges " + ", ".join(f"{b}..{e}" for b, e in ranges))
    if open_ended:
        spared.append("WAL of STARTED backups in progress from " + ", ".join(
            start for _tli, start in open_ended))
    note = f"WAL of backup {deleted.backup_id}: {len(keys)} objects on {scope}" + (
        f"; sparing {'; '.join(spared)}" if spared else "")
    return _WalPlan(keys, note)


# --- deleting --------------------------------------------------------------------------------

def archive_keys(catalog: Catalog, entry: CatalogEntry) -> list[str]:
    """The backup's archives as barman-cloud-restore finds them: objects right under its
    directory named `data` or a tablespace OID of its backup.info, then `.tar[.ext]` (the
    main archive) or `_NNNN.tar[.ext]` (more parts)."""
    prefix = catalog.prefix(entry.backup_id) + "/"
    stems = ["data"] + [str(space[1]) for space in entry.info.get("tablespaces") or ()]
    found = []
    for key in entry.keys:
        name = key[len(prefix):]
        if "/" in name:
            continue
        for stem in stems:
            suffix = name[len(stem):]
            if not name.startswith(stem) or not suffix or suffix[0] not in "._":
                continue
            extension = suffix.split(".", 1)[-1] if suffix[0] == "_" else suffix[1:]
            if extension in _ARCHIVE_EXTENSIONS:
                found.append(key)
                break
    return found


class _Deleter:
    """One run's deletes: the store, the batch size, the report and the dry-run switch."""

    def __init__(self, store: ObjectStore, catalog: Catalog, report: DeleteReport,
                 batch_size: int | None, grace: dt.timedelta, now: dt.datetime) -> None:
        self.store, self.catalog, self.report = store, catalog, report
        self.batch_size = batch_size
        self.dry_run = report.dry_run
        self.now, self.grace = now, grace
        self._wal: WalArchive | None = None
        manifests = layout.manifest_prefix(store.base_path, catalog.server_name)
        self.manifests: dict[str, list[str]] = defaultdict(list)
        for key, _size in store.list(manifests):
            backup_id = key[len(manifests):].partition("/")[0]
            self.manifests[backup_id].append(key)

    @property
    def wal(self) -> WalArchive:
        if self._wal is None:
            prefix = layout.wals_prefix(self.store.base_path, self.catalog.server_name)
            self._wal = WalArchive(prefix, (key for key, _size in self.store.list(prefix)))
        return self._wal

    def is_young_started(self, entry: CatalogEntry) -> bool:
        return entry.status == bi.STARTED and \
            self.now - begin_time(entry.info, entry.backup_id) <= self.grace

    def young_started(self) -> list[CatalogEntry]:
        return [entry for entry in self.catalog.backups.values() if self.is_young_started(entry)]

    def _delete(self, keys: list[str]) -> bool:
        """Delete (or, in a dry run, pretend to); False after logging what failed."""
        if not keys:
            return True
        for key in keys:
            log.debug("%s %s", "would delete" if self.dry_run else "deleting", key)
        if self.dry_run:
            return True
        errors = self.store.delete_many(keys, self.batch_size)
        for key, reason in sorted(errors.items())[:20]:
            self.report.errors.append(f"cannot delete {key}: {reason}")
        if len(errors) > 20:
            self.report.errors.append(f"... and {len(errors) - 20} more objects not deleted")
        return not errors

    def _objects(self, entry: CatalogEntry) -> tuple[list[str], list[str], str]:
        """What deleting a backup deletes: its archives, its manifests, its backup.info."""
        return (archive_keys(self.catalog, entry), self.manifests.get(entry.backup_id, []),
                layout.info_key(self.catalog.prefix(entry.backup_id)))

    def lock(self, entry: CatalogEntry) -> str | None:
        """Why the backup cannot be deleted yet because the store locks some of its objects
        (`locked until ...`), or None. Locks that cannot be read keep the backup too, with
        an error in the report."""
        archives, manifests, info_key = self._objects(entry)
        try:
            locks = self.store.object_locks([*archives, *manifests, info_key])
        except Exception as exc:
            why = f"its locks could not be read ({first_line(exc)})"
            self.report.errors.append(f"backup {entry.backup_id} not deleted: {why}")
            return why
        return lock_reason(locks, self.now)

    def delete_backup(self, entry: CatalogEntry, *, single: bool) -> bool:
        """Delete one backup and then the WAL only it needed; False if the backup could not be
        deleted (nothing more should be deleted then)."""
        backup_id = entry.backup_id
        verb = "would delete" if self.dry_run else "deleting"
        archives, manifests, info_key = self._objects(entry)
        left = sorted(set(entry.keys) - set(archives) - {info_key})
        log.info("%s backup %s of server %s: %d archives, %d manifest objects, backup.info",
                 verb, backup_id, self.catalog.server_name, len(archives), len(manifests))
        if left:
            log.warning("backup %s: %d objects that are not its archives stay, as "
                        "barman-cloud-backup-delete leaves them: %s", backup_id, len(left),
                        ", ".join(left[:5]) + (" ..." if len(left) > 5 else ""))
        if not self._delete(archives + manifests) or not self._delete([info_key]):
            self.report.errors.append(f"backup {backup_id} could not be deleted")
            return False
        self.report.deleted_backups.append(backup_id)
        self.report.deleted_objects.extend(archives + manifests + [info_key])
        self.manifests.pop(backup_id, None)

        plan = plan_wal_cleanup(self.catalog, self.wal, entry, single=single,
                                young_started=self.young_started())
        log.info("%s", plan.note)
        self.report.wal_notes.append(plan.note)
        if plan.keys:
            log.info("%s %d WAL objects of server %s, %s .. %s", verb, len(plan.keys),
                     self.catalog.server_name, plan.keys[0].rsplit("/", 1)[-1],
                     plan.keys[-1].rsplit("/", 1)[-1])
            deleted = plan.keys
            if not self.dry_run:
                errors = self.store.delete_many(plan.keys, self.batch_size)
                if errors:
                    self.report.errors.append(
                        f"{len(errors)} WAL objects of backup {backup_id} could not be deleted "
                        f"(e.g. {min(errors)}: {errors[min(errors)]}); a later delete retries "
                        "them")
                deleted = [key for key in plan.keys if key not in errors]
            self.report.deleted_wal.extend(deleted)
            self.wal.forget(deleted)
        del self.catalog.backups[backup_id]
        return True


def _open(store: ObjectStore, server_name: str, report: DeleteReport,
          batch_size: int | None, grace_seconds: float,
          now: dt.datetime | None) -> _Deleter:
    catalog = read_catalog(store, server_name)
    if catalog.unreadable:
        raise BackupFailed(
            "cannot read the backup.info of " + ", ".join(
                f"{backup_id} ({why})" for backup_id, why in sorted(catalog.unreadable.items()))
            + ": deleting anything with part of the catalog unknown is not safe")
    return _Deleter(store, catalog, report, batch_size, dt.timedelta(seconds=grace_seconds),
                    now or dt.datetime.now(dt.UTC))


def _refuse_snapshot(entry: CatalogEntry) -> str | None:
    if entry.info.get("snapshots_info"):
        return ("a snapshot backup: its disk snapshots are not deleted by this command; "
                "use barman-cloud-backup-delete")
    return None


def apply_retention(store: ObjectStore, server_name: str, policy: RetentionPolicy | str, *,
                    minimum_redundancy: int = 0, dry_run: bool = False,
                    batch_size: int | None = None,
                    grace_seconds: float = DEFAULT_GRACE_SECONDS,
                    now: dt.datetime | None = None) -> DeleteReport:
    """Delete every backup `policy` makes obsolete, oldest first, each with the WAL no
    remaining backup needs (the module doc). One the store still locks is kept; stops at the
    first backup that cannot be deleted; the report lists what happened. BackupFailed when
    part of the catalog cannot be read."""
    if isinstance(policy, str):
        policy = parse_policy(policy)
    if minimum_redundancy < 0:
        raise InputError("the minimum redundancy must not be negative")
    report = DeleteReport(server_name, dry_run=dry_run, policy=str(policy))
    deleter = _open(store, server_name, report, batch_size, grace_seconds, now)
    catalog = deleter.catalog
    report.verdicts = classify(catalog, policy, minimum_redundancy, deleter.now)
    obsolete = []
    for backup_id in catalog.ids():
        verdict = report.verdicts[backup_id]
        entry = catalog.backups[backup_id]
        refusal = _refuse_snapshot(entry) if verdict.status == OBSOLETE else None
        if verdict.status == OBSOLETE and refusal is None:
            log.info("backup %s: OBSOLETE, %s", backup_id, verdict.reason)
            obsolete.append(entry)
            continue
        why = refusal or f"{verdict.status}: {verdict.reason}"
        if deleter.is_young_started(entry):
            why = "STARTED within the grace period: a run may still be writing it"
        report.kept[backup_id] = why
        (log.warning if refusal else log.info)("backup %s kept: %s", backup_id, why)
    for entry in obsolete:
        locked = deleter.lock(entry)
        if locked:  # nothing of it goes; the WAL rules see it as a backup that stays
            report.kept[entry.backup_id] = locked
            log.info("backup %s kept: %s", entry.backup_id, locked)
            continue
        if not deleter.delete_backup(entry, single=False):
            for later in obsolete[obsolete.index(entry):]:
                report.kept[later.backup_id] = "not deleted: an earlier delete failed"
            break
    return report


def delete_backup(store: ObjectStore, server_name: str, backup_id: str, *,
                  minimum_redundancy: int = 0, dry_run: bool = False,
                  batch_size: int | None = None,
                  grace_seconds: float = DEFAULT_GRACE_SECONDS,
                  now: dt.datetime | None = None) -> DeleteReport:
    """Delete one backup (an ID, a name or a shortcut, as barman-cloud-backup-delete -b takes
    it) with the WAL no remaining backup needs.

    BackupFailed (exit 1) when it has a keep annotation, when `minimum_redundancy` backups that
    are not STARTED would not remain, when it is STARTED within the grace period, a snapshot
    backup, or locked in the store; PgCloudError (exit 4) when a name matches no backup or
    several. An ID that is not in the catalog is only a warning."""
    report = DeleteReport(server_name, dry_run=dry_run)
    deleter = _open(store, server_name, report, batch_size, grace_seconds, now)
    catalog = deleter.catalog
    backup_id = parse_backup_id(catalog, backup_id)
    entry = catalog.backups.get(backup_id)
    prefix = catalog.prefix(backup_id)
    kept = entry.has_keep if entry else any(
        key == layout.keep_key(prefix) for key, _size in store.list(layout.keep_key(prefix)))
    if kept:
        raise BackupFailed(f"backup {backup_id} of server {server_name} has a keep annotation: "
                           "release it (pgcloud-backup-keep -r) to delete the backup")
    if minimum_redundancy > 0:
        completed = sum(1 for other in catalog.backups.values() if other.status != bi.STARTED)
        if minimum_redundancy >= completed:
            raise BackupFailed(f"backup {backup_id} of server {server_name} not deleted: the "
                               f"minimum redundancy is {minimum_redundancy} and there are "
                               f"{completed} backups")
    if entry is None:
        log.warning("backup %s of server %s does not exist", backup_id, server_name)
        return report
    if deleter.is_young_started(entry):
        raise BackupFailed(f"backup {backup_id} is STARTED and began within the grace period: "
                           "a run may still be writing it")
    refusal = _refuse_snapshot(entry) or deleter.lock(entry)
    if refusal:
        raise BackupFailed(f"backup {backup_id} not deleted: {refusal}")
    report.verdicts[backup_id] = Verdict(entry.status, "asked for by ID")
    deleter.delete_backup(entry, single=True)
    for other in catalog.ids():
        report.kept[other] = "not asked for"
    return report


if __name__ == "__main__":
    from .cli.backup_delete import main

    sys.exit(main())
