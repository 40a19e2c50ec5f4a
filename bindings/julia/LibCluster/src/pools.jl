# Worker pools (Distributed's WorkerPool, CachingPool, default_worker_pool)
# over libcluster's pool service, and the cache of functions on workers that
# CachingPool and pmap share.
#
# A WorkerPool is a `cluster_pool` handle: take!/put!/push! and the skipping
# of dead members are the library's; a take that must wait is a future this
# task waits on. remotecall & co. on a pool take a worker, call, and put the
# worker back once the call has completed.

"""
    AbstractWorkerPool

Supertype of [`WorkerPool`](@ref) and [`CachingPool`](@ref), as Distributed's:
`push!`, `put!`, `take!`, `wait`, `length`, `isready`, `workers`.
"""
abstract type AbstractWorkerPool end

"""
    WorkerPool(pids)
    WorkerPool()

A pool of processes, all free at first. `take!` waits (in the calling task)
for a free member, skipping members that died; a pool left with no live
member fails with "No active worker available in pool". As Distributed's; passed
to another process it arrives as a [`RemotePool`](@ref) of this one.
"""
mutable struct WorkerPool <: AbstractWorkerPool
    handle::Ptr{Cvoid}
    is_default::Bool
    populated::Bool         # was ever given a member (an empty pool maps locally, as Distributed)
    export_id::Int          # its number for other processes (0: never passed on)
    function WorkerPool(handle::Ptr{Cvoid}, is_default::Bool, populated::Bool)
        p = new(handle, is_default, populated, 0)
        finalizer(free_pool!, p)
        p
    end
end

function free_pool!(p::WorkerPool)
    h = p.handle
    if h != C_NULL
        p.handle = C_NULL
        CAPI.LIB_HANDLE[] != C_NULL && RT.ctx != C_NULL && CAPI.cluster_pool_free(h)
    end
    nothing
end

function WorkerPool(pids::Union{AbstractVector{<:Integer},AbstractRange{<:Integer}})
    ids = Int32[Int32(p) for p in pids]
    out = Ref{Ptr{Cvoid}}(C_NULL)
    check_call(CAPI.cluster_pool_new(context(), ids, Csize_t(length(ids)), out))
    WorkerPool(out[], false, !isempty(ids))
end
WorkerPool() = WorkerPool(Int[])

function Base.show(io::IO, p::WorkerPool)
    print(io, "WorkerPool(", pool_handle(p) == C_NULL ? "freed" : string(workers(p)), ")")
end

@inline function pool_handle(p::WorkerPool)
    h = p.handle
    h == C_NULL && error("LibCluster: this WorkerPool was freed (its cluster was shut down)")
    h
end

const DEFAULT_POOL = Ref{Union{Nothing,AbstractWorkerPool}}(nothing)

"""
    default_worker_pool()

The pool of every worker (following `addprocs` and `rmprocs`), used by
`pmap` and `remote` when no pool is given; process 1 alone while there is
no worker, as Distributed's.
"""
function default_worker_pool()
    p = DEFAULT_POOL[]
    (p isa WorkerPool && p.handle == C_NULL) && (p = nothing)   # a cluster shut down since
    if p === nothing
        out = Ref{Ptr{Cvoid}}(C_NULL)
        check_call(CAPI.cluster_pool_default(context(), out))
        p = DEFAULT_POOL[] = WorkerPool(out[], true, true)
    end
    p
end

"""
    default_worker_pool!(pool)

Sets the pool `pmap` and `remote` use by default (Distributed's).
"""
default_worker_pool!(pool::AbstractWorkerPool) = (DEFAULT_POOL[] = pool)

const NO_ACTIVE_WORKER = "No active worker available in pool"

"The Distributed-style exception of a failed pool operation."
function pool_exception(err::CAPI.ClusterError, target::Integer = 0)
    occursin("no active worker", lowercase(err.msg)) && return ErrorException(NO_ACTIVE_WORKER)
    library_exception(err, target, true)
