"""Templates substitute saved and runbook values; dotted paths read JSON answers."""

from __future__ import annotations

import pytest

from drorch.validate.template import (
    PathError,
    TemplateError,
    json_get,
    json_has,
    render,
    render_text,
    sql_params,
    template_names,
)


def test_templates_in_strings_lists_and_dicts_are_substituted() -> None:
    """Nested string values are rendered; dict keys and non-strings are kept."""
    body = {"user": "{user}", "items": [{"sku": "{sku}", "qty": 2}], "{user}": "k"}
    out = render(body, {"user": "ann", "sku": "A-1"})
    assert out == {"user": "ann", "items": [{"sku": "A-1", "qty": 2}], "{user}": "k"}


def test_a_whole_string_template_keeps_the_value_type() -> None:
    """'{order_id}' alone becomes the integer; inside text it becomes its text."""
    assert render("{order_id}", {"order_id": 42}) == 42
    assert render("order-{order_id}", {"order_id": 42}) == "order-42"
    assert render_text("{order_id}", {"order_id": 42}) == "42"


def test_double_braces_are_literal() -> None:
    """'{{' and '}}' are braces, not templates."""
    assert render_text("{{not}} {x}", {"x": 1}) == "{not} 1"
    assert template_names("{{not}} {x}") == {"x"}


def test_an_unknown_variable_is_an_error() -> None:
    """A template naming nothing known raises, naming the variable."""
    with pytest.raises(TemplateError, match=r"\{token\}"):
        render_text("Bearer {token}", {"user": "ann"})


def test_sql_params_take_exactly_the_named_parameters() -> None:
    """Only %(name)s parameters of the query are passed, and a missing one raises."""
    sql = "select 1 from orders where id = %(order_id)s"
    assert sql_params(sql, {"order_id": 7, "token": "t"}) == {"order_id": 7}
    with pytest.raises(TemplateError):
        sql_params(sql, {})


def test_json_paths_walk_objects_and_lists() -> None:
    """'data.id' and 'items.0.sku' find their values; a missing part raises PathError."""
    doc = {"data": {"id": 5, "flag": False}, "items": [{"sku": "A"}]}
    assert json_get(doc, "data.id") == 5
    assert json_get(doc, "items.0.sku") == "A"
    assert json_get(doc, "data.flag") is False
    assert json_has(doc, "data.flag")
    with pytest.raises(PathError, match="'data.missing'"):
        json_get(doc, "data.missing")
    with pytest.raises(PathError):
        json_get(doc, "items.3")
    assert not json_has(None, "token")
