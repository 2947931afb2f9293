"""The reconcile section of a runbook is validated once, with errors a human can act on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from drorch.reconcile.config import SENSITIVE_EVERYWHERE, ReconcileSpec, ReconcileTable


def test_defaults_and_table_lookup() -> None:
    """Tables default to manual; a manual table needs a conflict file; names are schema.table."""
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.orders", policy="old-wins")])
    assert spec.method == "auto" and spec.table("public.orders").table_name == "orders"
    spec2 = ReconcileSpec(tables=[ReconcileTable(name="app.users", sensitive_columns=["pw"])],
                          conflict_file="/tmp/c.json")
    assert spec2.tables[0].policy == "manual" and spec2.tables[0].schema_name == "app"


@pytest.mark.parametrize("bad", [
    {"tables": [{"name": "orders", "policy": "old-wins"}]},
    {"tables": [{"name": "public.t", "policy": "newest"}]},
    {"tables": [{"name": "public.t", "policy": "old-wins", "colour": "red"}]},
    {"tables": [{"name": "public.t", "policy": "old-wins"}] * 2},
    {"tables": [{"name": "public.t", "policy": "old-wins"}], "method": "guess"},
    {"tables": [], "default_policy": "newest"},
])
def test_invalid_specs_are_refused(bad: dict) -> None:
    """Missing schema, unknown policy or key, duplicates, bad method or default policy."""
    with pytest.raises(ValidationError):
        ReconcileSpec.model_validate(bad)


def test_tables_not_listed_take_the_default_policy() -> None:
    """Every table of the database is reconciled: one the runbook does not list gets the
    default policy (manual unless set), a listed one keeps its own; no file is required
    here (the engine defaults it beside its journal)."""
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.orders", policy="old-wins")])
    assert spec.default_policy == "manual" and spec.conflict_file is None
    assert spec.listed("public.orders") and not spec.listed("public.ledger")
    assert spec.table("public.orders").policy == "old-wins"
    unlisted = spec.table("Weird Schema.ledger")  # the database's names, not the pattern's
    assert (unlisted.name, unlisted.policy) == ("Weird Schema.ledger", "manual")
    assert "password_hash" in unlisted.sensitive_columns
    everything = ReconcileSpec.model_validate({"default_policy": "new-wins"})
    assert everything.tables == [] and everything.table("public.x").policy == "new-wins"


def test_common_secret_columns_are_masked_in_every_table_unless_turned_off() -> None:
    """A table nobody listed may hold a password hash or a card number: the default list
    masks such columns everywhere, on top of a listed table's own; ``[]`` turns it off."""
    spec = ReconcileSpec(tables=[ReconcileTable(name="app.users", sensitive_columns=["pin"])])
    assert spec.table("app.users").sensitive_columns == ["pin", *SENSITIVE_EVERYWHERE]
    assert spec.table("app.cards").sensitive_columns == list(SENSITIVE_EVERYWHERE)
    own = ReconcileSpec.model_validate({"tables": [{"name": "app.users",
                                                    "sensitive_columns": ["pin"]}],
                                        "sensitive_everywhere": ["tax_id"]})
    assert own.table("app.users").sensitive_columns == ["pin", "tax_id"]
    assert own.table("app.other").sensitive_columns == ["tax_id"]
    off = ReconcileSpec.model_validate({"sensitive_everywhere": []})
    assert off.table("app.other").sensitive_columns == []


def test_a_sensitive_name_masks_a_column_spelled_with_other_case() -> None:
    """`"Password"` is masked by the default `password`; names match whole, not in part
    (`pin` listed does not mask `shipping`)."""
    from drorch.reconcile.config import masked_columns

    assert masked_columns(["password", "pin"], ["id", "Password", "shipping", "PIN"]) == [
        "password", "pin", "Password", "PIN"]
