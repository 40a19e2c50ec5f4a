# This process's cluster: starting it (as the head, lazily, or as a worker in
# `serve`), the event loop that drives libcluster in host-dispatch mode, the
# table of tasks waiting for futures, and shutdown.
#
# Host dispatch: libcluster never runs Julia code on its own threads. Its
# threads queue incoming calls and events and wake us through the notify hook
# (`uv_async_send` on a `Base.AsyncCondition`). One task, the event loop,
# calls `cluster_poll` (non-blocking): the registered handlers run inside it,
# on Julia's thread, and only defer the calls, which then run as tasks.

mutable struct Runtime
    ctx::Ptr{Cvoid}
    role::Symbol                        # :none, :head or :worker
    myid::Int
    async::Any                          # Base.AsyncCondition once started
    loop::Union{Task,Nothing}
    lock::ReentrantLock                 # guards `waiters`
    waiters::Dict{UInt64,Threads.Condition}
    incoming::Vector{Tuple{Int,Ptr{Cvoid}}}   # (handler kind, call) deferred in a poll
    running::Dict{Ptr{Cvoid},Task}      # calls being served
    stop::Threads.Condition             # notified on a shutdown event
    stopping::Bool
    closed::Bool
    spin_ns::UInt64                     # how long the event loop and fetch spin
    dead::Dict{Int,Symbol}              # pid => :exited or :died
    pid_lock::ReentrantLock             # serialises add/remove of processes
end

Runtime() = Runtime(C_NULL, :none, 0, nothing, nothing, ReentrantLock(),
                    Dict{UInt64,Threads.Condition}(), Tuple{Int,Ptr{Cvoid}}[],
                    Dict{Ptr{Cvoid},Task}(), Threads.Condition(), false, false,
                    UInt64(200_000), Dict{Int,Symbol}(), ReentrantLock())

const RT = Runtime()
const INIT_LOCK = ReentrantLock()

"Spin time of fetch and of the event loop, in microseconds (`LIBCLUSTER_JULIA_SPIN_US`, default 200)."
spin_us_from_env() = something(tryparse(Int, get(ENV, "LIBCLUSTER_JULIA_SPIN_US", "200")), 200)

# The variables a launcher sets for a worker; a worker removes them once it
# has joined, so that processes it starts do not inherit them.
const LAUNCH_ENV = ("LIBCLUSTER_HEAD", "LIBCLUSTER_ID", "LIBCLUSTER_COOKIE_STDIN",
                    "LIBCLUSTER_STARTUP_TIMEOUT_MS")

"""
    context() -> Ptr{Cvoid}

This process's `cluster_ctx`, starting the cluster as its head (process 1)
on first use.
"""
@inline function context()
    ctx = RT.ctx
    ctx != C_NULL && return ctx
    return init()
end

"""
    LibCluster.init(; topology=:all_to_all, listen_host=nothing, log_level=nothing,
                    max_message_bytes=nothing)

Starts this process as the head of a cluster (process 1). Called implicitly
by the first use of the API; call it first to choose the default topology
of `addprocs` (`:all_to_all` or `:master_worker`, enforced by libcluster for
the life of the cluster), the listening address, or the largest message
(`max_message_bytes`, libcluster's default 1 GiB; the Julia workers get the
same). A worker process calls [`LibCluster.serve`](@ref) instead. The cookie
is `cluster_cookie(c)`'s if it was set, else a random one.
"""
function init(; topology::Symbol = :all_to_all, listen_host::Union{Nothing,AbstractString} = nothing,
              log_level::Union{Nothing,Integer} = nothing, max_message_bytes::Union{Nothing,Integer} = nothing)
    lock(INIT_LOCK) do
        RT.ctx != C_NULL && return RT.ctx
        RT.closed && error("LibCluster: the cluster of this process was shut down")
        # Inherited launch variables would turn this process into a worker.
        for k in LAUNCH_ENV
            delete!(ENV, k)
        end
        max_message_bytes === nothing || (MAX_MESSAGE[] = Int(max_message_bytes))
        start!(:head; topology = topology, listen_host = listen_host, log_level = log_level,
               cookie = COOKIE[], max_message = MAX_MESSAGE[])
        TOPOLOGY[] = DEFAULT_TOPOLOGY[] = LIBRARY_TOPOLOGY[] = topology
        atexit(shutdown_at_exit)
        RT.ctx
    end
end

# The head's max_message_bytes when init was given one (its workers get it).
const MAX_MESSAGE = Ref{Union{Nothing,Int}}(nothing)

