"""The ports the tests' local servers listen on: never from the range outgoing connections draw from."""

import socket

from infra import ports


def test_ports_come_from_outside_the_ephemeral_range_and_rays_worker_ports_and_are_never_repeated():
    drawn = [ports.free_port() for _ in range(100)]
    assert len(set(drawn)) == len(drawn)
    assert all(ports.RAY_WORKER_PORTS_END <= port < ports.ephemeral_start() for port in drawn), drawn
    for port in drawn[:5]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_a_port_someone_listens_on_is_not_free():
    with socket.socket() as server:
        server.bind(("127.0.0.1", ports.free_port()))
        server.listen()
        assert not ports.is_free(server.getsockname()[1])