end

function Base.push!(p::WorkerPool, pid::Integer)
    check_call(CAPI.cluster_pool_push(pool_handle(p), Int32(pid)), pid)
    p.populated = true
    p
end

function Base.put!(p::WorkerPool, pid::Integer)
    h = p.handle
    h == C_NULL || CAPI.cluster_pool_put(h, Int32(pid))
    Int(pid)
end

"""
    take!(pool) -> pid

Takes a free worker, waiting in this task (other tasks run) until one is
free; members that died are skipped. Give it back with `put!(pool, pid)`.
"""
function Base.take!(p::WorkerPool)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    check_call(CAPI.cluster_pool_take_async(pool_handle(p), out))
    b = try
        await_op(out[])
    catch err
        err isa CAPI.ClusterError ? throw(pool_exception(err)) : rethrow()
    end
    length(b) == 4 || error("LibCluster: a pool take of $(length(b)) bytes")
    Int(ltoh(reinterpret(Int32, b)[1]))
end

"Number of live members, free or busy."
function Base.length(p::WorkerPool)
    n = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_pool_length(pool_handle(p), n))
    Int(n[])
end

"Whether a `take!` would not wait."
function Base.isready(p::WorkerPool)
    r = Ref(false)
    CAPI.check(CAPI.cluster_pool_isready(pool_handle(p), r))
    r[]
end

"""
    wait(pool)

Waits until a worker of the pool is free (taken and put back: it goes
behind the others free).
"""
Base.wait(p::AbstractWorkerPool) = (put!(p, take!(p)); nothing)

"The pool's live members (process 1 for the default pool while there is no worker)."
function workers(p::WorkerPool)
    ids = CAPI.read_ids(CAPI.cluster_pool_workers, pool_handle(p))
    (isempty(ids) && p.is_default) ? [1] : ids
end

nworkers(p::AbstractWorkerPool) = length(workers(p))

# ------------------------------------------- a pool used from another process

# Distributed passes a WorkerPool to other processes (its free list is a
# RemoteChannel kept by its creator). Here the copy is a RemotePool naming
# the creator and the pool's number, and each operation on it is a call to
# the creator, whose take! waits there for a free worker. The creator keeps
# the pool weakly: its own WorkerPool object decides how long it lives.

const EXPORTED_POOLS = Dict{Int,WeakRef}()
const EXPORTED_POOLS_LOCK = ReentrantLock()

"""
    RemotePool

A [`WorkerPool`](@ref) of another process (`owner`), as a WorkerPool passed
to this one arrives: `take!`, `put!`, `push!`, `length`, `isready`,
`workers` and calls on the pool go to the owner, so every process sharing
it takes turns on the same workers. `pmap` over it maps on a pool of its
workers made here.
"""
struct RemotePool <: AbstractWorkerPool
    owner::Int
    id::Int
end

function export_pool!(p::WorkerPool)
    lock(EXPORTED_POOLS_LOCK) do
        if p.export_id == 0
            filter!(kv -> kv[2].value !== nothing, EXPORTED_POOLS)
            p.export_id = isempty(EXPORTED_POOLS) ? 1 : maximum(keys(EXPORTED_POOLS)) + 1
        end
        EXPORTED_POOLS[p.export_id] = WeakRef(p)
        p.export_id
    end
end

function exported_pool(id::Integer)
    p = lock(() -> get(EXPORTED_POOLS, Int(id), WeakRef(nothing)).value, EXPORTED_POOLS_LOCK)
    p === nothing && throw(ErrorException("the WorkerPool $id of process $(RT.myid) no longer exists"))
    p::WorkerPool
end

function Serialization.serialize(s::AbstractSerializer, p::WorkerPool)
    Serialization.serialize(s, RemotePool(RT.myid, export_pool!(p)))
end

