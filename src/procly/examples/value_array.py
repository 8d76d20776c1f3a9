"""Value and Array: shared memory that the child writes and the parent reads."""

import sys

from procly import Array, Process, Value, set_start_method


def func(n, a):
    n.value = 3.1415926
    for i in range(len(a)):
        a[i] = -i


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    n = Value("d", 0.0)  # 'd': double
    a = Array("i", range(10))  # 'i': int
    p = Process(target=func, args=(n, a))
    p.start()
    p.join()
    print(n.value)
    print(a[:])
