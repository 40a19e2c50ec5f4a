# Future: the result of a remote call, over a libcluster future handle.
#
# Waiting never blocks the thread: `isready` is a non-blocking ccall, and a
# task that must wait spins briefly (isready + yield) and then parks on a
# Condition that the event loop notifies on CLUSTER_EVENT_FUTURE_READY.
# The library's operations that take time (addprocs, rmprocs, shutdown) are
# futures too, waited for the same way (`await_op`).
# The outcome is cached in the Future and the handle released as soon as it
# has been fetched, so a second `fetch` costs no ccall. Finalizers release
# handles of futures dropped unfetched (`cluster_future_free` never blocks).

"Supertype of references to values held by (or computed on) another process."
abstract type AbstractRemoteRef end

"""
    Future

The result of [`remotecall`](@ref) (or `@spawnat`, `@spawn`...): `fetch` waits
for the value and caches it, `wait` waits without moving it, `isready` checks.
A Future can be passed inside the arguments of a remote call; the receiving
process can then `fetch` it itself. Fields as Distributed's: `where` is the
process computing the value, `whence` the one that made the call.

    Future(pid=myid())

A Future to be set once with `put!(f, v)` (from any process it was passed
to), held on process `pid`, as Distributed's.
"""
mutable struct Future <: AbstractRemoteRef
    where::Int
    whence::Int
    id::UInt64                      # libcluster's id of the handle (0: none)
    handle::Ptr{Cvoid}              # C_NULL once released
    v::Union{Nothing,Some{Any}}     # the cached value
    err::Any                        # the cached exception, or nothing
    raw::Bool                       # value is raw bytes (a call by name)
    imported::Bool                  # handle came from cluster_future_import
    slot::Tuple{Int,Int}            # Future(pid): its slot on `where`; else (0, 0)

    # `finalize = false`: the caller releases the handle itself (`remotecall_fetch`).
    function Future(handle::Ptr{Cvoid}, where::Integer, whence::Integer; raw::Bool = false, imported::Bool = false,
                    slot::Tuple{Int,Int} = (0, 0), finalize::Bool = true)
        id = Ref{UInt64}(0)
        CAPI.check(CAPI.cluster_future_id(handle, id))
        f = new(Int(where), Int(whence), id[], handle, nothing, nothing, raw, imported, slot)
        finalize && finalizer(release!, f)
        f
    end
    # A Future that already holds its outcome (received by value).
    function Future(where::Integer, whence::Integer, v::Union{Nothing,Some{Any}}, err, raw::Bool,
                    slot::Tuple{Int,Int} = (0, 0))
        new(Int(where), Int(whence), UInt64(0), C_NULL, v, err, raw, false, slot)
    end
end

# ---------------------------------------------------- Future(pid), put!
#
# A Future(pid) is a call to `await_slot` on `pid` that returns once a
# `put_slot` of the same slot gave it a value: its outcome then reaches
# every copy of the Future by the paths any call's does. A slot stays on
# `pid` once set (without its value) to refuse a second put!.

mutable struct Slot
    set::Bool
    value::Any
    cond::Condition
end
Slot() = Slot(false, nothing, Condition())

const SLOTS = Dict{Tuple{Int,Int},Slot}()
const NEXT_SLOT = Ref(0)

function Future(pid::Integer = myid())
    NEXT_SLOT[] += 1
    key = (myid(), NEXT_SLOT[])
    f = remotecall(await_slot, pid, key[1], key[2])
    f.slot = key
    f
end

"On the Future's process: waits for the slot's value and returns it."
function await_slot(creator::Int, n::Int)
    s = get!(Slot, SLOTS, (creator, n))
    while !s.set
        wait(s.cond)
    end
    v = s.value
    s.value = nothing
    v
end

"On the Future's process: sets the slot's value, once."
function put_slot(creator::Int, n::Int, v)
    s = get!(Slot, SLOTS, (creator, n))
    s.set && error("Future can be set only once")
    s.set = true
    s.value = v
    notify(s.cond)
    nothing
end

"""
    put!(f::Future, v) -> f

Sets the value of a Future made by `Future(pid)`; an error if it was set
already (here, or on its process: a `RemoteException` then), as Distributed.
"""
function Base.put!(f::Future, v)
    f.v !== nothing && error("Future can be set only once")
    f.slot == (0, 0) && error("put!: this Future is the result of a remote call; only a Future(pid) can be set")
    remotecall_fetch(put_slot, f.where, f.slot[1], f.slot[2], v)
    f.v = Some{Any}(v)
    f
end

function Base.show(io::IO, f::Future)
    print(io, "Future(", f.where, ", ", f.whence, ", ", f.id, ", ")
    f.v === nothing ? print(io, "nothing") : show(io, f.v)
    print(io, ")")
end

"Releases the library handle (idempotent; safe from a finalizer)."
release!(f::Future) = CAPI.free_once!(CAPI.cluster_future_free, f)

