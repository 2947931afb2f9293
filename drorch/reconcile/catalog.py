"""What the catalog says about the configured tables on one node (read-only).

Per table: primary key, the leaf relations that hold its rows (a partitioned
table's partitions, or the table itself) with their on-disk file names as the
WAL names them (``spcoid/dboid/filenode``) and their column layout (needed to
decode logged keys), columns that cannot be written (generated, identity
ALWAYS) and the sequences that feed it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from psycopg import sql

from drorch.reconcile._db import Conn
from drorch.reconcile.tupledecode import Attr


@dataclass(frozen=True)
class RelMeta:
    """One leaf relation: its qualified name (SQL-quoted) and column layout."""

    qualified: str
    attrs: tuple[Attr, ...]


@dataclass(frozen=True)
class TableMeta:
    name: str
    oid: int
    pk: list[str]
    columns: list[str]
    rels: dict[str, RelMeta]
    """``spc/db/filenode`` -> leaf relation"""
    pk_types: dict[str, str] = field(default_factory=dict)
    generated: frozenset[str] = frozenset()
    """Generated columns: never written."""
    identity_always: frozenset[str] = frozenset()
    """GENERATED ALWAYS AS IDENTITY: inserted with OVERRIDING SYSTEM VALUE, never updated."""
    sequences: tuple[tuple[str, str], ...] = ()
    """(sequence, column) pairs: serial and identity columns."""
    hidden: tuple[str, ...] = ()
    """Columns this node has that the comparison leaves out (added on this node only,
    after the split): never compared, never written, so they keep their default."""
    references: tuple[tuple[str, str], ...] = ()
    """(column, parent table) for each single-column foreign key: where a re-keyed
    parent's new key must be carried."""

    referenced_by: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()
    """(child table, its columns, this table's columns) of each foreign key naming this
    table: a row still named by a child on the new primary must not be deleted."""

    def without(self, columns: list[str] | tuple[str, ...]) -> TableMeta:
        """This table compared and written on every column but ``columns``."""
        if not columns:
            return self
        return replace(self, columns=[c for c in self.columns if c not in columns],
                       hidden=tuple(columns))

    @property
    def int_key(self) -> bool:
        """The primary key is one integer column (its canonical keys are ``[123]``)."""
        return len(self.pk) == 1 and self.pk_types.get(self.pk[0]) in ("int2", "int4", "int8")

    @property
    def key_sequence(self) -> str | None:
        """The sequence feeding a single-column primary key (None: not re-keyable)."""
        if not self.int_key:
            return None
        return next((seq for seq, col in self.sequences if col == self.pk[0]), None)

    @property
    def ident(self) -> sql.Composable:
        schema, table = self.name.split(".", 1)
        return sql.Identifier(schema, table)


@dataclass(frozen=True)
class DbInfo:
    oid: int
    name: str
    system_identifier: int


def db_info(conn: Conn) -> DbInfo:
    row = conn.execute(
        "SELECT d.oid, d.datname, (SELECT system_identifier FROM pg_control_system()) "
        "FROM pg_database d WHERE d.datname = current_database()").fetchone()
    assert row is not None
    return DbInfo(int(row[0]), str(row[1]), int(row[2]))


def _attrs(conn: Conn, relid: int) -> tuple[Attr, ...]:
    rows = conn.execute(
        "SELECT a.attnum, a.attname, coalesce(t.typname, ''), a.attlen, a.attalign, "
        "a.attisdropped FROM pg_attribute a LEFT JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s AND a.attnum > 0 ORDER BY a.attnum", (relid,)).fetchall()
    return tuple(Attr(int(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]), bool(r[5]))
                 for r in rows)


