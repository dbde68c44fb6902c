import superpose as sp


@sp.function(retries=2, timeout=30)
def square(x: int) -> int:
    return x * x


@sp.function
def total(n: int) -> int:
    return sum(sp.gather(*(square.spawn(i) for i in range(n))))


if __name__ == "__main__":
    with sp.connect():
        print(square.remote(7))
        print(list(square.map(range(10))))
        print(total.remote(100))