# What a head tells its Julia workers through their environment (`serve`
# applies it, then removes it, as the launch variables).
const WORKER_ENV = ("LIBCLUSTER_JULIA_THREADED_BLAS", "LIBCLUSTER_JULIA_TOPOLOGY",
                    "LIBCLUSTER_JULIA_MAX_MESSAGE_BYTES")

# On a worker launched under a master_worker topology that the library does
# not enforce (see TOPOLOGY): calls to other workers are refused here.
const ENFORCE_MASTER_WORKER = Ref(false)

topology_code(t::Symbol) =
    t === :all_to_all ? CAPI.CLUSTER_TOPOLOGY_ALL_TO_ALL :
    t === :master_worker ? CAPI.CLUSTER_TOPOLOGY_MASTER_WORKER :
    throw(ArgumentError("topology must be :all_to_all or :master_worker, got :$t"))

function start!(role::Symbol; topology::Symbol = :all_to_all, listen_host = nothing, log_level = nothing,
                cookie::Union{Nothing,String} = nothing, max_message::Union{Nothing,Int} = nothing)
    CAPI.LIB_HANDLE[] == C_NULL && CAPI.load_library!()
    d = CAPI.config_init()
    # The Julia thread spins (event loop, fetch); library reader threads
    # spinning as well would compete for the CPUs, so they block unless
    # LIBCLUSTER_SPIN_US asks otherwise.
    spin_us = haskey(ENV, "LIBCLUSTER_SPIN_US") ? d.spin_us : UInt32(0)
    host = listen_host === nothing ? nothing : String(listen_host)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    GC.@preserve host cookie begin
        # (Built field by field: cheaper to compile than a generic update.)
        cfg = CAPI.ClusterConfig(d.struct_size,
                                 host === nothing ? d.listen_host : pointer(host),
                                 cookie === nothing ? d.cookie : pointer(cookie), d.join,
                                 topology_code(topology),
                                 CAPI.CLUSTER_DISPATCH_HOST,
                                 d.handler_threads, d.startup_timeout_ms,
                                 max_message === nothing ? d.max_message_bytes : UInt64(max_message),
                                 spin_us,
                                 log_level === nothing ? d.log_level : Int32(log_level),
                                 # A worker whose head goes away leaves through its
                                 # serve loop (a shutdown event): the library's own
                                 # exit from one of its threads would run the
                                 # process's exit handlers under Julia's feet.
                                 role === :worker ? false : d.exit_on_head_loss)
        # On a worker this blocks until it has joined its head (startup only).
        CAPI.check(CAPI.cluster_init(Ref(cfg), out))
    end
    ctx = out[]
    is_head = Ref(false)
    CAPI.check(CAPI.cluster_is_head(ctx, is_head))
    if role === :worker && is_head[]
        CAPI.cluster_free(ctx)
        error("LibCluster.serve: this process was not started by addprocs (no LIBCLUSTER_HEAD); " *
              "it would become a head, not a worker")
    end
    id = Ref{Int32}(0)
    CAPI.check(CAPI.cluster_myid(ctx, id))
    RT.spin_ns = UInt64(max(spin_us_from_env(), 0)) * 1000
    RT.role = role
    RT.myid = Int(id[])
    RT.closed = false
    RT.stopping = false
    register_builtin_handlers(ctx)
    # Wake-ups: the library calls uv_async_send(handle) from its threads.
    async = Base.AsyncCondition()
    RT.async = async
    CAPI.check(CAPI.cluster_set_notify(ctx, cglobal(:uv_async_send), async.handle))
    RT.ctx = ctx
    RT.loop = @async event_loop()
    ctx
end

# ------------------------------------------------------------- event loop

const POLL_CAP = 64

function event_loop()
    evs = Vector{CAPI.Event}(undef, POLL_CAP)
    cnt = Ref{Csize_t}(0)
    last = time_ns()
    while !RT.closed
        n = try
            poll!(evs, cnt)
        catch err
            RT.closed && break
            @error "LibCluster event loop" exception = (err, catch_backtrace())
            0
        end
        if n > 0
            last = time_ns()
            yield()
        elseif time_ns() - last < RT.spin_ns
            yield()
        else
            async = RT.async
            async === nothing && break
            try
                wait(async)
            catch
                break       # closed
            end
            last = time_ns()
        end
    end
end

