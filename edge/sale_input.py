"""A sale from terminal JSON into the protocol's validated Sale."""

from __future__ import annotations

from typing import Any

from protocol import ProtocolError
from protocol.sale import MAX_LINES, MAX_TENDERS, Sale, SaleLine, SaleState, Tender, TenderKind
from protocol.validate import MAX_AMOUNT

from .errors import InvalidInput
from .inputs import check_fields, get_int, get_str

LINE_FIELDS = {"line_id", "sku", "quantity", "unit_price"}
LINE_OPTIONAL = {"category", "line_discount", "tax"}
_TENDER_KINDS = frozenset(k.value for k in TenderKind)
_SALE_STATES = frozenset(s.value for s in SaleState)


def _list(body: dict[str, Any], name: str, limit: int) -> list[dict[str, Any]]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise InvalidInput(f"{name} must be a list of objects", code="invalid_type", field=name)
    if len(value) > limit:
        raise InvalidInput(f"at most {limit} {name}", code="out_of_range", field=name)
    return value


def parse_sale(body: dict[str, Any]) -> Sale:
    check_fields(body, {"sale_id", "lines", "state"}, {"sale_discount", "tenders"})
    lines = []
    for index, raw in enumerate(_list(body, "lines", MAX_LINES)):
        where = f"lines[{index}]"
        try:
            check_fields(raw, LINE_FIELDS, LINE_OPTIONAL)
            lines.append(SaleLine(
                line_id=str(get_str(raw, "line_id", 64)),
                sku=str(get_str(raw, "sku", 64)),
                category=get_str(raw, "category", 64, required=False),
                quantity=get_int(raw, "quantity", 1, 100_000),
                unit_price=get_int(raw, "unit_price", 0, MAX_AMOUNT),
                line_discount=get_int(raw, "line_discount", 0, MAX_AMOUNT) if "line_discount" in raw else 0,
                tax=get_int(raw, "tax", 0, MAX_AMOUNT) if "tax" in raw else 0,
            ))
        except (InvalidInput, ProtocolError) as exc:
            raise InvalidInput(exc.message, code=exc.code, field=f"{where}.{exc.field}") from exc
    tenders = []
    for index, raw in enumerate(_list(body, "tenders", MAX_TENDERS)):
        try:
            check_fields(raw, {"kind", "amount"}, {"card_token"})
            kind = get_str(raw, "kind", 16)
            if kind not in _TENDER_KINDS:
                raise InvalidInput("kind must be cash, card, gift_card or loyalty", code="invalid_value",
                                   field="kind")
            tenders.append(Tender(TenderKind(kind), get_int(raw, "amount", 1, MAX_AMOUNT),
                                  get_str(raw, "card_token", 128, required=False)))
        except (InvalidInput, ProtocolError) as exc:
            raise InvalidInput(exc.message, code=exc.code, field=f"tenders[{index}].{exc.field}") from exc
    state = get_str(body, "state", 16)
    if state not in _SALE_STATES:
        raise InvalidInput("state must be open, paid or closed", code="invalid_value", field="state")
    return Sale(
        sale_id=str(get_str(body, "sale_id", 64)),
        lines=tuple(lines),
        sale_discount=get_int(body, "sale_discount", 0, MAX_AMOUNT) if "sale_discount" in body else 0,
        tenders=tuple(tenders),
        state=SaleState(state),
    )