# On the owner: the operations a RemotePool asks for.
pool_take_for(id::Int) = take!(exported_pool(id))
pool_put_for(id::Int, pid::Int) = (put!(exported_pool(id), pid); nothing)
pool_push_for(id::Int, pid::Int) = (push!(exported_pool(id), pid); nothing)
pool_length_for(id::Int) = length(exported_pool(id))
pool_isready_for(id::Int) = isready(exported_pool(id))
pool_workers_for(id::Int) = workers(exported_pool(id))

"The owner's pool itself when this process is the owner."
local_or_nothing(p::RemotePool) = p.owner == RT.myid ? exported_pool(p.id) : nothing

# (A call to this process runs in the calling task: the owner's copy needs
# no branch of its own.)
Base.take!(p::RemotePool) = remotecall_fetch(pool_take_for, p.owner, p.id)
Base.put!(p::RemotePool, pid::Integer) = (remotecall_fetch(pool_put_for, p.owner, p.id, Int(pid)); Int(pid))
Base.push!(p::RemotePool, pid::Integer) = (remotecall_fetch(pool_push_for, p.owner, p.id, Int(pid)); p)
Base.length(p::RemotePool) = remotecall_fetch(pool_length_for, p.owner, p.id)
Base.isready(p::RemotePool) = remotecall_fetch(pool_isready_for, p.owner, p.id)
workers(p::RemotePool) = remotecall_fetch(pool_workers_for, p.owner, p.id)
pool_call(rc, @nospecialize(f), ::RemotePool, w::Int, @nospecialize(args::Tuple), kwargs) = rc(f, w, args...; kwargs...)
Base.show(io::IO, p::RemotePool) = print(io, "RemotePool(owner ", p.owner, ", ", p.id, ")")

"A pool the map engine of this process can use: a RemotePool's workers, here."
engine_pool(p::AbstractWorkerPool) = p
engine_pool(p::RemotePool) = (l = local_or_nothing(p); l === nothing ? WorkerPool(workers(p)) : l)

# ------------------------------------------------------- calls on a pool

"""
    remotecall(f, pool::AbstractWorkerPool, args...; kwargs...) -> Future

Takes a free worker of `pool` (waiting for one) and calls `f` there; the
worker goes back to the pool once the call has completed.
"""
function remotecall(@nospecialize(f), pool::AbstractWorkerPool, @nospecialize(args...); kwargs...)
    w = take!(pool)
    fut = try
        pool_call(remotecall, f, pool, w, args, kwargs)
    catch
        put!(pool, w)
        rethrow()
    end
    @async try
        wait_ready(fut)
    catch
    finally
        put!(pool, w)
    end
    fut
end

"`remotecall_fetch` on a free worker of `pool`, given back when the call completes."
function remotecall_fetch(@nospecialize(f), pool::AbstractWorkerPool, @nospecialize(args...); kwargs...)
    w = take!(pool)
    try
        pool_call(remotecall_fetch, f, pool, w, args, kwargs)
    finally
        put!(pool, w)
    end
end

"`remotecall_wait` on a free worker of `pool`, given back when the call completes."
function remotecall_wait(@nospecialize(f), pool::AbstractWorkerPool, @nospecialize(args...); kwargs...)
    w = take!(pool)
    try
        pool_call(remotecall_wait, f, pool, w, args, kwargs)
    finally
        put!(pool, w)
    end
end

"""
    remote_do(f, pool::AbstractWorkerPool, args...; kwargs...) -> nothing

Runs `f` on a free worker of `pool`; nothing comes back, a failure is
printed there. The worker goes back to the pool when the call has
completed (Distributed puts it back at once, oversubscribing it).
"""
function remote_do(@nospecialize(f), pool::AbstractWorkerPool, @nospecialize(args...); kwargs...)
    w = take!(pool)
    fut = try
        pool_call(remotecall, run_remote_do, pool, w, (f, args...), kwargs)
    catch
        put!(pool, w)
        rethrow()
    end
    @async try
        wait_ready(fut)
    catch
    finally
        put!(pool, w)
    end
    nothing
