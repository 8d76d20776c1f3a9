"""Process object: a child prints its own pid and its parent's."""

import os
import sys

from procly import Process, set_start_method


def get_process(info):
    print(info)
    print("Process ID:", os.getpid())
    print("Parent process ID:", os.getppid())


def func(name):
    get_process("In func:")
    print("Hello,", name)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    get_process("In main:")
    p = Process(target=func, args=("marsloo",))
    p.start()  # start the child
    p.join()  # wait for it to end
