"""The tax app: the bottom of a three-app chain (shop → pricing → tax)."""

import superpose as sp

RATES = {"eu": 0.20, "us": 0.07}


@sp.function
def rate(region: str) -> float:
    return RATES[region]