def load_table(conn: Conn, name: str) -> TableMeta | None:
    """The table's metadata, or None when it does not exist on this node."""
    schema, table = name.split(".", 1)
    row = conn.execute(
        "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table)).fetchone()
    if row is None:
        return None
    oid = int(row[0])
    pk = [r[0] for r in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary "
        "ORDER BY array_position(i.indkey::int2[], a.attnum)", (oid,))]
    cols = conn.execute(
        "SELECT a.attname, t.typname, a.attgenerated <> '', a.attidentity = 'a' "
        "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (oid,)).fetchall()
    rels: dict[str, RelMeta] = {}
    for relid, spc, dboid, filenode, qualified in conn.execute(
            "SELECT c.oid, CASE c.reltablespace WHEN 0 THEN d.dattablespace "
            "ELSE c.reltablespace END, d.oid, pg_relation_filenode(c.oid), "
            "format('%%I.%%I', n.nspname, c.relname) "
            "FROM (SELECT relid FROM pg_partition_tree(%s) WHERE isleaf UNION "
            "SELECT oid FROM pg_class WHERE oid = %s AND relkind = 'r') AS p "
            "JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_database d ON d.datname = current_database()",
            (oid, oid)).fetchall():
        rels[f"{spc}/{dboid}/{filenode}"] = RelMeta(str(qualified), _attrs(conn, int(relid)))
    seqs = [(str(r[0]), str(r[1])) for r in conn.execute(_SEQUENCES, (oid,))]
    types = {str(r[0]): str(r[1]) for r in cols}
    # keys the table declares, and those declared on one of its partitions only (binding
    # that partition's rows; a key of the table is copied to each partition: conparentid)
    refs = conn.execute(
        "SELECT DISTINCT a.attname, format('%%s.%%s', n.nspname, p.relname) "
        "FROM pg_constraint k "
        "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = k.conkey[1] "
        "JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace n ON n.oid = p.relnamespace "
        "WHERE (k.conrelid = %s OR (k.conparentid = 0 "
        "AND k.conrelid IN (SELECT relid FROM pg_partition_tree(%s)))) "
        "AND k.contype = 'f' AND cardinality(k.conkey) = 1 "
        # only a key naming the parent's one-column primary key: that is what re-keying
        # changes (a reference to another unique column keeps its value)
        "AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = k.confrelid "
        "AND i.indisprimary AND i.indnkeyatts = 1 AND i.indkey[0] = k.confkey[1]) "
        "ORDER BY 1, 2", (oid, oid)).fetchall()
    # keys naming the table or any of its partitions (a child may name one partition)
    children = conn.execute(
        "SELECT DISTINCT format('%%s.%%s', n.nspname, c.relname), "
        "array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, i) "
        "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i), "
        "array(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, i) "
        "JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i) "
        "FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE k.contype = 'f' AND (k.confrelid = %s OR k.confrelid IN "
        "(SELECT relid FROM pg_partition_tree(%s))) ORDER BY 1, 2, 3", (oid, oid)).fetchall()
    return TableMeta(name, oid, pk, [str(r[0]) for r in cols], rels, {c: types[c] for c in pk},
                     frozenset(str(r[0]) for r in cols if r[2]),
                     frozenset(str(r[0]) for r in cols if r[3]), tuple(seqs),
                     references=tuple((str(c), str(t)) for c, t in refs),
                     referenced_by=tuple((str(t), tuple(cc), tuple(pc))
                                         for t, cc, pc in children))


_SEQUENCES = """
SELECT DISTINCT format('%%I.%%I', n.nspname, s.relname), a.attname
FROM pg_attribute a
JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND (
     (d.classid = 'pg_attrdef'::regclass AND d.objid = (SELECT ad.oid FROM pg_attrdef ad
      WHERE ad.adrelid = a.attrelid AND ad.adnum = a.attnum))
  OR (d.classid = 'pg_class'::regclass AND d.refobjid = a.attrelid
      AND d.refobjsubid = a.attnum AND d.deptype IN ('a', 'i')))
JOIN pg_class s ON s.relkind = 'S'
 AND s.oid = CASE WHEN d.classid = 'pg_attrdef'::regclass THEN d.refobjid ELSE d.objid END
JOIN pg_namespace n ON n.oid = s.relnamespace
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY 2, 1
"""
"""(sequence, column) for every sequence that feeds a column: one its default calls
(``nextval('t1_id_seq')``, also a sequence another table owns, and a partition's default
copied from its parent), one the column owns (serial) or its identity
(``pg_depend``: "System Catalogs", PostgreSQL 15 docs, 53.18). ``pg_get_serial_sequence``
alone misses the first two, and their sequences were never moved past the old
primary's keys."""


SKIPPED_SCHEMAS = ("pg_catalog", "information_schema", "drorch_reconcile")
"""Schemas never reconciled: the system's, and drorch's capture (it exists only on the
new primary). drorch's own ``drorch.canary`` is an ordinary table here."""


def user_tables(conn: Conn) -> set[str]:
    """Every ordinary or partitioned table of the database as ``schema.table`` (partitions
    under their parent; tables an extension owns left out: the extension makes them)."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_toast%%' "
        "AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND NOT EXISTS (SELECT 1 FROM pg_depend d "
        "WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')",
        (list(SKIPPED_SCHEMAS),)).fetchall()
    return {f"{r[0]}.{r[1]}" for r in rows}


def partition_root(conn: Conn, name: str) -> str | None:
    """The top partitioned table ``name`` is a partition of, or None (not a partition, or
    not on this node)."""
    row = conn.execute(
        "SELECT format('%%s.%%s', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = pg_partition_root(to_regclass(%s)) "
        "AND c.oid <> to_regclass(%s)", (_quoted(name), _quoted(name))).fetchone()
    return str(row[0]) if row else None


def partition_leaves(conn: Conn, name: str) -> set[str]:
    """The leaf partitions of the partitioned table ``name`` (empty when absent)."""
    rows = conn.execute(
        "SELECT format('%%s.%%s', n.nspname, c.relname) FROM pg_partition_tree(to_regclass(%s)) "
        "p JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE p.isleaf", (_quoted(name),)).fetchall()
    return {str(r[0]) for r in rows}


def _quoted(name: str) -> str:
    schema, table = name.split(".", 1)
    return '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'
