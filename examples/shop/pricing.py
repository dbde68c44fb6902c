"""Pricing rules. Imports checkout (which imports this module) for its tax rate."""

from catalog import PRICES

import superpose as sp

BULK_QTY = 10
BULK_DISCOUNT = 0.1


def unit_price(sku: str) -> float:
    if sku not in PRICES:
        raise KeyError(f"unknown sku {sku!r}; known: {', '.join(sorted(PRICES))}")
    return PRICES[sku]


def line_total(sku: str, qty: int) -> float:
    price = unit_price(sku) * qty
    if qty >= BULK_QTY:
        price *= 1 - BULK_DISCOUNT
    return round(price, 2)


@sp.function
def quote(sku: str, qty: int) -> float:
    """Price of ``qty`` units of ``sku``, tax included."""
    from checkout import TAX  # checkout imports this module: import lazily

    return round(line_total(sku, qty) * (1 + TAX), 2)
