"""The frame codes are one table (procly._frames), shared by Connection and queues."""

from procly import _connection, _frames, queues


def test_frame_codes_are_distinct_and_negative():
    codes = {name: getattr(_frames, name) for name in _frames.__all__ if name != "HEADER"}
    assert all(isinstance(code, int) and code < 0 for code in codes.values()), codes
    assert len(set(codes.values())) == len(codes), f"overlapping frame codes: {codes}"


def test_connection_and_queues_read_the_same_table():
    assert _connection._HEADER is _frames.HEADER is queues._HEADER
    assert (_connection._LARGE, _connection._OUT_OF_BAND, _connection._IN_MEMFD, _connection._NAMED_BACK) == (
        _frames.LARGE,
        _frames.OUT_OF_BAND,
        _frames.IN_MEMFD,
        _frames.NAMED_BACK,
    )
    assert (queues._SPILLED, queues._BATCH, queues._LARGE) == (_frames.SPILLED, _frames.BATCH, _frames.LARGE)
