"""Pipe(duplex=False): the first end only receives, the second only sends."""

import sys

from procly import Pipe, Process, set_start_method


def func(sender):
    sender.send([1, "str", None])
    sender.close()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    receiver, sender = Pipe(duplex=False)
    p = Process(target=func, args=(sender,))
    p.start()
    sender.close()
    print(receiver.recv())
    try:
        receiver.send("wrong way")
    except OSError as exc:
        print("receiver.send refused:", exc)
    p.join()
