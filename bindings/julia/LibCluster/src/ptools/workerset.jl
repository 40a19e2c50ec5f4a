# PTools' WorkerSet, in Julia over LibCluster's remotecall (not over
# cluster_workerset): each call then goes out encoded for the worker it is
# sent to, so closure types and Main globals travel once per worker as with
# any remotecall (the C set picks the worker after the payload is made, which
# would resend them with every call), errors name the worker that raised
# them, and results come back in the caller's task with no C callback.

export WS_MODE_RR, WS_MODE_FF, WorkerSet

const WS_MODE_RR = 1    # round robin
const WS_MODE_FF = 2    # first free

"""
    WorkerSet(pids, mode = WS_MODE_RR)

A set of workers for `remotecall`, `remotecall_fetch` and `remotecall_wait`
(PTools'). `WS_MODE_RR`: calls go to the workers in turn, wrapping (2, 3, 4,
2, ... for `[2, 3, 4]`); workers that have exited are skipped.
`WS_MODE_FF`: each call goes to an idle worker (the one idle longest); while
all are busy, callers queue in FIFO order and each worker that finishes a
call, failed or not, goes to the oldest. Queued calls are never dropped:
they fail only when no worker of the set is left alive.
"""
mutable struct WorkerSet
    idset::Vector{Int}
    mode::Int
    nextidx::Int                    # RR: index of the next worker
    freeset::Vector{Int}            # FF: idle workers, longest idle first
    busy::Int                       # FF: workers running a call of the set
    waiters::Vector{Channel{Any}}   # FF: queued callers, oldest first; each gets a pid or an exception
    lock::ReentrantLock

    function WorkerSet(pids, mode::Integer = WS_MODE_RR)
        ids = unique!(Int[p for p in pids])
        isempty(ids) && throw(ArgumentError("a WorkerSet needs at least one worker"))
        mode in (WS_MODE_RR, WS_MODE_FF) || throw(ArgumentError("unsupported WorkerSet mode $mode"))
        new(ids, Int(mode), 1, copy(ids), 0, Channel{Any}[], ReentrantLock())
    end
end

Base.show(io::IO, ws::WorkerSet) =
    print(io, "WorkerSet(", ws.idset, ", ", ws.mode == WS_MODE_RR ? "WS_MODE_RR" : "WS_MODE_FF", ")")

no_worker_left(ws::WorkerSet) = ErrorException("no live worker left in $ws")

"PTools' `chooseproc`: the next live worker in turn (RR)."
function chooseproc(ws::WorkerSet)
    live = procs()
    lock(ws.lock) do
        n = length(ws.idset)
        for _ in 1:n
            i = ws.nextidx > n ? 1 : ws.nextidx
            ws.nextidx = i + 1
            p = ws.idset[i]
            p in live && return p
        end
        throw(no_worker_left(ws))
    end
end

"FF: an idle live worker, waiting in FIFO order while none is."
function take_worker!(ws::WorkerSet)
    live = procs()
    ch = lock(ws.lock) do
        while !isempty(ws.freeset)
            p = popfirst!(ws.freeset)
            if p in live
                ws.busy += 1
                return p
            end
        end
        ws.busy == 0 && throw(no_worker_left(ws))
        c = Channel{Any}(1)
        push!(ws.waiters, c)
        c
    end
    ch isa Int && return ch
    got = take!(ch)
    got isa Exception && throw(got)
    got::Int
end

"FF: worker `p` finished a call: to the oldest waiter, else idle again (unless it died)."
function give_back!(ws::WorkerSet, p::Int, died::Bool = false)
    alive = !died && p in procs()
    lock(ws.lock) do
        if alive && !isempty(ws.waiters)
            put!(popfirst!(ws.waiters), p)      # stays busy, for the waiter
        else
            ws.busy -= 1
            alive && push!(ws.freeset, p)
            # Waiters exist only while no worker is idle: with none busy
            # either, nothing will ever come back for them.
            if ws.busy == 0 && isempty(ws.freeset)
                foreach(c -> put!(c, no_worker_left(ws)), ws.waiters)
                empty!(ws.waiters)
            end
        end
    end
    nothing
end

"FF: `call(f, p, args...)` on a free worker `p`, which comes back when it returns or throws."
function on_free_worker(call, ws::WorkerSet, @nospecialize(f), @nospecialize(args), kwargs)
    p = take_worker!(ws)
    died = false
    try
        return call(f, p, args...; kwargs...)
    catch err
        died = exited(err, p)
        rethrow()
    finally
        give_back!(ws, p, died)
    end
end

# (The library may not have marked it gone yet when its calls fail.)
exited(err, p::Int) = err isa ProcessExitedException && err.worker_id == p

"""
    remotecall(f, ws::WorkerSet, args...; kwargs...) -> Future

On the next worker (RR) or an idle one (FF). PTools allows it only in RR
mode; in FF mode here the call waits in its task for an idle worker (as
Distributed's `remotecall(f, ::WorkerPool)`), and the worker returns to the
set when the call completes.
"""
function remotecall(@nospecialize(f), ws::WorkerSet, @nospecialize(args...); kwargs...)
    ws.mode == WS_MODE_RR && return remotecall(f, chooseproc(ws), args...; kwargs...)
    p = take_worker!(ws)
    fut = try
        remotecall(f, p, args...; kwargs...)
    catch
        give_back!(ws, p)
        rethrow()
    end
    @async begin
        died = false
        try
            wait(fut)
        catch err
            died = exited(err, p)
        end
        give_back!(ws, p, died)
    end
    fut
end

"`remotecall_fetch` on the next worker (RR) or an idle one (FF, queued FIFO while none is)."
function remotecall_fetch(@nospecialize(f), ws::WorkerSet, @nospecialize(args...); kwargs...)
    ws.mode == WS_MODE_RR && return remotecall_fetch(f, chooseproc(ws), args...; kwargs...)
    on_free_worker(remotecall_fetch, ws, f, args, kwargs)
end

"`remotecall_wait` on the next worker (RR) or an idle one (FF, queued FIFO while none is)."
function remotecall_wait(@nospecialize(f), ws::WorkerSet, @nospecialize(args...); kwargs...)
    ws.mode == WS_MODE_RR && return remotecall_wait(f, chooseproc(ws), args...; kwargs...)
    on_free_worker(remotecall_wait, ws, f, args, kwargs)
end

# PTools' own argument order (from Julia 0.3): `remotecall_fetch(ws, f, args...)`.
remotecall(ws::WorkerSet, @nospecialize(f), @nospecialize(args...); kwargs...) = remotecall(f, ws, args...; kwargs...)
remotecall_fetch(ws::WorkerSet, @nospecialize(f), @nospecialize(args...); kwargs...) = remotecall_fetch(f, ws, args...; kwargs...)
remotecall_wait(ws::WorkerSet, @nospecialize(f), @nospecialize(args...); kwargs...) = remotecall_wait(f, ws, args...; kwargs...)
