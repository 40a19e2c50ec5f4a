# This process's cluster: starting it (as the head, lazily, or as a worker in
# `serve`), the event loop that drives libcluster in host-dispatch mode, the
# table of tasks waiting for futures, and shutdown.
#
# Host dispatch: libcluster never runs Julia code on its own threads, and
# LibCluster gives it no callback that a library thread would run: its
# threads queue incoming calls and events and signal the library's eventfd,
# which Julia's own event loop (libuv) watches. One task, the event loop,
# calls `cluster_poll` (non-blocking): the registered handlers run inside it,
# on Julia's thread, and only defer the calls, which then run as tasks.
# Between calls that task reads the connection of the last caller itself
# (`cluster_drive`), and a task waiting for a reply reads its connection
# (`cluster_future_drive`), so that a round trip needs no thread wake-up.

mutable struct Runtime
    ctx::Ptr{Cvoid}
    role::Symbol                        # :none, :head or :worker
    myid::Int
    watcher::Any                        # FDWatcher of the library's eventfd once started
    loop::Union{Task,Nothing}
    lock::ReentrantLock                 # guards `waiters`
    waiters::Dict{UInt64,Threads.Condition}
    incoming::Vector{Tuple{Int,Ptr{Cvoid}}}   # (handler kind, call) deferred in a poll
    starting::Vector{Tuple{Int,Ptr{Cvoid}}}   # those being started (swapped with `incoming`)
    running::Dict{Ptr{Cvoid},Task}      # calls being served
    stop::Threads.Condition             # notified on a shutdown event
    stopping::Bool
    closed::Bool
    spin_ns::UInt64                     # how long the event loop and fetch spin, no other task runnable
    slice_us::UInt32                    # one cluster_future_drive while other tasks are runnable
    busy_spin_ns::UInt64                # how long fetch spins while other tasks are runnable
    event_fd::Cint                      # readable when cluster_poll has work
    last_yield::UInt64                  # time_ns() when a fetch last let other tasks run
    last_peer::Int                      # the process whose call was served last (its connection is driven)
    corked::Bool                        # replies to a batch are held (cluster_cork)
    probe_at::UInt64                    # `contention`: when last probed
    switches::Int                       # involuntary context switches then
    contended::Bool                     # preempted between the last two probes
    probe::Bool                         # `contention` probes (only with LIBCLUSTER_JULIA_PROBE=1)
    stats::Vector{Int}                  # counters, see `stats()`
    dead::Dict{Int,Symbol}              # pid => :exited or :died
    pid_lock::ReentrantLock             # serialises add/remove of processes
end

Runtime() = Runtime(C_NULL, :none, 0, nothing, nothing, ReentrantLock(),
                    Dict{UInt64,Threads.Condition}(), Tuple{Int,Ptr{Cvoid}}[], Tuple{Int,Ptr{Cvoid}}[],
                    Dict{Ptr{Cvoid},Task}(), Threads.Condition(), false, false,
                    UInt64(200_000), UInt32(20), UInt64(50_000), Cint(-1), UInt64(0), 0, false, UInt64(0), -1, false, false, zeros(Int, 7), Dict{Int,Symbol}(), ReentrantLock())

const RT = Runtime()
const INIT_LOCK = ReentrantLock()

# Set in a `PTools.pfork` child: its copy of the runtime belongs to the
# parent, which alone talks on the connections.
const IN_FORK_CHILD = Ref(false)

"""
    detach_fork_child!()

In a `pfork` child, before the user's function: its copy of the runtime is
closed without a word to the library (which refuses every handle in a
child anyway), so that the event loop's copy ends if it ever runs, an
`exit` there runs no shutdown, and any use of the cluster is a clear error.
The eventfd watcher is dropped, not closed: libuv must not touch the
parent's registration.
"""
function detach_fork_child!()
    IN_FORK_CHILD[] = true
    RT.closed = true
    RT.ctx = C_NULL
    RT.watcher = nothing
    RT.event_fd = Cint(-1)
    RT.last_peer = -1
    nothing
end

"Spin time of fetch and of the event loop, in microseconds (`LIBCLUSTER_JULIA_SPIN_US`, default 200)."
spin_us_from_env() = something(tryparse(Int, get(ENV, "LIBCLUSTER_JULIA_SPIN_US", "200")), 200)

