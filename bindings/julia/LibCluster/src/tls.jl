# TLS between processes: `init(tls=...)`'s values and whether a connection
# runs under it. The library does the rest: either end asking is enough
# (agreed inside the authenticated handshake), every member derives the same
# key from the cookie, and a head passes its setting to the workers it
# launches (LIBCLUSTER_TLS in their environment).

"""
    tls_code(mode) -> Int32

The `cluster_tls` value of `init`'s `tls`: `:off`, `:cross_host` (the
connections not on loopback) or `:always`. Anything else is an
`ArgumentError`.
"""
tls_code(mode::Symbol) =
    mode === :off ? CAPI.CLUSTER_TLS_OFF :
    mode === :cross_host ? CAPI.CLUSTER_TLS_CROSS_HOST :
    mode === :always ? CAPI.CLUSTER_TLS_ALWAYS :
    throw(ArgumentError("tls must be :off, :cross_host or :always (or nothing for LIBCLUSTER_TLS), got :$mode"))
tls_code(mode) =
    throw(ArgumentError("tls must be :off, :cross_host or :always (or nothing for LIBCLUSTER_TLS), got $(repr(mode))"))

"""
    LibCluster.connection_encrypted(pid) -> Bool

Whether this process's connection to process `pid` runs under TLS (see
`LibCluster.init`'s `tls` and `LIBCLUSTER_TLS`). Local: no message is sent.

Distributed has no such function, so `LibCluster.API` does not export it:
call it qualified. A process that left throws `ProcessExitedException`,
one that never was an `ErrorException`, as calls to them do; this process
itself has no connection (`ArgumentError`). A worker connects to another
worker on first use: before that, a `ClusterError` with status
`CLUSTER_ERR_NOT_READY`.
"""
function connection_encrypted(pid::Integer)
    ctx = context()
    pid == RT.myid && throw(ArgumentError("connection_encrypted: process $pid is this process, which has no connection to itself"))
    out = Ref(false)
    check_call(CAPI.cluster_connection_encrypted(ctx, Int32(pid), out), pid)
    out[]
end
