"""Without join(), the parent runs on and ends first; the child still finishes."""

import sys
import time

from procly import Process, set_start_method


def func():
    print(f"Child process start, {time.ctime()}", flush=True)
    time.sleep(2)
    print(f"Child process end, {time.ctime()}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    print(f"Parent process start, {time.ctime()}", flush=True)
    p = Process(target=func)
    p.start()
    # p.join()
    time.sleep(1)
    print(f"Parent process end, {time.ctime()}", flush=True)
