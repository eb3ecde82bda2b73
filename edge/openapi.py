"""The OpenAPI 3 description of the terminal API, served at /openapi.json.

A test checks that every route the application registers is described here.
"""

from __future__ import annotations

from typing import Any

from protocol.validate import MAX_AMOUNT, MAX_POINTS

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": schema}}}


def _ok(status: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        status: {"description": description, "content": {JSON: {"schema": schema}}},
        "4XX": {"description": "Refused; nothing changed", "content": {JSON: {"schema": _ref("Error")}}},
        "503": {"description": "The node cannot store the write", "content": {JSON: {"schema": _ref("Error")}}},
    }


IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 128},
    "description": "A retry with the same key returns the first answer; another body with it gets 409.",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "field"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"]},
                },
            }
        },
    },
    "Balance": {
        "type": "object",
        "properties": {
            "confirmed": {"type": "integer", "description": "Last balance confirmed by the cloud"},
            "pending": {"type": "integer", "description": "Sum of local ops the cloud has not confirmed"},
            "available": {"type": "integer", "description": "confirmed minus pending debits and points whose"
                          " expiry date has passed: redeemable now"},
        },
    },
    "Customer": {
        "type": "object",
        "properties": {
            "customer_id": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "phone": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
            "card_code": {"type": ["string", "null"]},
            "consent": {"type": ["object", "null"]},
            "groups": {"type": "array", "items": {"type": "string"}, "description": "e.g. staff, wholesale"},
            "opted_out": {"type": "boolean", "description": "an opted-out customer earns nothing"},
            "balance": _ref("Balance"),
            "expiring_soon": {"type": "integer", "description": "points expiring in the next 30 days"},
            "created_at": {"type": "integer", "description": "ms since epoch"},
        },
    },
    "Enroll": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "consent"],
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "phone": {"type": "string", "maxLength": 32},
            "email": {"type": "string", "maxLength": 254},
            "card_code": {"type": "string", "maxLength": 64},
            "groups": {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 64}},
            "opted_out": {"type": "boolean", "default": False},
            "consent": {
                "type": "object",
                "additionalProperties": False,
                "required": ["terms_accepted"],
                "properties": {
                    "terms_accepted": {"type": "boolean", "const": True},
                    "channels": {"type": "array", "items": {"enum": ["phone", "email"]}, "uniqueItems": True},
                    "staff": {"type": "string", "maxLength": 100},
                },
            },
        },
    },
    "ProfileUpdate": {
        "type": "object",
        "additionalProperties": False,
        "description": "Fields to change; null removes phone, email or card_code; groups replaces the groups.",
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "phone": {"type": ["string", "null"]},
            "email": {"type": ["string", "null"]},
            "card_code": {"type": ["string", "null"]},
            "groups": {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 64}},
            "opted_out": {"type": "boolean"},
        },
    },
    "Earn": {
        "description": "A whole sale (the program's rules decide), or a paid amount (the ratio only). A whole"
                       " sale without customer_id earns for the profile its card token is linked to, or is"
                       " recorded unclaimed: the answer then has customer_id null and a claim code (UnclaimedSale).",
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["sale"],
                "properties": {"customer_id": {"type": "string", "format": "uuid"}, "sale": _ref("Sale")},
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["customer_id", "sale_id", "amount", "state"],
                "properties": {
                    "customer_id": {"type": "string", "format": "uuid"},
                    "sale_id": {"type": "string", "maxLength": 64},
                    "amount": {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT, "description": "minor units"},
                    "state": {"enum": ["paid", "closed", "open"], "description": "only paid or closed sales earn"},
                },
            },
        ],
    },
    "Sale": {
        "type": "object",
        "additionalProperties": False,
        "required": ["sale_id", "lines", "state"],
        "properties": {
            "sale_id": {"type": "string", "maxLength": 64},
            "state": {"enum": ["open", "paid", "closed"]},
            "sale_discount": {"type": "integer", "minimum": 0, "description": "sale-wide; earns as if absent"},
            "lines": {"type": "array", "minItems": 1, "maxItems": 500, "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["line_id", "sku", "quantity", "unit_price"],
                "properties": {
                    "line_id": {"type": "string"}, "sku": {"type": "string"}, "category": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1}, "unit_price": {"type": "integer", "minimum": 0},
                    "line_discount": {"type": "integer", "minimum": 0}, "tax": {"type": "integer", "minimum": 0},
                },
            }},
            "tenders": {"type": "array", "maxItems": 20, "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["kind", "amount"],
                "properties": {
                    "kind": {"enum": ["cash", "card", "gift_card", "loyalty"]},
                    "amount": {"type": "integer", "minimum": 1},
                    "card_token": {"type": "string", "description": "the processor's token; a card number is refused"},
                },
            }},
        },
    },
    "Quote": {
        "type": "object",
        "properties": {
            "sale_id": {"type": "string"},
            "program_version": {"type": "integer"},
            "points": {"type": "integer"},
            "reason": {"type": ["string", "null"], "description": "why nothing is earned, if so"},
            "breakdown": {"type": "object"},
            "program_kind": {"enum": ["points", "currency"]},
            "available": {"type": ["integer", "null"]},
            "expiring_soon": {"type": ["integer", "null"], "description": "points expiring in the next 30 days"},
            "rewards": {"type": "array", "description": "points programs: rewards the customer can take now"},
            "max_loyalty_tender": {"type": ["integer", "null"], "description": "currency programs"},
        },
    },
    "Redeem": {
        "type": "object",
        "additionalProperties": False,
        "description": "Exactly one of rewards (points programs), amount (currency programs: a loyalty tender)"
                       " or points (a debit the terminal priced itself); never more than available.",
        "required": ["customer_id", "sale_id"],
        "properties": {
            "customer_id": {"type": "string", "format": "uuid"},
            "sale_id": {"type": "string", "maxLength": 64},
            "rewards": {"type": "array", "minItems": 1, "maxItems": 15, "items": {
                "type": "object", "additionalProperties": False, "required": ["reward_id", "count"],
                "properties": {"reward_id": {"type": "string"}, "count": {"type": "integer", "minimum": 1,
                                                                          "maximum": 100}},
            }},
            "amount": {"type": "integer", "minimum": 1, "maximum": MAX_POINTS,
                       "description": "loyalty minor units"},
            "points": {"type": "integer", "minimum": 1, "maximum": MAX_POINTS},
        },
    },
    "Refund": {
        "type": "object",
        "additionalProperties": False,
        "required": ["lines"],
        "properties": {
            "lines": {"type": "array", "minItems": 1, "maxItems": 500, "items": {
                "type": "object", "additionalProperties": False, "required": ["line_id", "quantity"],
                "properties": {"line_id": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
            }},
        },
    },
    "Reversal": {
        "type": "object",
        "properties": {
            "op_id": {"type": "string", "format": "uuid"},
            "sale_id": {"type": "string"},
            "customer_id": {"type": "string"},
            "reversed_points": {"type": "integer", "description": "earned points taken back"},
            "returned_points": {"type": "integer", "description": "redeemed points given back"},
            "shortfall": {"type": "integer", "description": "clamp: points that could not be taken back;"
                          " negative: points taken below zero"},
            "lines": {"type": "array", "description": "refunds: the lines returned"},
            "balance": _ref("Balance"),
        },
    },
    "Adjust": {
        "type": "object",
        "additionalProperties": False,
        "required": ["customer_id", "points", "reason", "actor"],
        "properties": {
            "customer_id": {"type": "string", "format": "uuid"},
            "points": {"type": "integer", "minimum": -MAX_POINTS, "maximum": MAX_POINTS},
            "reason": {"type": "string", "maxLength": 500},
            "actor": {"type": "string", "maxLength": 100},
        },
    },
    "OpAnswer": {
        "type": "object",
        "properties": {
            "op_id": {"type": "string", "format": "uuid"},
            "sale_id": {"type": "string"},
            "customer_id": {"type": "string"},
            "points": {"type": "integer"},
            "balance": _ref("Balance"),
        },
    },
    "UnclaimedSale": {
        "type": "object",
        "description": "A sale recorded with no profile: print claim.code and a QR code of claim.qr on the receipt",
        "properties": {
            "op_id": {"type": "string", "format": "uuid"},
            "sale_id": {"type": "string"},
            "customer_id": {"type": "null"},
            "points": {"type": "integer", "description": "what a claim earns a customer in no group"},
            "claim": {"type": "object", "properties": {
                "code": {"type": "string", "description": "16 symbols of Crockford base32 (80 bits), grouped by 4"},
                "qr": {"type": "string", "description": "the portal's claim page with the code"},
                "expires_at": {"type": "integer", "description": "ms since the epoch"},
            }},
        },
    },
    "ClaimRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["code", "customer_id"],
        "properties": {"code": {"type": "string", "maxLength": 64},
                       "customer_id": {"type": "string", "format": "uuid"}},
    },
    "Conflict": {
        "type": "object",
        "properties": {
            "op_id": {"type": "string"},
            "kind": {"type": "string"},
            "customer_id": {"type": "string"},
            "terminal_id": {"type": "string"},
            "points": {"type": "integer"},
            "code": {"type": "string"},
        },
    },
}


