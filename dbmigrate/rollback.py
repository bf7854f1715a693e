"""Rollback that loses nothing: the revision archive, rollback planning, data backups and restores.

* The archive keeps every applied revision's script in the database, so an older image, whose
  scripts end below the database's revision, can still downgrade through the newer revisions.
  With an archive key the entries are signed, and an entry that does not verify never runs.
* Backups: before a step that would lose data (a data-loss finding of ``dbmigrate check`` on the
  direction it runs), the affected data is copied aside: the whole table, or its primary key and
  the columns that go. When the same revision later runs the other way and brings the table or
  column back, the values are restored by primary key, in that step's transaction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import tempfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from alembic.script import ScriptDirectory
from sqlalchemy import bindparam, delete, inspect, select, update
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Connection, RowMapping

from dbmigrate.database import Capabilities, advance_sequences, autocommits
from dbmigrate.errors import ConfigurationError, UnsafeMigration
from dbmigrate.history import archive_table, backups_table, column_names, create_missing, now

log = structlog.get_logger("dbmigrate.rollback")

PENDING, RESTORED, DISCARDED, DROPPED = "pending", "restored", "discarded", "dropped"

# Rules whose loss a copy of the whole table undoes; the others lose (table, column) values.
_WHOLE_TABLE_RULES = {"DL001", "DL003", "DL004"}


# -- the archive ------------------------------------------------------------------------------------

# The manifest's row in the archive table: Alembic refuses "@" in revision ids, so no revision has it.
MANIFEST = "@manifest"


@dataclasses.dataclass(frozen=True)
class Listing:
    """An entry as the manifest lists it: the version of the revision's source, and the run that archived it."""

    version: int
    sha256: str
    run_id: str


@dataclasses.dataclass(frozen=True)
class ArchivedRevision:
    """One revision script as an upgrade stored it.

    ``version`` is 0 for an entry archived before versions existed. ``signature`` is the signature
    earlier dbmigrate versions verify; ``seal`` is the one this version verifies.
    """

    revision: str
    down_revisions: tuple[str, ...]
    filename: str
    source: str
    sha256: str
    run_id: str
    version: int
    signature: str | None = None
    seal: str | None = None

    @property
    def listing(self) -> Listing:
        return Listing(self.version, self.sha256, self.run_id)

    def refusal(self, key: str | None, manifest: Manifest) -> str | None:
        """Why this entry must not run, or None.

        Without ``key``: its source does not match its sha256. With it, also: it is not sealed, its
        seal does not verify, or it is not the entry the signed ``manifest`` lists.
        """
        if hashlib.sha256(self.source.encode()).hexdigest() != self.sha256:
            return "its source does not match the sha256 stored with it"
        if key is None:
            return None
        if not self.seal:
            return (
                "it was archived by an earlier dbmigrate version or without the archive key, so it is not signed "
                "together with the run and version that archived it"
            )
        if not hmac.compare_digest(self.seal, _seal(key, self)):
            return "its signature does not verify with the archive key"
        return manifest.refusal(self)

    def signed(self, key: str | None) -> ArchivedRevision:
        """This entry with both signatures made with ``key`` (neither without a key)."""
        if key is None:
            return dataclasses.replace(self, signature=None, seal=None)
        signature = _sign(key, self.revision, self.down_revisions, self.sha256)
        return dataclasses.replace(self, signature=signature, seal=_seal(key, self))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """The archive's table of contents, signed as a whole: each revision's :class:`Listing`.

    An older entry written back into the table still verifies on its own; it no longer matches what
    the manifest lists. ``listings`` is None without a key, or when the manifest is missing or does
    not verify (``problem`` says which).
    """

    listings: dict[str, Listing] | None
    problem: str | None = None

    @classmethod
    def verify(cls, row: ArchivedRevision | None, key: str | None) -> Manifest:
        """The manifest stored as ``row``, as far as ``key`` vouches for it."""
        if key is None:
            return cls(None)
        if row is None:
            return cls(None, "the archive has no signed manifest (an earlier dbmigrate wrote it, or it was deleted)")
        if not row.seal or not hmac.compare_digest(row.seal, _manifest_seal(key, row.source)):
            return cls(None, "the archive's manifest does not verify with the archive key")
        return cls({revision: Listing(**listed) for revision, listed in json.loads(row.source).items()})

    def refusal(self, entry: ArchivedRevision) -> str | None:
        """Why ``entry``, sealed with the key, is not the entry this manifest lists; None when it is."""
        if self.listings is None:
            return self.problem
        listed = self.listings.get(entry.revision)
        if listed is None:
            return (
                "the archive's signed manifest does not list it (it was written into the table by hand, or the "
                "manifest was put back from before the entry was archived)"
            )
        if listed != entry.listing:
            return (
                f"it is version {entry.version} archived by run {entry.run_id}, but the archive's signed manifest "
                f"lists version {listed.version} archived by run {listed.run_id}: an older entry was written back"
            )
        return None