@inline has_outcome(f::Future) = f.v !== nothing || f.err !== nothing

@inline function handle_isready(h::Ptr{Cvoid})
    r = Ref(false)
    st = CAPI.cluster_future_isready(h, r)
    st == CAPI.CLUSTER_OK || CAPI.check(st)
    r[]
end

@inline done_now(f::Future) = has_outcome(f) || f.handle == C_NULL || handle_isready(f.handle)

"""
    Base.isready(f::Future) -> Bool

Whether the value (or error) of `f` is available; never waits.
"""
Base.isready(f::Future) = done_now(f)

"""
    wait_ready(f)

Waits until the outcome of `f` is available, letting other tasks run. The
task first reads the reply's connection itself (`drive_ready`), so that a
quick reply costs no thread wake-up, then parks on a Condition.
"""
function wait_ready(f::Future)
    done_now(f) && (count!(STAT_READY); return)
    # A call to this process is served by this thread: nothing to read.
    if RT.spin_ns > 0 && f.where != RT.myid
        drive_ready(f) && (count!(STAT_DRIVEN); return)
    end
    count!(STAT_PARKED)
    park_until_ready(f.handle, f.id)
end

"""
    drive_ready(f) -> Bool

Reads the reply connection of `f` on this thread (`cluster_future_drive`),
and true once `f` is ready. It drives in slices (`RT.slice_us`, or 100 µs
when no other task is runnable), between which it lets other tasks run if
some are runnable or the library has work for the event loop (a call to
this process read meanwhile). It gives up (false: the caller parks) after
`RT.busy_spin_ns` while other tasks are runnable, `RT.spin_ns` otherwise.
"""
drive_ready(f::Future) = drive_slices(() -> f.handle, () -> done_now(f))

"""
The loop of `drive_ready` for a future whose handle is `handle()` (read
again after other tasks ran: one of them may have fetched it) and that is
complete once `done()`.
"""
function drive_slices(handle::H, done::D) where {H,D}
    h = handle()
    ready = Ref(false)
    t0 = time_ns()
    # On a machine short of CPUs, spinning keeps the CPU from the very
    # process that is to answer: a slice at most, then park.
    contended = contention()
    while true
        busy = others_runnable()
        # Alone on the thread, longer slices (each one the reply outlasts
        # hands the connection back to the library's reactor for a while).
        slice = busy || contended ? RT.slice_us : max(RT.slice_us, IDLE_SLICE_US)
        st = CAPI.cluster_future_drive(h, slice, ready)
        if st != CAPI.CLUSTER_OK || ready[]
            let_others_run()
            return true
        end
        contended && return false
        time_ns() - t0 >= (busy ? RT.busy_spin_ns : RT.spin_ns) && return false
        if busy || host_pending()
            RT.last_yield = time_ns()
            yield()
            done() && return true
            h = handle()
        end
    end
end

const IDLE_SLICE_US = UInt32(100)

"""
A task whose replies keep coming at once never waits: every 100 µs it lets
the others (and the event loop, for calls to this process) run.
"""
@inline function let_others_run()
    now = time_ns()
    if now - RT.last_yield > 100_000
        RT.last_yield = now
        (others_runnable() || host_pending()) && yield()
    end
    nothing
end

"""
    park_until_ready(h, id)

Parks the calling task until the library future `h` (id `id`) has
completed: on a Condition the event loop notifies on its
CLUSTER_EVENT_FUTURE_READY. Checking and parking happen under `RT.lock`
without a task switch between them, and the library marks a future
complete before it queues that event, so the wake-up cannot be missed.
"""
function park_until_ready(h::Ptr{Cvoid}, id::UInt64)
    h == C_NULL && return
    lock(RT.lock)
    try
        while !handle_isready(h)
            RT.ctx == C_NULL && error("LibCluster: the cluster was shut down")
            c = get!(() -> Threads.Condition(RT.lock), RT.waiters, id)
            wait(c)
        end
    finally
        unlock(RT.lock)
    end
    nothing
end

"""
    await_op(h) -> Vector{UInt8}

Waits, in this task only, for the future `h` of an operation made with a
`cluster_*_async` function (addprocs, rmprocs, shutdown, export) and returns
its value, or throws its `ClusterError`. Releases `h`. Nothing spins and no
thread is started: the task parks until the library reports the future
ready, other tasks running meanwhile.
"""
function await_op(h::Ptr{Cvoid})
    try
        id = Ref{UInt64}(0)
        CAPI.check(CAPI.cluster_future_id(h, id))
        park_until_ready(h, id[])
        data = Ref{Ptr{UInt8}}(C_NULL)
        len = Ref{Csize_t}(0)
        st = CAPI.cluster_future_fetch(h, 0, data, len)
        st == CAPI.CLUSTER_OK || throw(CAPI.last_error(st))
        n = Int(len[])
        return n == 0 ? UInt8[] : copy(unsafe_wrap(Array, data[], n))
    finally
        CAPI.cluster_future_free(h)
    end
