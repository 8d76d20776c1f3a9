"""Connections between processes (``multiprocessing.connection``).

``Pipe()`` for related processes, ``Listener`` / ``Client`` over Unix or TCP sockets
(loopback by default, mutual HMAC-SHA256 authentication before anything is unpickled),
and ``wait()`` over any mix of connections, sockets and process sentinels.
"""

from ._connection import Connection as Connection
from ._connection import Pipe as Pipe
from ._errors import AuthenticationError as AuthenticationError
from ._errors import BufferTooShort as BufferTooShort
from ._listener import Client as Client
from ._listener import Listener as Listener
from ._listener import address_type as address_type
from ._listener import answer_challenge as answer_challenge
from ._listener import deliver_challenge as deliver_challenge
from ._listener import families as families
from ._wait import wait as wait

__all__ = ["Client", "Connection", "Listener", "Pipe", "wait"]

for _obj in (Connection, Pipe, Client, Listener, wait):
    _obj.__module__ = __name__
del _obj
