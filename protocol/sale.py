"""A sale as the terminal sends it: lines, a sale-wide discount, tenders, a state.

Money is integer minor units. A line's ``line_discount`` is money off that
line's total; ``sale_discount`` is the sale-wide discount button, which (as in
Lightspeed) changes no product's loyalty amount. A card tender may carry the
processor's card token; anything that looks like a card number is refused so
that no PAN can ever be stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .errors import LocalProtocolError
from .validate import MAX_AMOUNT, check_range, check_text, check_types, fields_of

MAX_LINES = 500
MAX_TENDERS = 20
MAX_QUANTITY = 100_000


class TenderKind(StrEnum):
    CASH = "cash"
    CARD = "card"
    GIFT_CARD = "gift_card"
    LOYALTY = "loyalty"


class SaleState(StrEnum):
    OPEN = "open"
    PAID = "paid"
    CLOSED = "closed"


def looks_like_card_number(value: str) -> bool:
    """13-19 digits (spaces and dashes ignored) passing the Luhn check."""
    digits = value.replace(" ", "").replace("-", "")
    if not digits.isdigit() or not 13 <= len(digits) <= 19:
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class SaleLine:
    line_id: str
    sku: str
    category: str | None
    quantity: int
    unit_price: int
    line_discount: int
    tax: int

    def __post_init__(self) -> None:
        check_types(self)
        check_text("line_id", self.line_id, 64, required=True)
        check_text("sku", self.sku, 64, required=True)
        check_text("category", self.category, 64)
        check_range("quantity", self.quantity, 1, MAX_QUANTITY)
        check_range("unit_price", self.unit_price, 0, MAX_AMOUNT)
        check_range("line_discount", self.line_discount, 0, self.gross)
        check_range("tax", self.tax, 0, MAX_AMOUNT)

    @property
    def gross(self) -> int:
        return self.quantity * self.unit_price

    @property
    def net(self) -> int:
        """The line's price after its own discount, before tax."""
        return self.gross - self.line_discount


@dataclass(frozen=True, slots=True)
class Tender:
    kind: TenderKind
    amount: int
    card_token: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.kind, str) and not isinstance(self.kind, TenderKind):
            try:
                object.__setattr__(self, "kind", TenderKind(self.kind))
            except ValueError as exc:
                raise LocalProtocolError(
                    f"tender kind must be one of {[k.value for k in TenderKind]}", code="invalid_value", field="kind"
                ) from exc
        check_types(self)
        check_range("amount", self.amount, 1, MAX_AMOUNT)
        check_text("card_token", self.card_token, 128)
        if self.card_token is not None:
            if self.kind is not TenderKind.CARD:
                raise LocalProtocolError("only a card tender has a card token", code="invalid_value",
                                         field="card_token")
            if looks_like_card_number(self.card_token):
                # Never echo the value: it may be a real card number.
                raise LocalProtocolError("send the processor's card token, never a card number",
                                         code="card_number_refused", field="card_token")