end

"On the worker: runs a pool's `remote_do`, printing a failure there."
function run_remote_do(f, args...; kwargs...)
    try
        f(args...; kwargs...)
    catch err
        print_remote_do_error(err, catch_backtrace())
    end
    nothing
end

pool_call(rc, @nospecialize(f), ::WorkerPool, w::Int, @nospecialize(args::Tuple), kwargs) = rc(f, w, args...; kwargs...)

"""
    remote([pool], f) -> Function

A function that runs `f` on a free worker of `pool` (default:
`default_worker_pool()`) with `remotecall_fetch`.
"""
remote(f) = (args...; kwargs...) -> remotecall_fetch(f, default_worker_pool(), args...; kwargs...)
remote(p::AbstractWorkerPool, f) = (args...; kwargs...) -> remotecall_fetch(f, p, args...; kwargs...)

# ------------------------------------------------ functions cached on workers
#
# A function shipped once to a worker and then named by a number: what
# CachingPool keeps, and what pmap and @distributed send their function as.
# The owner (the process that made it) keeps it in SHARED_FNS with the
# workers that have it; a worker keeps FN_CACHE[(owner, number)]. A worker
# that meets a number it lacks asks the owner, which sends it (with the Main
# globals it uses, as any closure call does).

mutable struct SharedFn
    f::Any
    also::Tuple         # functions whose Main globals travel with it (a closure's parts)
    workers::Set{Int}
end

const SHARED_FNS = Dict{UInt64,SharedFn}()
const NEXT_FN_ID = Ref(UInt64(0))
const FN_CACHE = Dict{Tuple{Int,UInt64},Any}()
const FN_CACHE_INSTALLS = Ref(0)        # functions received (a test counts them)

function share_function(@nospecialize(f), also::Tuple = ())
    NEXT_FN_ID[] += 1
    id = NEXT_FN_ID[]
    SHARED_FNS[id] = SharedFn(f, also, Set{Int}())
    id
end

"Forgets function `id` here and on every worker that received it."
function unshare_function(id::UInt64)
    e = pop!(SHARED_FNS, id, nothing)
    e === nothing && return
    me = RT.myid
    for w in e.workers
        w == me && (delete!(FN_CACHE, (me, id)); continue)
        try
            remote_do(uncache_functions, w, me, Int[id])
        catch       # a worker gone meanwhile
        end
    end
    nothing
end

"On a worker: keeps `f` as function `id` of `owner` (`_also` only brought its globals)."
function install_cached(owner::Int, id::UInt64, f, _also...)
    FN_CACHE[(owner, id)] = f
    FN_CACHE_INSTALLS[] += 1
    nothing
end

"On a worker: drops the functions `ids` of `owner`."
function uncache_functions(owner::Int, ids::Vector{Int})
    for id in ids
        delete!(FN_CACHE, (owner, UInt64(id)))
    end
    nothing
end

"On the owner: sends function `id` to worker `w` (which asked for it)."
function send_function_to(id::UInt64, w::Int)
    e = get(SHARED_FNS, id, nothing)
    e === nothing && error("LibCluster: function $id of process $(RT.myid) is no longer shared (pool cleared or map over)")
    remotecall_fetch(install_cached, w, RT.myid, id, e.f, e.also...)
    push!(e.workers, w)
    nothing
end

"Function `id` of `owner`, fetched from the owner the first time."
function cached_function(owner::Int, id::UInt64)
    f = get(FN_CACHE, (owner, id), nothing)
    f === nothing || return f
    if owner == RT.myid
        e = get(SHARED_FNS, id, nothing)
        e === nothing && error("LibCluster: function $id is no longer shared")
        return e.f
    end
    remotecall_fetch(send_function_to, owner, id, RT.myid)
    get(FN_CACHE, (owner, id)) do
        error("LibCluster: function $id of process $owner did not arrive")
    end
end