"""
How long a task waiting for a reply reads its connection while other tasks
are runnable, before it parks (`LIBCLUSTER_JULIA_BUSY_SPIN_US`, default 50),
in slices of `LIBCLUSTER_JULIA_SLICE_US` (default 20) between which the
others run. Alone on the thread it spins `LIBCLUSTER_JULIA_SPIN_US`.
"""
slice_us_from_env() = something(tryparse(Int, get(ENV, "LIBCLUSTER_JULIA_SLICE_US", "20")), 20)
busy_spin_us_from_env() = something(tryparse(Int, get(ENV, "LIBCLUSTER_JULIA_BUSY_SPIN_US", "50")), 50)

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
                    max_message_bytes=nothing, tls=nothing)

Starts this process as the head of a cluster (process 1). Called implicitly
by the first use of the API; call it first to choose the default topology
of `addprocs` (`:all_to_all` or `:master_worker`, enforced by libcluster for
the life of the cluster), the listening address, the largest message
(`max_message_bytes`, libcluster's default 1 GiB; the Julia workers get the
same), or which connections run under TLS (`tls`: `:off`, `:cross_host` for
those not on loopback, `:always`; `nothing` leaves libcluster's default,
`LIBCLUSTER_TLS`, else off; the workers it launches get the same, see
[`LibCluster.connection_encrypted`](@ref)). A worker process calls
[`LibCluster.serve`](@ref) instead. The cookie is `cluster_cookie(c)`'s if
it was set, else a random one. Once the cluster runs, `init` returns its
context and changes nothing.
"""
function init(; topology::Symbol = :all_to_all, listen_host::Union{Nothing,AbstractString} = nothing,
              log_level::Union{Nothing,Integer} = nothing, max_message_bytes::Union{Nothing,Integer} = nothing,
              tls = nothing)
    IN_FORK_CHILD[] && error("LibCluster: a pfork child cannot use the cluster (its parent owns the connections); " *
                             "return what it computed instead")
    # Checked even when the cluster already runs: a misspelt value is an error, not ignored.
    tls_mode = tls === nothing ? nothing : tls_code(tls)
    lock(INIT_LOCK) do
        RT.ctx != C_NULL && return RT.ctx
        RT.closed && error("LibCluster: the cluster of this process was shut down")
        # Inherited launch variables would turn this process into a worker.
        for k in LAUNCH_ENV
            delete!(ENV, k)
        end
        max_message_bytes === nothing || (MAX_MESSAGE[] = Int(max_message_bytes))
        start!(:head; topology = topology, listen_host = listen_host, log_level = log_level,
               cookie = COOKIE[], max_message = MAX_MESSAGE[], tls = tls_mode)
        TOPOLOGY[] = DEFAULT_TOPOLOGY[] = LIBRARY_TOPOLOGY[] = topology
        atexit(shutdown_at_exit)
        RT.ctx
    end
end

# The head's max_message_bytes when init was given one (its workers get it).
const MAX_MESSAGE = Ref{Union{Nothing,Int}}(nothing)

# The library's log level as this process started it: init's `log_level`,
# else `LIBCLUSTER_LOG` as the library reads it (off when unset).
const LOG_LEVEL = Ref{Int32}(CAPI.CLUSTER_LOG_OFF)

function log_level_from_env()
    v = lowercase(strip(get(ENV, "LIBCLUSTER_LOG", "")))
    v in ("error", "1") ? CAPI.CLUSTER_LOG_ERROR : v in ("warn", "warning", "2") ? CAPI.CLUSTER_LOG_WARN :
    v in ("info", "3") ? CAPI.CLUSTER_LOG_INFO : v in ("debug", "trace", "4") ? CAPI.CLUSTER_LOG_DEBUG :
    CAPI.CLUSTER_LOG_OFF
end

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

"How long the library's reader thread keeps reading after traffic (µs)."
const JULIA_READER_SPIN_US = 50

function start!(role::Symbol; topology::Symbol = :all_to_all, listen_host = nothing, log_level = nothing,
                cookie::Union{Nothing,String} = nothing, max_message::Union{Nothing,Int} = nothing,
                tls::Union{Nothing,Int32} = nothing)
    CAPI.LIB_HANDLE[] == C_NULL && CAPI.load_library!()
    d = CAPI.config_init()
    # The Julia thread spins (event loop, fetch) on the connections of its
    # calls; the library's reader thread spins briefly after traffic on the
    # others (a dict's replication between members: blocking, each message
    # cost a wake-up, 45-55 µs a replicated set instead of 22-24). Both
    # yield their CPU between short spins, so they share two cores.
    spin_us = haskey(ENV, "LIBCLUSTER_SPIN_US") ? d.spin_us : UInt32(JULIA_READER_SPIN_US)
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
                                 # A worker that cannot join leaves through its
                                 # serve loop's error, not the library's exit;
                                 # head loss later is an event (HEAD_LOST).
                                 role === :worker ? false : d.exit_on_head_loss,
                                 d.heartbeat_timeout_ms, d.handshake_timeout_ms,
                                 tls === nothing ? d.tls : tls)
        # On a worker this blocks until it has joined its head (startup only).
        CAPI.check(CAPI.cluster_init(Ref(cfg), out))
        LOG_LEVEL[] = log_level === nothing ? log_level_from_env() : Int32(log_level)
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
    RT.slice_us = UInt32(clamp(slice_us_from_env(), 1, 100_000))
    RT.busy_spin_ns = UInt64(max(busy_spin_us_from_env(), 0)) * 1000
    RT.probe = get(ENV, "LIBCLUSTER_JULIA_PROBE", "0") == "1"
    efd = Ref{Cint}(-1)
    CAPI.check(CAPI.cluster_event_fd(ctx, efd))
    RT.event_fd = efd[]
    RT.role = role
    RT.myid = Int(id[])
    RT.closed = false
    RT.stopping = false
    register_builtin_handlers(ctx)
    RT.ctx = ctx
    RT.loop = @async event_loop()
    ctx
end

# ------------------------------------------------------------- event loop

const POLL_CAP = 64
const MAX_POLL_CAP = 1 << 16

"""
The event loop: polls the library whenever it has work, and between calls
keeps reading the connection of the process that called last
(`cluster_drive`) while no other task can run, for `RT.spin_ns` after the
last activity, so that back-to-back calls find this thread awake and need
no wake-up of any thread. Then it parks until the library's eventfd is
readable.
"""
function event_loop()
    # Wake-ups: libuv watches the eventfd the library signals when
    # cluster_poll has work (no library thread calls into Julia or libuv).
    # Made here, not in `start!`: its first use compiles for some 50 ms,
    # which a worker would otherwise spend before it is ready and a head
    # before it launches its first workers. The library queues meanwhile
    # (the eventfd stays readable), and the loop polls first.
    RT.closed || (RT.watcher = FDWatcher(RawFD(RT.event_fd), true, false))
    evs = Vector{CAPI.Event}(undef, POLL_CAP)
    cnt = Ref{Csize_t}(0)
    pending = Ref(false)
    served = Ref(false)
    last = time_ns()
    window = RT.spin_ns             # how long it reads after the last activity
    gave_up = UInt64(0)             # when it last stopped reading to park
    poll_now = true
    while !RT.closed
        polled, poll_now = poll_now, true
        n = !polled ? 0 : try
            poll!(evs, cnt)
        catch err
            RT.closed && break
            @error "LibCluster event loop" exception = (err, catch_backtrace())
            0
        end
        idle = time_ns() - last
        # Short of CPUs, only briefly: spinning would hold up the caller.
        span = contention() ? min(window, UInt64(RT.slice_us) * 1000) : window
        if n > 0
            last = time_ns()
            yield()                 # the calls just started run now
            uncork!()               # their replies, held while they ran, go out
            # The read below returns at once if work was queued meanwhile:
            # no poll (and its system call) needed before it.
            poll_now = !(RT.last_peer > 0 && CAPI.has_drive())
        elseif others_runnable()
            yield()
        elseif idle < span && RT.last_peer > 0 && CAPI.has_drive()
            # Nothing else to run: wait for the next call on its connection,
            # reading it here; it returns as soon as work is queued.
            ctx = RT.ctx
            ctx == C_NULL && break
            if CAPI.has_drive_ex()
                CAPI.cluster_drive_ex(ctx, Int32(RT.last_peer), UInt32(cld(span - idle, 1000)), pending, served)
                # Requests the library answered here (dict reads): more
                # may follow, read them here as after a call; not when
                # short of CPUs (the library's threads then need them).
                served[] && !contention() && (last = time_ns())
            else
                CAPI.cluster_drive(ctx, Int32(RT.last_peer), UInt32(cld(span - idle, 1000)), pending)
            end
            count!(pending[] ? STAT_LOOP_DRIVEN : STAT_LOOP_IDLE)
            pending[] || (gave_up = time_ns())
        elseif !polled
            # Poll (next turn) before parking.
        else
            w = RT.watcher
            w === nothing && break
            try
                wait(w)             # the eventfd is readable: cluster_poll has work
            catch
                break               # closed
            end
            count!(STAT_LOOP_WOKEN)
            last = time_ns()
            window = next_window(window, gave_up == 0 ? typemax(UInt64) : last - gave_up)
            gave_up = UInt64(0)
        end
    end
end

"""
    next_window(window, gap) -> window

