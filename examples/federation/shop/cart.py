"""The shop app: uses pricing, which uses tax. Deploying a new tax (or pricing)
changes what checkout returns, with no redeploy of shop; `superpose lock shop
pricing@VERSION` freezes the link when that is not wanted."""

import superpose as sp

pricing = sp.use("pricing")


@sp.function
def checkout(items: list[str], region: str = "eu") -> dict[str, float]:
    quotes = [pricing.quote.remote(item, region) for item in items]
    total = sum(q["base"] + q["tax"] for q in quotes)
    return {"items": len(items), "total": round(total, 4)}
