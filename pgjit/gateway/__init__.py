"""The I/O edges: everything that touches a socket or awaits.

    server        listeners, accepting, admission, drain on shutdown
    session       one client's phases: startup, TLS, authentication, JIT role,
                  upstream login, relay, teardown
    clientauth    who the client is (OIDC token, or the loopback dev mode)
    relay         the relay's logic on a session's bytes, without I/O: frame
                  boundaries, the gate's calls, ReadyForQuery accounting,
                  refusals and the rewriting of their replies
    upstream      the login to the PostgreSQL server and the cancel request
    transport     sockets and TLS
    reactor       one epoll loop for every relayed session, with the C core
                  (_relaycore.c) for the frames nobody needs to look at
    lexstate      the server settings that change how SQL is lexed
    catalogkeeper the upstream catalog snapshot, refreshed in the background

Imports point one way: server -> session -> (clientauth, upstream, reactor,
relay) -> transport; reactor -> relay; relay imports nothing else of the
gateway but lexstate. Nothing here is imported by the decision layers.
"""
