"""The tutorial's examples, in Python 3, with procly in place of multiprocessing.

Each script takes an optional start method as its first argument; ``procly tutorial`` runs
them all under fork, spawn and forkserver.
"""
