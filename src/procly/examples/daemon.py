"""A daemonic child is ended when its parent exits: "Child process end" never prints."""

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
    p.daemon = True  # must be set before start()
    p.start()
    # p.join()
    time.sleep(1)
    print(f"Parent process end, {time.ctime()}", flush=True)