class Archive:
    """The archive table, read and written through the control connection."""

    def __init__(self, connection: Connection, name: str, schema: str | None, key: str | None) -> None:
        self.connection = connection
        self.table = archive_table(name, schema)
        self.key = key

    def ensure(self) -> None:
        """Create the table, or add the columns that one created by an earlier dbmigrate lacks."""
        create_missing(self.connection, self.table, "archive")

    def read(self, ensured: bool = False) -> tuple[dict[str, ArchivedRevision], Manifest]:
        """Every entry by revision, and the manifest as far as the key vouches for it.

        ``ensured``: :meth:`ensure` ran in this command, so the table and all its columns are there.
        """
        query = select(self.table)
        if not ensured:
            present = column_names(self.connection, self.table)
            if present is None:
                return {}, Manifest.verify(None, self.key)
            # An archive created by an earlier dbmigrate lacks the newer columns until the next upgrade adds them.
            query = select(*(column for column in self.table.c if column.name in present))
        entries = {row.revision: _archived(row._mapping) for row in self.connection.execute(query)}
        return entries, Manifest.verify(entries.pop(MANIFEST, None), self.key)

    def store(self, script: ScriptDirectory, revisions: Iterable[str], run_id: str) -> int:
        """Archive the scripts of ``revisions`` (applied, known to ``script``) not archived as they are now.

        Creates the table, or adds its newer columns, first.

        With a key, the manifest is signed anew over the entries written and the stored ones that
        verify; entries and manifest commit together. Returns how many entries were written.
        """
        self.ensure()
        stored, manifest = self.read(ensured=True)
        written = [
            entry
            for revision in revisions
            if (entry := self._fresh(script, revision, run_id, stored.get(revision), manifest)) is not None
        ]
        rows = [_row(entry) for entry in written]
        if self.key is not None:
            listings = _listings(self.key, stored, manifest, written)
            if listings != manifest.listings:
                rows.append(_row(_manifest_entry(self.key, listings, run_id)))
        if rows:
            # A separate connection, for one transaction: entries never commit without the manifest listing them.
            with self.connection.engine.begin() as connection:
                replaced = self.table.c.revision.in_([row["revision"] for row in rows])
                connection.execute(delete(self.table).where(replaced))
                connection.execute(self.table.insert(), rows)
        return len(written)

    def _fresh(
        self, script: ScriptDirectory, revision: str, run_id: str, stored: ArchivedRevision | None, manifest: Manifest
    ) -> ArchivedRevision | None:
        """The entry to write for ``revision``; None when the scripts lack it or it is archived as they have it."""
        found = script.get_revision(revision)
        if found is None or found.path is None:
            return None
        with open(found.path, encoding="utf-8") as file:  # once per applied revision, every upgrade: no pathlib
            source = file.read()
        digest = hashlib.sha256(source.encode()).hexdigest()
        filename = os.path.basename(found.path)
        if stored is not None and self._intact(stored, digest, filename, manifest):
            return None
        trusted = (manifest.listings or {}).get(revision)
        version = _next_version(digest, trusted, stored.listing if stored is not None else None)
        down = tuple(found._normalized_down_revisions)
        return ArchivedRevision(revision, down, filename, source, digest, run_id, version).signed(self.key)

    def _intact(self, entry: ArchivedRevision, digest: str, filename: str, manifest: Manifest) -> bool:
        """Whether a stored entry is the script as it is now (``digest``, ``filename``), has a version, verifies
        and carries exactly the signatures this key makes: then there is nothing to write."""
        if (entry.sha256, entry.filename) != (digest, filename) or entry.version == 0:
            return False
        return entry.refusal(self.key, manifest) is None and entry.signed(self.key) == entry