"On a worker: runs the cached function `id` of `owner`."
run_cached(owner::Int, id::UInt64, args...; kwargs...) = cached_function(owner, id)(args...; kwargs...)

"On a worker: keeps `f` as function `id` of `owner`, then runs it."
function install_and_run(owner::Int, id::UInt64, f, args...; kwargs...)
    install_cached(owner, id, f)
    f(args...; kwargs...)
end

# ------------------------------------------------------------ CachingPool

"""
    CachingPool(pids)

A [`WorkerPool`](@ref) that sends each function (and what it captures) to
each worker once: later calls (`remotecall` & co., `pmap`) name it by a
number. `clear!(pool)` frees the functions on the workers (also done when
the pool is garbage collected, at the next pool operation).
"""
mutable struct CachingPool <: AbstractWorkerPool
    pool::WorkerPool
    ids::IdDict{Any,UInt64}
    function CachingPool(pool::WorkerPool)
        cp = new(pool, IdDict{Any,UInt64}())
        finalizer(cp) do c
            # No I/O in a finalizer: the next pool operation frees them.
            append!(PENDING_UNSHARE[], values(c.ids))
        end
        cp
    end
end

# Numbers of collected CachingPools' functions, freed by the next pool
# operation. Swapped, never copied: a finalizer may append while we take them.
const PENDING_UNSHARE = Ref(UInt64[])

CachingPool(pids::AbstractVector{<:Integer}) = CachingPool(WorkerPool(pids))
CachingPool() = CachingPool(Int[])

function unshare_pending()
    isempty(PENDING_UNSHARE[]) && return
    ids = PENDING_UNSHARE[]
    PENDING_UNSHARE[] = UInt64[]
    foreach(unshare_function, ids)
end

# Distributed's message; its cache is this process's (pass `cp.pool`, a WorkerPool, instead).
Serialization.serialize(::AbstractSerializer, ::CachingPool) = throw(ErrorException("CachingPool objects are not serializable."))

Base.show(io::IO, p::CachingPool) = print(io, "CachingPool(", workers(p.pool), ")")

"""
    clear!(pool::CachingPool) -> pool

Removes the pool's cached functions from every worker.
"""
function clear!(p::CachingPool)
    for id in values(p.ids)
        unshare_function(id)
    end
    empty!(p.ids)
    p
end

"The number of `f` in the pool's cache."
function cache_id!(p::CachingPool, @nospecialize(f))
    unshare_pending()
    id = get(p.ids, f, UInt64(0))
    id == 0 && (id = p.ids[f] = share_function(f))
    id
end

Base.push!(p::CachingPool, pid::Integer) = (push!(p.pool, pid); p)
Base.put!(p::CachingPool, pid::Integer) = put!(p.pool, pid)
Base.take!(p::CachingPool) = take!(p.pool)
Base.length(p::CachingPool) = length(p.pool)
Base.isready(p::CachingPool) = isready(p.pool)
workers(p::CachingPool) = workers(p.pool)

function pool_call(rc, @nospecialize(f), p::CachingPool, w::Int, @nospecialize(args::Tuple), kwargs)
    id = cache_id!(p, f)
    e = SHARED_FNS[id]
    w == RT.myid && return rc(f, w, args...; kwargs...)
    if w in e.workers
        return rc(run_cached, w, RT.myid, id, args...; kwargs...)
    end
    push!(e.workers, w)
    rc(install_and_run, w, RT.myid, id, f, args...; kwargs...)
end

# The C pool handle behind a pool.
c_pool(p::WorkerPool) = pool_handle(p)
c_pool(p::CachingPool) = pool_handle(p.pool)
c_pool(p::AbstractWorkerPool) = throw(ArgumentError("pmap over a $(typeof(p)): only WorkerPool and CachingPool are supported"))
populated(p::WorkerPool) = p.populated
populated(p::CachingPool) = p.pool.populated
populated(::AbstractWorkerPool) = true