The event loop's reading window after a wake-up that came `gap` after it
gave up reading: doubled (up to 10x `RT.spin_ns`) when the call came soon
after (it stopped too early: a caller slowed down by a wake-up of its own
would otherwise find this process asleep in turn, and the two would stay
on the slow path), halved (down to `RT.spin_ns`) after a long silence.
"""
function next_window(window::UInt64, gap::UInt64)
    if gap < window
        return min(2window, 10RT.spin_ns)
    elseif gap > 16window
        return max(window ÷ 2, RT.spin_ns)
    end
    window
end

# ------------------------------------------------------------ contention
#
# Spinning pays only while the process that is to answer has a CPU. When
# the machine has more runnable threads than CPUs, the kernel preempts a
# spinning thread (involuntary context switches). With
# LIBCLUSTER_JULIA_PROBE=1 this process then spins no longer than a slice
# and parks, leaving the CPU to the others, until a later probe finds it
# running undisturbed again. Off by default: parking costs a round trip
# four thread wake-ups (each side's reactor, then its Julia thread), and on
# this project's loaded 2-CPU machine round trips were slower with it
# (23-146 µs against 11-52 µs without), though the spinning burns less CPU.

const PROBE_NS = UInt64(5_000_000)
const RUSAGE = zeros(Int64, 18)         # struct rusage: 2 timevals, then 14 longs

"Involuntary context switches of the calling thread so far (`getrusage(RUSAGE_THREAD)`)."
function involuntary_switches()
    ccall(:getrusage, Cint, (Cint, Ptr{Int64}), 1, RUSAGE) == 0 || return -1
    @inbounds RUSAGE[18]
end

"""
    contention() -> Bool