def _listings(
    key: str, stored: dict[str, ArchivedRevision], manifest: Manifest, written: Iterable[ArchivedRevision]
) -> dict[str, Listing]:
    """The manifest after a store: the entries written now, and the stored ones that verify.

    A stored entry that does not verify (written back by hand, archived the old way) is left out:
    signing the manifest anew must never vouch for it.
    """
    listings = {revision: entry.listing for revision, entry in stored.items() if entry.refusal(key, manifest) is None}
    listings.update((entry.revision, entry.listing) for entry in written)
    return listings


def _next_version(digest: str, trusted: Listing | None, stored: Listing | None) -> int:
    """The version of an entry whose source has ``digest``.

    Unchanged source keeps its version; changed source gets one past both what the signed manifest
    lists and what the row says, so that versions only grow, whatever the row was edited to.
    """
    previous = trusted or stored
    if previous is not None and previous.version > 0 and previous.sha256 == digest:
        return previous.version
    return 1 + max(trusted.version if trusted else 0, stored.version if stored else 0)


def _manifest_entry(key: str, listings: dict[str, Listing], run_id: str) -> ArchivedRevision:
    """The archive row that stores ``listings``, signed with ``key``."""
    text = json.dumps({revision: dataclasses.asdict(listing) for revision, listing in listings.items()}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return ArchivedRevision(MANIFEST, (), "", text, digest, run_id, 0, seal=_manifest_seal(key, text))


def _archived(row: RowMapping) -> ArchivedRevision:
    return ArchivedRevision(
        revision=row["revision"],
        down_revisions=tuple(json.loads(row["down_revisions"])),
        filename=row["filename"],
        source=row["source"],
        sha256=row["sha256"],
        run_id=row["run_id"],
        version=row.get("version") or 0,  # NULL, or no column yet: archived before versions existed
        signature=row["signature"],
        seal=row.get("seal"),
    )


def _row(entry: ArchivedRevision) -> dict[str, Any]:
    return {
        "revision": entry.revision,
        "down_revisions": json.dumps(list(entry.down_revisions)),
        "filename": entry.filename,
        "source": entry.source,
        "sha256": entry.sha256,
        "signature": entry.signature,
        "archived_at": now(),
        "run_id": entry.run_id,
        "version": entry.version,
        "seal": entry.seal,
    }


def _sign(key: str, revision: str, down_revisions: Sequence[str], sha256: str) -> str:
    """The signature earlier dbmigrate versions verify: it binds the source to its revision, not to its history."""
    return _hmac(key, [revision, list(down_revisions), sha256])


def _seal(key: str, entry: ArchivedRevision) -> str:
    """The signature that binds an entry's source to its revision, file, run and version."""
    fields = [entry.revision, list(entry.down_revisions), entry.filename, entry.sha256, entry.run_id, entry.version]
    return _hmac(key, ["entry", *fields])


def _manifest_seal(key: str, text: str) -> str:
    return _hmac(key, ["manifest", text])


def _hmac(key: str, message: list[Any]) -> str:
    # The three kinds of message are JSON arrays of different lengths: one can never pass for another.
    return hmac.new(key.encode(), json.dumps(message).encode(), hashlib.sha256).hexdigest()


def missing_from_scripts(
    current: Iterable[str],
    script: ScriptDirectory,
    archive: dict[str, ArchivedRevision],
    listed: Collection[str] = (),
) -> list[ArchivedRevision]:
    """The archived revisions between the scripts' revisions and ``current``, newest first.

    Raises :class:`UnsafeMigration` naming a revision that the signed manifest (``listed``) lists
    but the archive no longer holds, :class:`ConfigurationError` naming one that neither the scripts
    nor the archive hold.
    """
    known = script.revision_map._revision_map
    found: dict[str, ArchivedRevision] = {}
    todo = [revision for revision in current if revision not in known]
    while todo:
        revision = todo.pop()
        if revision in found or revision in known:
            continue
        entry = archive.get(revision)
        if entry is None and revision in listed:
            raise UnsafeMigration(_refused(revision, "the archive's signed manifest lists it, but its entry is gone"))
        if entry is None:
            raise ConfigurationError(
                f"The database is at revision {revision}, which neither these migration scripts nor dbmigrate's "
                "archive contain (it was applied before the archive existed, or by plain alembic). Run `dbmigrate "
                "upgrade` once with the image that has it, so that it is archived, or downgrade with that image."
            )
        found[revision] = entry
        todo.extend(entry.down_revisions)
    return list(found.values())


@contextlib.contextmanager
def with_archived(script: ScriptDirectory, entries: Sequence[ArchivedRevision]) -> Iterator[ScriptDirectory]:
    """``script`` plus the archived revisions ``entries``, as one script directory (for this block)."""
    if not entries:
        yield script
        return
    with tempfile.TemporaryDirectory(prefix="dbmigrate-archive-") as directory:
        for entry in entries:
            name = re.sub(r"\W", "_", entry.revision)
            (Path(directory) / f"archived_{name}_{Path(entry.filename).name}").write_text(
                entry.source, encoding="utf-8"
            )
        yield ScriptDirectory(
            script.dir,
            file_template=script.file_template,
            truncate_slug_length=script.truncate_slug_length,
            version_locations=[*script._version_locations, directory],
            sourceless=script.sourceless,
            output_encoding=script.output_encoding,
            timezone=script.timezone,
            recursive_version_locations=script.recursive_version_locations,
        )


# -- the decision -----------------------------------------------------------------------------------

POLICIES = ("auto", "always", "never")


def decide(policy: str, revisions: Sequence[str], target: str, breaking: Sequence[Any]) -> tuple[bool, str]:
    """Whether a rollback to ``target`` downgrades through ``revisions`` (newest first), and why, in one sentence.

    ``breaking`` are the breaking findings of those revisions' upgrades: what the older code cannot
    live with. Only ``auto`` looks at them.
    """
    above = ", ".join(revisions)
    if policy == "never":
        return False, f"--schema never: the schema stays at {revisions[0]}, ahead of {target} ({above} kept)."
    if policy == "always":
        return True, f"--schema always: downgrading through {above} to {target}."
    if breaking:
        first = breaking[0]
        return True, (
            f"revision {first.revision} is breaking for the older code ({first.rule}: {first.message}), so the "
            f"database is downgraded through {above} to {target}."
        )
    return False, (
        f"no revision above {target} ({above}) is breaking for the older code, so the newer schema stays and the "
        "database is recorded as intentionally ahead."
    )


# -- backups ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Loss:
    """What a step would destroy in one table: all of it (``columns`` None) or these columns' values."""

    table: str
    columns: tuple[str, ...] | None


def losses(findings: Iterable[Any]) -> tuple[list[Loss], list[Any]]:
    """Group a step's data-loss findings by table, in statement order; returns (losses, findings no copy undoes).

    The order matters: restores run in reverse, so a parent table dropped after its child comes
    back before the child's rows that refer to it.
    """
    tables: dict[str, list[str] | None] = {}  # None: the whole table
    uncopyable = []
    for finding in findings:
        if finding.table is None or finding.category != "data-loss":
            uncopyable.append(finding)
        elif finding.rule in _WHOLE_TABLE_RULES or finding.column is None:
            tables[finding.table] = None
        else:
            columns = tables.setdefault(finding.table, [])
            if columns is not None and finding.column not in columns:
                columns.append(finding.column)
    found = [Loss(table, None if columns is None else tuple(columns)) for table, columns in tables.items()]
    return found, uncopyable


@dataclasses.dataclass(frozen=True)
class Backup:
    """One copy of data taken before a step that would lose it."""

    id: int
    run_id: str
    revision: str
    direction: str
    source_table: str
    columns: tuple[str, ...] | None
    key_columns: tuple[str, ...]
    backup_table: str
    row_count: int
    status: str
    created_at: datetime
    restored_at: datetime | None
    restored_rows: int | None

    def describe(self) -> str:
        what = f"{self.source_table}({', '.join(self.columns)})" if self.columns else f"table {self.source_table}"
        return f"{self.row_count} row(s) of {what} in {self.backup_table}"

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["columns"] = list(self.columns) if self.columns is not None else None
        data["key_columns"] = list(self.key_columns)
        data["created_at"] = self.created_at.isoformat() + "Z"
        data["restored_at"] = self.restored_at.isoformat() + "Z" if self.restored_at else None
        return data


class Backups:
    """Copies of data, where they live, and the registry table that lists them.

    Copies go to a schema (PostgreSQL) or database (MySQL/MariaDB) named ``location``, or on SQLite
    to tables named ``<location>__...`` beside the data.
    """

    def __init__(self, connection: Connection, caps: Capabilities, name: str, schema: str | None, location: str):
        self.connection = connection
        self.caps = caps
        self.table = backups_table(name, schema)
        self.location = location

    def ensure(self) -> None:
        create_missing(self.connection, self.table, "backups registry")

    def prepare(self, connection: Connection | None = None) -> None:
        """Create the registry table and the place the copies go, on ``connection`` (default: before a step's
        transaction, on the control connection; a step's own connection inside its transaction when a loss is
        only seen while the step runs, where SQLite's single writer is the step)."""
        on = self.connection if connection is None else connection
        create_missing(on, self.table, "backups registry")
        if self.caps.is_postgresql:
            on.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {self._quote(self.location)}")
        elif self.caps.is_mysql:
            on.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {self._quote(self.location)}")

    def take(self, loss: Loss, connection: Connection, *, run_id: str, revision: str, direction: str) -> Backup | None:
        """Copy what ``loss`` names aside on ``connection`` and register it; None when there is nothing to copy.

        On PostgreSQL, inside a transaction, writers to the table are held off (``LOCK TABLE ... IN SHARE
        MODE``, which readers pass) until that transaction ends, so the copy holds every value committed
        before the step changes the table. The lock waits at most the session's ``lock_timeout``.
        """
        schema, table = _split(loss.table)
        inspector = inspect(connection)
        if not inspector.has_table(table, schema=schema):
            return None
        if self.caps.is_postgresql and in_transaction_block(connection):
            connection.exec_driver_sql(f"LOCK TABLE {self._source(loss.table)} IN SHARE MODE")
        keys = tuple(inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or ())
        types = {c["name"]: c["type"] for c in inspector.get_columns(table, schema=schema)}
        columns = _copied_columns(loss, keys, types)
        if columns == ():
            return None
        target = self._backup_name(table, revision, run_id)
        copied = (*keys, *columns) if columns is not None else tuple(types)
        # Enum values are copied as text: a copy that used the type would keep the downgrade from dropping it.
        selected = ", ".join(
            f"CAST({self._quote(c)} AS TEXT) AS {self._quote(c)}"
            if self.caps.is_postgresql and _is_enum(types.get(c))
            else self._quote(c)
            for c in copied
        )
        connection.exec_driver_sql(
            f"CREATE TABLE {self._qualified(target)} AS SELECT {selected} FROM {self._source(loss.table)}"
        )
        count = int(connection.exec_driver_sql(f"SELECT COUNT(*) FROM {self._qualified(target)}").scalar_one())
        row_id = connection.execute(
            self.table.insert().values(
                run_id=run_id,
                revision=revision,
                direction=direction,
                source_table=loss.table,
                columns=json.dumps(list(columns)) if columns is not None else None,
                key_columns=json.dumps(list(keys)),
                backup_table=self._display(target),
                row_count=count,
                status=PENDING,
                created_at=now(),
            )
        ).inserted_primary_key[0]  # type: ignore[index]
        row = connection.execute(select(self.table).where(self.table.c.id == row_id)).first()
        assert row is not None
        return _backup(row._mapping)

    def get(self, backup_id: int) -> Backup:
        row = self.connection.execute(select(self.table).where(self.table.c.id == backup_id)).first()
        if row is None:
            raise ConfigurationError(f"There is no backup {backup_id}; `dbmigrate backups list` shows them.")
        return _backup(row._mapping)

    def all(self) -> list[Backup]:
        """Every backup, newest first (empty before the first one)."""
        if not inspect(self.connection).has_table(self.table.name, schema=self.table.schema):
            return []
        return [
            _backup(r._mapping) for r in self.connection.execute(select(self.table).order_by(self.table.c.id.desc()))
        ]

    def pending(self) -> list[Backup]:
        """Backups not restored, discarded or dropped yet, oldest first."""
        if not inspect(self.connection).has_table(self.table.name, schema=self.table.schema):
            return []
        query = select(self.table).where(self.table.c.status == PENDING).order_by(self.table.c.id)
        return [_backup(r._mapping) for r in self.connection.execute(query)]

    def restore(self, backup: Backup, connection: Connection) -> int | None:
        """Put the backed-up values back by primary key, on ``connection`` (in its transaction).

        Returns the rows restored, or None (nothing done) while the table or a column is not there.
        """
        schema, table = _split(backup.source_table)
        inspector = inspect(connection)
        if not inspector.has_table(table, schema=schema):
            return None
        reflected = inspector.get_columns(table, schema=schema)
        target_types = {c["name"]: c["type"] for c in reflected}
        present = list(target_types)
        computed = {c["name"] for c in reflected if c.get("computed")}  # the database fills them in itself
        always = any(c.get("identity", {}).get("always") for c in reflected)
        casts = {
            name: connection.dialect.type_compiler_instance.process(kind)
            for name, kind in target_types.items()
            if _is_enum(kind) and self.caps.is_postgresql
        }
        source, copy = self._source(backup.source_table), self._qualified_display(backup.backup_table)
        keys = backup.key_columns
        if backup.columns is not None:
            if not set(backup.columns) <= set(present):
                return None
            columns = [c for c in backup.columns if c not in computed]
            restored = self._update_from(connection, source, table, copy, columns, keys, casts) if columns else 0
        else:
            copy_schema, copy_name = self._split_display(backup)
            copied = [c["name"] for c in inspector.get_columns(copy_name, schema=copy_schema)]
            columns = [c for c in copied if c in present and c not in computed]
            restored = self._insert_missing(connection, source, copy, columns, keys, casts, always)
            advance_sequences(connection, source, present)
        connection.execute(
            update(self.table)
            .where(self.table.c.id == bindparam("backup_id"))
            .values(status=RESTORED, restored_at=now(), restored_rows=restored),
            {"backup_id": backup.id},
        )
        return restored

    def discard(self, backups: Iterable[Backup]) -> None:
        """Drop copies that are not needed (their step rolled back, nothing was lost)."""
        for backup in backups:
            self.drop(backup, DISCARDED)

    def drop(self, backup: Backup, status: str = DROPPED) -> None:
        self.connection.exec_driver_sql(f"DROP TABLE IF EXISTS {self._qualified_display(backup.backup_table)}")
        self.connection.execute(update(self.table).where(self.table.c.id == backup.id).values(status=status))

    # -- SQL per dialect ---------------------------------------------------------------------------

    def _update_from(
        self,
        connection: Connection,
        source: str,
        table: str,
        copy: str,
        columns: Sequence[str],
        keys: Sequence[str],
        casts: dict[str, str],
    ) -> int:
        quote = self._quote
        if self.caps.is_mysql:
            sets = ", ".join(f"t.{quote(c)} = b.{quote(c)}" for c in columns)
            match = " AND ".join(f"t.{quote(k)} = b.{quote(k)}" for k in keys)
            sql = f"UPDATE {source} AS t JOIN {copy} AS b ON {match} SET {sets}"
        else:
            sets = ", ".join(f"{quote(c)} = {_value(c, casts, quote)}" for c in columns)
            match = " AND ".join(f"{quote(table)}.{quote(k)} = b.{quote(k)}" for k in keys)
            sql = f"UPDATE {source} SET {sets} FROM {copy} AS b WHERE {match}"
        return int(connection.exec_driver_sql(sql).rowcount)

    def _insert_missing(
        self,
        connection: Connection,
        source: str,
        copy: str,
        columns: Sequence[str],
        keys: Sequence[str],
        casts: dict[str, str],
        identity_always: bool,
    ) -> int:
        quote = self._quote
        listed = ", ".join(quote(c) for c in columns)
        # The rows come back with the values they had, their GENERATED ALWAYS identities included.
        overriding = " OVERRIDING SYSTEM VALUE" if identity_always and self.caps.is_postgresql else ""
        if keys:
            match = " AND ".join(f"t.{quote(k)} = b.{quote(k)}" for k in keys)
            absent = f"WHERE NOT EXISTS (SELECT 1 FROM {source} AS t WHERE {match})"
        else:
            absent = f"WHERE NOT EXISTS (SELECT 1 FROM {source})"  # no key: only into an empty table
        selected = ", ".join(_value(c, casts, quote) for c in columns)
        sql = f"INSERT INTO {source} ({listed}){overriding} SELECT {selected} FROM {copy} AS b {absent}"
        return int(connection.exec_driver_sql(sql).rowcount)

    def _backup_name(self, table: str, revision: str, run_id: str) -> str:
        name = re.sub(r"\W", "_", f"{table}__{revision}")[:40] + f"__{run_id}"
        return name if self.caps.name != "sqlite" else f"{self.location}__{name}"[:120]

    def _display(self, name: str) -> str:
        return name if self.caps.name == "sqlite" else f"{self.location}.{name}"

    def _split_display(self, backup: Backup) -> tuple[str | None, str]:
        return _split(backup.backup_table) if self.caps.name != "sqlite" else (None, backup.backup_table)

    def _qualified(self, name: str) -> str:
        return self._qualified_display(self._display(name))

    def _qualified_display(self, display: str) -> str:
        schema, name = _split(display) if self.caps.name != "sqlite" else (None, display)
        return f"{self._quote(schema)}.{self._quote(name)}" if schema else self._quote(name)

    def _source(self, table: str) -> str:
        schema, name = _split(table)
        return f"{self._quote(schema)}.{self._quote(name)}" if schema else self._quote(name)

    def _quote(self, name: str) -> str:
        return self.connection.dialect.identifier_preparer.quote(name)


def _copied_columns(loss: Loss, keys: tuple[str, ...], types: dict[str, Any]) -> tuple[str, ...] | None:
    """The columns of ``loss`` a copy can hold (None: the whole table; empty: nothing to copy)."""
    if loss.columns is None or not keys:
        return None
    columns = loss.columns
    # A column the step itself adds or renames before it loses it has no values from before the step.
    later = [c for c in columns if c not in types]
    if later:
        log.warning(
            "data loss that no backup covers: the column does not exist before the step (the step "
            "creates or renames it first), so there is nothing to copy under its name",
            table=loss.table,
            columns=later,
        )
    if set(columns) & set(keys):
        # Rows are put back by primary key: values of the key itself can never be matched again.
        log.warning(
            "data loss that no backup covers: the step removes primary key column(s), by which the "
            "rows would be matched when put back",
            table=loss.table,
            columns=[c for c in columns if c in keys],
        )
    return tuple(c for c in columns if c in types and c not in keys)


def in_transaction_block(connection: Connection) -> bool:
    """Whether statements on ``connection`` run in a database transaction (not in autocommit mode).

    Asked of the connection's mode, not of ``get_isolation_level()``: inside Alembic's autocommit block
    PostgreSQL drivers still report the session's level (READ COMMITTED) while every statement commits.
    """
    return connection.in_transaction() and not autocommits(connection)


def _is_enum(kind: Any) -> bool:
    return isinstance(kind, sqltypes.Enum)


def _value(column: str, casts: dict[str, str], quote: Any) -> str:
    """The backup's value of ``column``, cast back to the table's type where it was copied as text."""
    value = f"b.{quote(column)}"
    return f"CAST({value} AS {casts[column]})" if column in casts else value


def _split(qualified: str) -> tuple[str | None, str]:
    schema, _, name = qualified.rpartition(".")
    return schema or None, name


def _backup(row: Any) -> Backup:
    return Backup(
        id=int(row["id"]),
        run_id=row["run_id"],
        revision=row["revision"],
        direction=row["direction"],
        source_table=row["source_table"],
        columns=tuple(json.loads(row["columns"])) if row["columns"] else None,
        key_columns=tuple(json.loads(row["key_columns"])),
        backup_table=row["backup_table"],
        row_count=int(row["row_count"]),
        status=row["status"],
        created_at=row["created_at"],
        restored_at=row["restored_at"],
        restored_rows=row["restored_rows"],
    )


def refuse_tampered(entries: Iterable[ArchivedRevision], key: str | None, manifest: Manifest) -> None:
    """Raise :class:`UnsafeMigration` when any archived entry about to run does not verify (see ``refusal``)."""
    for entry in entries:
        reason = entry.refusal(key, manifest)
        if reason is not None:
            raise UnsafeMigration(_refused(f"{entry.revision} ({entry.filename})", reason))


def _refused(entry: str, reason: str) -> str:
    return (
        f"Refusing to run archived revision {entry}: {reason}. Whoever can write dbmigrate's archive table must not "
        "be able to run code in the migration Job, so nothing was executed. Archive the revision again by running "
        "`dbmigrate upgrade` with the image that contains it (which signs it anew), or downgrade with that image."
    )