@dataclass(frozen=True, slots=True)
class Sale:
    sale_id: str
    lines: tuple[SaleLine, ...]
    sale_discount: int
    tenders: tuple[Tender, ...]
    state: SaleState

    def __post_init__(self) -> None:
        if isinstance(self.state, str) and not isinstance(self.state, SaleState):
            try:
                object.__setattr__(self, "state", SaleState(self.state))
            except ValueError as exc:
                raise LocalProtocolError("state must be open, paid or closed", code="invalid_value",
                                         field="state") from exc
        check_types(self)
        check_text("sale_id", self.sale_id, 64, required=True)
        if not 1 <= len(self.lines) <= MAX_LINES:
            raise LocalProtocolError(f"a sale has 1 to {MAX_LINES} lines", code="out_of_range", field="lines")
        if len({line.line_id for line in self.lines}) != len(self.lines):
            raise LocalProtocolError("line ids repeat", code="duplicate_line", field="lines")
        if len(self.tenders) > MAX_TENDERS:
            raise LocalProtocolError(f"at most {MAX_TENDERS} tenders", code="out_of_range", field="tenders")
        check_range("sale_discount", self.sale_discount, 0, self.subtotal)
        check_range("total", self.total, 0, MAX_AMOUNT)

    @property
    def subtotal(self) -> int:
        """Lines after their own discounts, before the sale discount and tax."""
        return sum(line.net for line in self.lines)

    @property
    def tax(self) -> int:
        return sum(line.tax for line in self.lines)

    @property
    def total(self) -> int:
        return self.subtotal - self.sale_discount + self.tax

    @property
    def paid(self) -> int:
        return sum(tender.amount for tender in self.tenders)

    @property
    def loyalty_paid(self) -> int:
        return sum(t.amount for t in self.tenders if t.kind is TenderKind.LOYALTY)

    @property
    def fully_paid(self) -> bool:
        return self.state is not SaleState.OPEN and self.paid >= self.total

    def line(self, line_id: str) -> SaleLine:
        for line in self.lines:
            if line.line_id == line_id:
                return line
        raise LocalProtocolError(f"no line {line_id!r} in this sale", code="unknown_line", field="line_id")

    def to_wire(self) -> dict[str, Any]:
        """Plain maps, lists, strings and integers: the sale as an earn op carries it."""
        return {
            "sale_id": self.sale_id,
            "lines": [
                {"line_id": ln.line_id, "sku": ln.sku, "category": ln.category, "quantity": ln.quantity,
                 "unit_price": ln.unit_price, "line_discount": ln.line_discount, "tax": ln.tax}
                for ln in self.lines
            ],
            "sale_discount": self.sale_discount,
            "tenders": [{"kind": t.kind.value, "amount": t.amount, "card_token": t.card_token} for t in self.tenders],
            "state": self.state.value,
        }


def _items(value: object, name: str) -> tuple[object, ...]:
    if not isinstance(value, list | tuple):
        raise LocalProtocolError(f"{name} must be an array", code="bad_shape", field=name)
    return tuple(value)


def _nested_error(exc: LocalProtocolError, where: str) -> LocalProtocolError:
    field = where if exc.field in (None, where) else f"{where}.{exc.field}"
    return LocalProtocolError(exc.message, code=exc.code, field=field)


def sale_from_wire(obj: object) -> Sale:
    """A sale from its decoded wire map (every key present, nothing else);
    LocalProtocolError naming the field, e.g. ``lines[2].quantity``."""
    kwargs = fields_of(Sale, obj, "sale")
    lines = []
    for index, raw in enumerate(_items(kwargs["lines"], "lines")):
        try:
            lines.append(SaleLine(**fields_of(SaleLine, raw, "line")))
        except LocalProtocolError as exc:
            raise _nested_error(exc, f"lines[{index}]") from exc
    tenders = []
    for index, raw in enumerate(_items(kwargs["tenders"], "tenders")):
        try:
            tenders.append(Tender(**fields_of(Tender, raw, "tender")))
        except LocalProtocolError as exc:
            raise _nested_error(exc, f"tenders[{index}]") from exc
    kwargs["lines"], kwargs["tenders"] = tuple(lines), tuple(tenders)
    return Sale(**kwargs)


def returned_after(sale: Sale, before: Mapping[str, int], lines: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """All quantities returned once ``lines`` ((line_id, quantity), ...) are
    returned on top of ``before``. An unknown line, a line already returned
    in full, or more than is left of it is refused naming ``lines[i]...``:
    nothing is ever returned twice."""
    merged = dict(before)
    seen: set[str] = set()
    for index, (line_id, quantity) in enumerate(lines):
        where = f"lines[{index}]"
        if line_id in seen:
            raise LocalProtocolError("a line is named twice", code="duplicate_line", field=f"{where}.line_id")
        seen.add(line_id)
        try:
            line = sale.line(line_id)
        except LocalProtocolError as exc:
            raise LocalProtocolError(exc.message, code=exc.code, field=f"{where}.line_id") from exc
        left = line.quantity - merged.get(line_id, 0)
        if left <= 0:
            raise LocalProtocolError(f"line {line_id!r} was already refunded in full", code="already_refunded",
                                     field=f"{where}.line_id")
        if not 1 <= quantity <= left:
            raise LocalProtocolError(f"line {line_id!r} has {left} left to refund, not {quantity}",
                                     code="exceeds_sold", field=f"{where}.quantity")
        merged[line_id] = merged.get(line_id, 0) + quantity
    return merged