"""
    poll!(evs, cnt) -> Int

One `cluster_poll`: runs the handlers of queued calls (they defer them),
handles the events, then starts a task for each deferred call. Returns the
number of events and calls seen.
"""
function poll!(evs::Vector{CAPI.Event}, cnt::Ref{Csize_t})
    ctx = RT.ctx
    ctx == C_NULL && return 0
    st = CAPI.cluster_poll(ctx, evs, Csize_t(length(evs)), cnt)
    if st != CAPI.CLUSTER_OK
        st == CAPI.CLUSTER_ERR_SHUTDOWN && return 0
        CAPI.check(st)
    end
    n = Int(cnt[])
    for i in 1:n
        handle_event(@inbounds evs[i])
    end
    m = length(RT.incoming)
    if m > 0
        calls = copy(RT.incoming)
        empty!(RT.incoming)
        for (kind, call) in calls
            start_call(kind, call)
        end
    end
    n + m
end

function handle_event(ev::CAPI.Event)
    k = ev.kind
    if ev.service == CAPI.CLUSTER_SERVICE_RPC
        k == CAPI.CLUSTER_EVENT_RPC_INTERRUPT && interrupt_running_calls()
    elseif ev.service != CAPI.CLUSTER_SERVICE_CORE
    elseif k == CAPI.CLUSTER_EVENT_FUTURE_READY
        wake_waiters(ev.id)
    elseif k == CAPI.CLUSTER_EVENT_WORKER_STARTED
        on_lifecycle(Int(ev.pid), CAPI.CLUSTER_WORKER_STARTED)
    elseif k == CAPI.CLUSTER_EVENT_WORKER_EXITED
        on_lifecycle(Int(ev.pid), CAPI.CLUSTER_WORKER_EXITED)
    elseif k == CAPI.CLUSTER_EVENT_WORKER_DIED
        on_lifecycle(Int(ev.pid), CAPI.CLUSTER_WORKER_DIED)
    elseif k == CAPI.CLUSTER_EVENT_SHUTDOWN || k == CAPI.CLUSTER_EVENT_HEAD_LOST
        lock(RT.stop) do
            RT.stopping = true
            notify(RT.stop)
        end
    end
    nothing
end

# ---------------------------------------------------------------- waiting

function wake_waiters(id::UInt64)
    lock(RT.lock)
    try
        c = pop!(RT.waiters, id, nothing)
        c === nothing || notify(c)
    finally
        unlock(RT.lock)
    end
end

# --------------------------------------------------------------- shutdown

"""
    LibCluster.shutdown(; timeout=5.0)

Stops this process's cluster: on the head every worker is asked to leave
(then terminated, then killed, within `timeout` seconds); on a worker its
connections close. Registered with `atexit` on the head.
"""
function shutdown(; timeout::Real = 5.0)
    ctx = RT.ctx
    ctx == C_NULL && return nothing
    ms = round(Int64, timeout * 1000)
    try
        # This task waits for the library's shutdown future; the event loop
        # (and every other task) keeps running meanwhile.
        run_op(out -> CAPI.cluster_shutdown_async(ctx, RT.role === :head ? ms : Int64(0), out))
    catch err
        err isa CAPI.ClusterError || rethrow()
    finally
        close_runtime!()
    end
    nothing
end

# How long `cluster_close` may wait for library callbacks running now: in
# host dispatch the only one a library thread runs is the notify hook
# (`uv_async_send`, microseconds), so it returns at once in practice.
const CLOSE_TIMEOUT_MS = Int64(2000)

"""
    close_runtime!()

Closes this process's cluster for good: `cluster_close` first, after which
the library calls no callback of ours (the notify hook with the
AsyncCondition's handle, handlers, log) and no library thread touches our
`user_data`; only then is the AsyncCondition closed and the handle freed.
Tasks still waiting on futures see them failed.
"""
function close_runtime!()
    ctx = RT.ctx
    ctx == C_NULL && return
    RT.closed = true
    RT.ctx = C_NULL
    CAPI.cluster_close(ctx, CLOSE_TIMEOUT_MS)
    CAPI.cluster_free(ctx)
    async = RT.async
    RT.async = nothing
    async === nothing || close(async)
    # Tasks waiting on futures see them failed (the library failed them).
    lock(RT.lock) do
        for c in values(RT.waiters)
            notify(c)
        end
        empty!(RT.waiters)
    end
    nothing
end

"At exit (registered by `init` on the head): stops the workers, then closes as `close_runtime!`."
function shutdown_at_exit()
    RT.ctx == C_NULL && return
    try
        shutdown(timeout = 3.0)
    catch
        close_runtime!()
    end
    nothing
end