Whether this thread was preempted in the last few milliseconds (probed at
most every 5 ms, one system call): the machine is short of CPUs.
"""
function contention()
    RT.probe || return false
    now = time_ns()
    since = now - RT.probe_at
    since < PROBE_NS && return RT.contended
    n = involuntary_switches()
    # Long since the last probe (idle meanwhile): only a new reference.
    RT.contended = since < 4PROBE_NS && n > RT.switches >= 0
    RT.switches = n
    RT.probe_at = now
    RT.contended
end

# What the counters of `stats()` count, by index.
const STAT_DRIVEN = 1       # waits that ended while this thread read the reply itself
const STAT_PARKED = 2       # waits that parked (woken by the event loop)
const STAT_LOOP_DRIVEN = 3  # event loop reads (cluster_drive) that found work
const STAT_LOOP_IDLE = 4    # event loop reads that found none in their time
const STAT_LOOP_WOKEN = 5   # event loop wake-ups from its eventfd wait
const STAT_CALLS = 6        # calls served
const STAT_READY = 7        # waits for a reply already there

"""
    LibCluster.stats() -> NamedTuple

Counters of this process since it started: waits for a reply that found
it there (`ready`), that ended while the waiting task read the connection
itself (`driven`) or that parked (`parked`); event-loop reads of the last caller's connection that
found work (`loop_driven`) or none (`loop_idle`); event-loop wake-ups
through the eventfd (`loop_woken`, each a thread wake-up); calls served
(`calls`). Back-to-back round trips should show `driven` and
`loop_driven` growing, not `parked` and `loop_woken`.
"""
stats() = (ready = RT.stats[STAT_READY], driven = RT.stats[STAT_DRIVEN], parked = RT.stats[STAT_PARKED],
           loop_driven = RT.stats[STAT_LOOP_DRIVEN], loop_idle = RT.stats[STAT_LOOP_IDLE],
           loop_woken = RT.stats[STAT_LOOP_WOKEN], calls = RT.stats[STAT_CALLS])

@inline count!(i::Int) = (@inbounds RT.stats[i] += 1; nothing)

"""
    others_runnable() -> Bool

