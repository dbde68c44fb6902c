"""Checkout. Imports pricing, which imports this module back for TAX."""

import pricing

import superpose as sp

TAX = 0.2


@sp.function
def checkout(items: list[dict]) -> dict:
    """Total an order: ``[{"sku": "apple", "qty": 3}, ...]``."""
    lines = [
        {
            "sku": item["sku"],
            "qty": item["qty"],
            "amount": pricing.line_total(item["sku"], item["qty"]),
        }
        for item in items
    ]
    subtotal = round(sum(line["amount"] for line in lines), 2)
    tax = round(subtotal * TAX, 2)
    return {"lines": lines, "subtotal": subtotal, "tax": tax, "total": round(subtotal + tax, 2)}
