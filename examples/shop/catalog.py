"""Plain data the shop's modules share (not a function, never deployed on its own)."""

PRICES: dict[str, float] = {"apple": 0.5, "pear": 0.75, "coffee": 7.25, "tea": 4.0}