Whether a task other than the event loop is queued to run on this thread:
a task spinning now would hold it up. (The event loop alone does not count:
what it has to do shows as library work, `host_pending`. Tasks of other
threads run meanwhile anyway.)
"""
@inline function others_runnable()
    W = @static if isdefined(Base, :workqueue_for)
        Base.workqueue_for(Threads.threadid())
    else
        Base.Workqueues[Threads.threadid()]
    end
    isempty(W) && return false
    @static if hasfield(typeof(Base.Workqueue), :queue) && hasfield(typeof(Base.Workqueue.queue), :head) &&
               hasfield(typeof(Base.Workqueue.queue), :tail)
        q = W.queue
        loop = RT.loop
        return !(loop !== nothing && q.head === loop && q.tail === loop)
    else
        return true
    end
end

struct PollFd
    fd::Cint
    events::Cshort
    revents::Cshort
end
const POLLIN = Cshort(1)

"Whether `cluster_poll` has work: its eventfd is readable (one poll(2), no wait)."
function host_pending()
    fd = RT.event_fd
    fd < 0 && return false
    p = Ref(PollFd(fd, POLLIN, Cshort(0)))
    ccall(:poll, Cint, (Ptr{PollFd}, Culong, Cint), p, 1, 0) > 0
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
    # Full: more are queued (a burst of replies); take more at a time.
    n == length(evs) && n < MAX_POLL_CAP && resize!(evs, 2n)
    m = length(RT.incoming)
    if m > 0
        # Swapped, not copied: a call started here may poll again.
        calls = RT.incoming
        RT.incoming = RT.starting
        RT.starting = calls
        # A batch: the replies of its calls that finish before the event
        # loop runs again are written together (`uncork!`).
        m > 1 && cork!(ctx, calls[1][2])
        for (kind, call) in calls
            start_call(kind, call)
        end
        empty!(calls)
    end
    n + m
end

"Holds the replies this thread sends to the caller of `call` (`cluster_cork`)."
function cork!(ctx::Ptr{Cvoid}, call::Ptr{Cvoid})
    CAPI.has_cork() || return
    caller = Ref{Int32}(0)
    CAPI.cluster_call_caller(call, caller) == CAPI.CLUSTER_OK || return
    (caller[] > 0 && caller[] != RT.myid) || return
    CAPI.cluster_cork(ctx, caller[], true) == CAPI.CLUSTER_OK && (RT.corked = true)
    nothing
end

"Writes the replies held since `cork!`."
function uncork!()
    RT.corked || return
    RT.corked = false
    ctx = RT.ctx
    ctx == C_NULL || CAPI.cluster_cork(ctx, Int32(0), false)
    nothing
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
        # On the head, this task waits for the library's shutdown future
        # (the workers leaving); the event loop and every other task keep
        # running meanwhile. A worker's shutdown only closes its
        # connections: `close_runtime!` does that.
        RT.role === :head && run_op(out -> CAPI.cluster_shutdown_async(ctx, ms, out))
    catch err
        err isa CAPI.ClusterError || rethrow()
    finally
        close_runtime!()
    end
    nothing
end

# How long `cluster_close` may wait for library callbacks running now: in
# host dispatch LibCluster's run only inside cluster_poll, on this thread,
# and none is running when it is called, so it returns at once.
const CLOSE_TIMEOUT_MS = Int64(2000)

"""
    close_runtime!()

Closes this process's cluster for good: libuv stops watching the library's
eventfd (before the library closes it), then `cluster_close`, after which
the library calls no callback of ours (handlers, log) and no library
thread touches our `user_data`, then the handle is freed. Tasks still
waiting on futures see them failed.
"""
function close_runtime!()
    ctx = RT.ctx
    ctx == C_NULL && return
    RT.closed = true
    RT.ctx = C_NULL
    w = RT.watcher
    RT.watcher = nothing
    w === nothing || close(w)
    RT.event_fd = Cint(-1)
    CAPI.cluster_close(ctx, CLOSE_TIMEOUT_MS)
    CAPI.cluster_free(ctx)
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
