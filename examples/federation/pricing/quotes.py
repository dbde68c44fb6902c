"""The pricing app: uses the tax app by name, resolved on every call."""

import superpose as sp

tax = sp.use("tax")
PRICES = {"apple": 1.0, "pear": 2.0}


@sp.function
def quote(item: str, region: str) -> dict[str, float]:
    base = PRICES[item]
    return {"base": base, "tax": round(base * tax.rate.remote(region), 4)}