end

"Starts an operation with `start(out::Ref{Ptr{Cvoid}}) -> status` and waits for it (`await_op`)."
function run_op(start)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(start(out))
    await_op(out[])
end

"""
    take_outcome!(f)

Reads the completed outcome of `f` from the library into the Future (value
or exception) and releases the handle.
"""
function take_outcome!(f::Future)
    has_outcome(f) && return
    h = f.handle
    h == C_NULL && return
    data = Ref{Ptr{UInt8}}(C_NULL)
    len = Ref{Csize_t}(0)
    st = CAPI.cluster_future_fetch(h, 0, data, len)
    if st == CAPI.CLUSTER_OK
        n = Int(len[])
        bytes = n == 0 ? UInt8[] : unsafe_wrap(Array, data[], n)  # valid until release!
        if f.raw
            f.v = Some{Any}(copy(bytes))
        else
            ok, v = decode_reply(bytes, f.where)
            ok ? (f.v = Some{Any}(v)) : (f.err = v)
        end
    else
        f.err = library_exception(CAPI.last_error(st), f.where, true)
    end
    release!(f)
    nothing
end

"""
    fetch(f::Future)

Waits for and returns the value of `f`, cached after the first call. A
remote failure throws `RemoteException`; a worker that died throws
`ProcessExitedException`.
"""
function Base.fetch(f::Future)
    v = f.v
    v !== nothing && return something(v)
    f.err === nothing || throw(f.err)
    wait_ready(f)
    take_outcome!(f)
    v = f.v
    v !== nothing && return something(v)
    throw(f.err === nothing ? ErrorException("LibCluster: future without outcome") : f.err)
end

"""
    wait(f::Future) -> f

Waits until `f` has completed, without fetching its value. Throws the
remote error, as Distributed does.
"""
function Base.wait(f::Future)
    f.v !== nothing && return f
    f.err === nothing || throw(f.err)
    wait_ready(f)
    check_failed!(f)
    f.err === nothing || throw(f.err)
    f
end

# After completion: caches the outcome if it is an error, without moving a value.
function check_failed!(f::Future)
    has_outcome(f) && return
    h = f.handle
    h == C_NULL && return
    data = Ref{Ptr{UInt8}}(C_NULL)
    len = Ref{Csize_t}(0)
    st = CAPI.cluster_future_fetch(h, 0, data, len)
    if st != CAPI.CLUSTER_OK
        f.err = library_exception(CAPI.last_error(st), f.where, true)
        release!(f)
    elseif !f.raw && len[] > 0 && unsafe_load(data[]) == TAG_ERR
        take_outcome!(f)
    end
    nothing
end

# ------------------------------------------------------- passing futures on

"The reference another process imports (one per export)."
function export_ref(f::Future)
    r = Ref(CAPI.FutureRef(0, 0))
    if f.imported
        # A round trip to the owner: this task waits for it.
        b = run_op(out -> CAPI.cluster_future_export_async(f.handle, out))
        length(b) == 12 || error("LibCluster: a future reference of $(length(b)) bytes")
        return CAPI.FutureRef(ltoh(reinterpret(Int32, b[1:4])[1]), ltoh(reinterpret(UInt64, b[5:12])[1]))
    end
    CAPI.check(CAPI.cluster_future_export(f.handle, r))
    r[]
end

const FUT_BY_REF = 0x00
const FUT_VALUE = 0x01
const FUT_ERROR = 0x02

function Serialization.serialize(s::AbstractSerializer, f::Future)
    Serialization.serialize_type(s, Future, false)
    if f.v !== nothing
        serialize(s, (f.where, f.whence, f.raw, FUT_VALUE, something(f.v), f.slot))
    elseif f.err !== nothing
        serialize(s, (f.where, f.whence, f.raw, FUT_ERROR, f.err, f.slot))
    else
        r = export_ref(f)
        serialize(s, (f.where, f.whence, f.raw, FUT_BY_REF, (Int(r.owner), r.id), f.slot))
    end
end

function Serialization.deserialize(s::AbstractSerializer, ::Type{Future})
    where, whence, raw, kind, payload, slot = deserialize(s)
    if kind == FUT_VALUE
        return Future(where, whence, Some{Any}(payload), nothing, raw, slot)
    elseif kind == FUT_ERROR
        return Future(where, whence, nothing, payload, raw, slot)
    end
    owner, id = payload
    check_pid(owner)
    r = Ref(CAPI.FutureRef(Int32(owner), UInt64(id)))
    out = Ref{Ptr{Cvoid}}(C_NULL)
    check_call(CAPI.cluster_future_import(context(), r, out), owner)
    Future(out[], where, whence; raw = raw, imported = true, slot = slot)
end