def document() -> dict[str, Any]:
    customer_id = {"name": "customer_id", "in": "path", "required": True, "schema": {"type": "string"}}
    sale_id = {"name": "sale_id", "in": "path", "required": True, "schema": {"type": "string"}}
    search = [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
        for name, text in (
            ("phone", "full phone number, any common format"),
            ("email", "email address"),
            ("code", "loyalty card code"),
            ("name", "name prefix, case- and accent-insensitive"),
            ("card_token", "a processor's card token: the profile it is linked to (a card number is refused)"),
        )
    ] + [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 50}}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Loyalty Edge terminal API",
            "version": "1",
            "description": "Served by the store's edge node; works with or without the internet.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"terminalToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"terminalToken": []}],
        "paths": {
            "/healthz": {"get": {"summary": "Health verdict for monitors", "security": [],
                                 "responses": {"200": {"description": "verdict and reasons"}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI 3 document"}}}},
            "/status": {"get": {"summary": "Status page for technicians (localhost only, HTML)", "security": [],
                                "responses": {"200": {"description": "HTML"}, "403": {"description": "not local"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (localhost, or the technician password)",
                                 "security": [], "responses": {"200": {"description": "text exposition format"},
                                                               "403": {"description": "not local"}}}},
            "/v1/pair": {"post": {
                "summary": "Trade a pairing code from `loyalty-edge pair` for a terminal token",
                "security": [],
                "requestBody": _body({"type": "object", "required": ["code", "name"], "additionalProperties": False,
                                      "properties": {"code": {"type": "string"}, "name": {"type": "string"}}}),
                "responses": _ok("201", {"type": "object"}, "terminal_id and token (shown once)"),
            }},
            "/v1/customers": {
                "get": {"summary": "Find customers (exactly one criterion)", "parameters": search,
                        "responses": _ok("200", {"type": "object", "properties": {
                            "customers": {"type": "array", "items": _ref("Customer")}}}, "ranked, bounded")},
                "post": {"summary": "Enroll a customer with recorded consent", "parameters": [IDEMPOTENCY],
                         "requestBody": _body(_ref("Enroll")), "responses": _ok("201", _ref("Customer"), "enrolled")},
            },
            "/v1/customers/{customer_id}": {
                "get": {"summary": "A profile with its balance", "parameters": [customer_id],
                        "responses": _ok("200", _ref("Customer"), "profile")},
                "patch": {"summary": "Update a profile", "parameters": [customer_id, IDEMPOTENCY],
                          "requestBody": _body(_ref("ProfileUpdate")),
                          "responses": _ok("200", _ref("Customer"), "updated")},
            },
            "/v1/earns": {"post": {"summary": "Record the earn of a paid sale", "parameters": [IDEMPOTENCY],
                                   "requestBody": _body(_ref("Earn")),
                                   "responses": _ok("201", {"oneOf": [_ref("OpAnswer"), _ref("UnclaimedSale")]},
                                                    "queued durably")}},
            "/v1/claims": {"post": {
                "summary": "Claim a receipt's points for a customer with its code (once, within the window);"
                           " 404 unknown_code, 409 already_claimed, 410 claim_expired, 429 too_many_claims",
                "parameters": [IDEMPOTENCY], "requestBody": _body(_ref("ClaimRequest")),
                "responses": _ok("201", _ref("OpAnswer"), "queued durably")}},
            "/v1/quote": {"post": {"summary": "What a sale would earn and what may be spent on it; stores nothing",
                                   "requestBody": _body({"type": "object", "additionalProperties": False,
                                                         "required": ["sale"], "properties": {
                                                             "sale": _ref("Sale"),
                                                             "customer_id": {"type": "string", "format": "uuid"}}}),
                                   "responses": _ok("200", _ref("Quote"), "the quote")}},
            "/v1/redemptions": {"post": {"summary": "Redeem rewards or a loyalty tender (up to the available balance)",
                                         "parameters": [IDEMPOTENCY], "requestBody": _body(_ref("Redeem")),
                                         "responses": _ok("201", _ref("OpAnswer"), "queued durably")}},
            "/v1/sales/{sale_id}/void": {"post": {
                "summary": "Void a sale: take back what it earned, give back what it redeemed (less refunds)",
                "parameters": [sale_id, IDEMPOTENCY],
                "responses": _ok("201", _ref("Reversal"), "queued durably"),
            }},
            "/v1/sales/{sale_id}/refunds": {"post": {
                "summary": "Refund lines of a sale: take back what they earned, give back their redeemed share",
                "parameters": [sale_id, IDEMPOTENCY], "requestBody": _body(_ref("Refund")),
                "responses": _ok("201", _ref("Reversal"), "queued durably; an unknown or fully refunded line"
                                 " is a 4xx naming lines[i]"),
            }},
            "/v1/adjustments": {"post": {"summary": "Manual adjustment with a reason and an actor",
                                         "parameters": [IDEMPOTENCY], "requestBody": _body(_ref("Adjust")),
                                         "responses": _ok("201", _ref("OpAnswer"), "queued durably")}},
            "/v1/conflicts": {"get": {"summary": "Ops the cloud refused (e.g. redemptions over the balance)",
                                      "responses": _ok("200", {"type": "object", "properties": {
                                          "conflicts": {"type": "array", "items": _ref("Conflict")}}}, "list")}},
        },
    }
