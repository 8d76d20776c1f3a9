"""Start methods: how a child process comes to exist.

Each method is a *starter*: an object with a ``start(process) -> ChildHandle`` method
(see :mod:`procly._start.base`). ``fork`` forks this process, ``spawn`` runs a fresh
interpreter, ``forkserver`` asks a helper process to fork itself. Everything a child
does once it exists is shared: :mod:`procly._start.child`.
"""
