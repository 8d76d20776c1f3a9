"""Queue(n): a queue with room for n items; put() waits (or fails) when it is full."""

import queue
import sys

from procly import Process, Queue, set_start_method


def producer(q):
    for i in range(5):
        q.put(i)  # waits whenever the queue already holds 2 items


if __name__ == "__main__":
    if len(sys.argv) > 1:
        set_start_method(sys.argv[1])
    q = Queue(2)
    q.put("a")
    q.put("b")
    print("full:", q.full())
    try:
        q.put("c", timeout=0.1)
    except queue.Full:
        print("put on a full Queue(2) raised queue.Full")
    print(q.get(), q.get())
    p = Process(target=producer, args=(q,))
    p.start()
    print("received:", [q.get() for _ in range(5)])
    p.join()
