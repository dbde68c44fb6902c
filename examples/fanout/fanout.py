"""Functions that call functions: fan-out with spawn + gather, and recursion."""

import superpose as sp


@sp.function
def square(x: int) -> int:
    return x * x


@sp.function
def total(n: int) -> int:
    """Sum of squares below n, each square computed as its own invocation."""
    return sum(sp.gather(*(square.spawn(i) for i in range(n))))


@sp.function
def mergesort(xs: list[float], depth: int = 3) -> list[float]:
    """Sort by splitting into two invocations until ``depth`` runs out."""
    if depth <= 0 or len(xs) <= 1:
        return sorted(xs)
    mid = len(xs) // 2
    left, right = sp.gather(
        mergesort.spawn(xs[:mid], depth - 1), mergesort.spawn(xs[mid:], depth - 1)
    )
    merged: list[float] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            merged.append(left[i])
            i += 1
        else:
            merged.append(right[j])
            j += 1
    return merged + left[i:] + right[j:]
