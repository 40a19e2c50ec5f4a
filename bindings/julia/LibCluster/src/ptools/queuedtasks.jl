# PTools' queued tasks over the library's task queue (cluster_taskqueue),
# which already has PTools' scheduling: a queue per target, the lowest
# priority first and the oldest among equals, a task for several targets
# run once, per-worker sequential runs, dequeue and re-prioritising, and
# failure instead of a hang when the targets die.
#
# Julia's part: the remote method and its WorkerTask travel as a LibCluster
# call (CALL_FN) of `run_worker_task`; each library task's future is awaited
# by a Julia task, which decodes the result and then runs the user's
# callback, outside any library callback. A task for all workers is queued
# as one library task per worker (each with its own future, so that every
# run's result reaches the callback); PTools too queues it per process.
# `set_priorities` and `dequeue_worker_task(filter)` read the queue in a
# library callback that only copies, then call the user's function in Julia.

export num_remotes, prep_remotes, execute_worker_task, queue_worker_task, dequeue_worker_task,
       set_priorities, WorkerTask, QueuedWorkerTask

"Abstract type of a task's data (PTools'): define your task types as subtypes, on every process."
abstract type WorkerTask end

const TaskTarget = Union{Int,String,Symbol,Vector{String},Vector{Int}}

target_of(t::Integer) = Int(t)
target_of(t::AbstractString) = String(t)
target_of(t::Symbol) = t
target_of(t::AbstractVector{<:Integer}) = Int[x for x in t]
target_of(t::AbstractVector{<:AbstractString}) = String[x for x in t]
target_of(t) = throw(ArgumentError("a task target is a pid, a host, a list of either, :wrkr_any or :wrkr_all; got $(repr(t))"))

"""
    QueuedWorkerTask(wtask::WorkerTask, remote_method, callback, target)

A task for [`queue_worker_task`](@ref) / [`execute_worker_task`](@ref), as
PTools': `remote_method(wtask)` runs on a worker of `target` (a pid, a list
of pids, a host name or address or a list of them, `:wrkr_any`, or
`:wrkr_all` for once on each worker), then `callback(wtask, ret)` on this
process (`nothing` for none), `ret` being the result or the exception
(`RemoteException`, `ProcessExitedException`). `qtime` is when it was made.
`wait(t)` waits for its runs; `fetch(t)` then returns the result (throws
it if it is an exception).
"""
mutable struct QueuedWorkerTask
    wtask::WorkerTask
    remote_method::Function
    callback::Union{Function,Nothing}
    target::TaskTarget
    qtime::Float64
    # LibCluster's: the library's tasks of the latest queueing, its runs
    # not finished yet, and their outcomes in the order they came.
    ids::Vector{UInt64}
    pending::Int
    results::Vector{Any}
    done::Condition

    function QueuedWorkerTask(wtask::WorkerTask, remote_method::Function, callback::Union{Function,Nothing}, target)
        new(wtask, remote_method, callback, target_of(target), time(), UInt64[], 0, Any[], Condition())
    end
end

Base.show(io::IO, t::QueuedWorkerTask) =
    print(io, "QueuedWorkerTask(", t.wtask, ", ", t.remote_method, ", target = ", repr(t.target), ")")

# ------------------------------------------------------------- the queue

# One queue per process, as PTools' globals; a new one for a new cluster.
const QUEUE = Ref{Tuple{Ptr{Cvoid},Ptr{Cvoid}}}((C_NULL, C_NULL))
# The library's task ids => their QueuedWorkerTask, while queued or running.
const TASKS = Dict{UInt64,QueuedWorkerTask}()

function the_queue()
    ctx = context()
    c, h = QUEUE[]
    c == ctx && h != C_NULL && return h
    h == C_NULL || CAPI.cluster_taskqueue_free(h)     # of an earlier cluster
    empty!(TASKS)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(CAPI.cluster_taskqueue_new(ctx, out))
    QUEUE[] = (ctx, out[])
    out[]
end

"""
    prep_remotes(force::Bool = false)

Learns every worker's host name and address (for host targets); done once
unless `force`. Waits in this task only.
"""
function prep_remotes(force::Bool = false)
    tq = the_queue()
    LibCluster.run_op(out -> CAPI.cluster_taskqueue_prep_remotes_async(tq, force, out))
    nothing
end

"""
    num_remotes() -> Int

The workers `prep_remotes` learned of (PTools counts process 1 too).
"""
function num_remotes()
    n = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_taskqueue_num_remotes(the_queue(), n))
    Int(n[])
end

# ------------------------------------------------------------- running

"A remote method's failure, with the worker it failed on (unwrapped on arrival)."
struct TaskRunError <: Exception
    pid::Int
    err::Any
end
Base.showerror(io::IO, e::TaskRunError) = (print(io, "on worker ", e.pid, ": "); showerror(io, e.err))

"What a worker runs for a task: the method, and its id with the result."
function run_worker_task(method, wtask)
    try
        return (myid(), method(wtask))
    catch err
        rethrow(TaskRunError(myid(), err))    # keeps the method's backtrace
    end
end

# (kind, pids, hosts) of the library tasks for a target.
function library_targets(target)
    target isa Int && return [(CAPI.CLUSTER_TARGET_PIDS, Int32[target], String[])]
    target isa Vector{Int} && return [(CAPI.CLUSTER_TARGET_PIDS, Int32.(target), String[])]
    target isa String && return [(CAPI.CLUSTER_TARGET_HOSTS, Int32[], [target])]
    target isa Vector{String} && return [(CAPI.CLUSTER_TARGET_HOSTS, Int32[], target)]
    target === :wrkr_any && return [(CAPI.CLUSTER_TARGET_ANY, Int32[], String[])]
    target === :wrkr_all && return [(CAPI.CLUSTER_TARGET_PIDS, Int32[w], String[]) for w in workers()]
    error("unknown queue $(target)")
end

"""
    queue_worker_task(t::QueuedWorkerTask) -> t

Queues `t` to run when a worker of its target is free (PTools'). Queued
again while queued, its runs not started yet are replaced (PTools keeps one
entry per task). Results go to `t.callback`; `wait(t)` / `fetch(t)` wait.
"""
function queue_worker_task(t::QueuedWorkerTask)
    tq = the_queue()
    for id in copy(t.ids)
        if dequeue_library_task(tq, id)
            filter!(!=(id), t.ids)      # its future's outcome is ignored
            t.pending -= 1
        end
    end
    t.pending == 0 && empty!(t.results)
    targets = library_targets(t.target)
    io = encode_call(0, run_worker_task, (t.remote_method, t.wtask), ())
    name = CALL_FN
    for (kind, pids, hosts) in targets
        spec = Ref{CAPI.TaskSpec}()
        CAPI.check(CAPI.cluster_task_spec_init(spec))
        hostptrs = [pointer(h) for h in hosts]
        id = Ref{UInt64}(0)
        out = Ref{Ptr{Cvoid}}(C_NULL)
        st = GC.@preserve io name pids hosts hostptrs begin
            spec[] = CAPI.with_fields(spec[]; name = pointer(name), args = pointer(io.data), len = Csize_t(io.size),
                                      target = kind, pids = pointer(pids), npids = length(pids),
                                      hosts = pointer(hostptrs), nhosts = length(hostptrs))
            CAPI.cluster_taskqueue_queue(tq, spec, id, out)
        end
        if st != CAPI.CLUSTER_OK
            # A worker that left since workers() was read: no run for it.
            t.target === :wrkr_all && st in (CAPI.CLUSTER_ERR_NO_SUCH_PROCESS, CAPI.CLUSTER_ERR_PROCESS_EXITED) && continue
            check_call(st, length(pids) == 1 ? pids[1] : 0)
        end
        push!(t.ids, id[])
        t.pending += 1
        TASKS[id[]] = t
        run_pid = length(pids) == 1 ? Int(pids[1]) : 0
        h = out[]
        @async await_run(t, id[], h, run_pid)
    end
    t
end

"Waits for a library task's future, then records its outcome and runs the callback."
function await_run(t::QueuedWorkerTask, id::UInt64, h::Ptr{Cvoid}, run_pid::Int)
    ran, ret = try
        fid = Ref{UInt64}(0)
        CAPI.check(CAPI.cluster_future_id(h, fid))
        park_until_ready(h, fid[])
        run_outcome(h, run_pid)
    catch err
        (false, err)        # the cluster was shut down meanwhile
    finally
        CAPI.cluster_future_free(h)
    end
    delete!(TASKS, id)
    id in t.ids || return   # replaced by a later queue_worker_task
    filter!(!=(id), t.ids)
    push!(t.results, ret)
    if ran && t.callback !== nothing
        try
            Base.invokelatest(t.callback, t.wtask, ret)
        catch err
            @error "PTools: the callback of $t failed" exception = (err, catch_backtrace())
        end
    end
    t.pending -= 1
    notify(t.done)
    nothing
end

"`(ran, ret)` of a completed task future: `ran` false if it never ran (dequeued, shut down)."
function run_outcome(h::Ptr{Cvoid}, run_pid::Int)
    data = Ref{Ptr{UInt8}}(C_NULL)
    len = Ref{Csize_t}(0)
    st = CAPI.cluster_future_fetch(h, 0, data, len)
    if st != CAPI.CLUSTER_OK
        err = CAPI.last_error(st)
        st == CAPI.CLUSTER_ERR_INTERRUPTED && return (false, ErrorException("the task was dequeued before it ran"))
        st == CAPI.CLUSTER_ERR_SHUTDOWN && return (false, err)
        return (true, library_exception(err, run_pid, true))
    end
    bytes = len[] == 0 ? UInt8[] : copy(unsafe_wrap(Array, data[], Int(len[])))
    # Objects a reply refers to are known per sender: unknown sender, a fresh table.
    key = run_pid != 0 ? run_pid : -1
    ok, v = decode_reply(bytes, key)
    key == -1 && lock(() -> delete!(LibCluster.KNOWN_OBJECTS, -1), LibCluster.SERIAL_LOCK)
    if ok
        v isa Tuple{Int,Any} || return (true, v)
        return (true, v[2])
    end
    if v isa RemoteException && v.captured.ex isa TaskRunError
        e = v.captured.ex
        bt = v.captured.processed_bt
        cut = findfirst(fr -> fr isa Tuple && first(fr) isa Base.StackTraces.StackFrame &&
                              first(fr).func === :run_worker_task, bt)
        cut === nothing || (bt = bt[1:cut-1])     # LibCluster's frames below the method
        return (true, RemoteException(e.pid, CapturedException(e.err, bt)))
    end
    (true, v)
end

"""
    wait(t::QueuedWorkerTask) -> t

Waits until every run of `t`'s latest queueing has finished (or was dequeued).
"""
function Base.wait(t::QueuedWorkerTask)
    while t.pending > 0
        wait(t.done)
    end
    t
end

"""
    fetch(t::QueuedWorkerTask)

`wait(t)`, then its result (for `:wrkr_all`, the first run's to finish, as
PTools' `execute_worker_task`); throws it if it is an exception.
"""
function Base.fetch(t::QueuedWorkerTask)
    wait(t)
    isempty(t.results) && return nothing
    r = t.results[1]
    r isa Exception && throw(r)
    r
end

"""
    execute_worker_task(t::QueuedWorkerTask)

Queues `t`, waits for it and returns its result, throwing it if it is an
exception (PTools'). As in PTools, `t`'s own callback is replaced (by
`nothing` here): it is not called.
"""
function execute_worker_task(t::QueuedWorkerTask)
    t.callback = nothing
    queue_worker_task(t)
    fetch(t)
end

# ------------------------------------------------------- dequeue, priorities

function dequeue_library_task(tq::Ptr{Cvoid}, id::UInt64)
    removed = Ref(false)
    CAPI.check(CAPI.cluster_taskqueue_dequeue(tq, id, removed))
    removed[]
end

"""
    dequeue_worker_task(t::QueuedWorkerTask) -> Bool

Removes `t` if it has not started (for `:wrkr_all`, its runs that have
not); whether anything was removed. Waiters on `t` then get an error.
"""
function dequeue_worker_task(t::QueuedWorkerTask)
    tq = the_queue()
    removed = false
    for id in copy(t.ids)
        removed |= dequeue_library_task(tq, id)
    end
    removed
end

"""
    dequeue_worker_task(filter_fn::Function) -> Int

Dequeues every queued task `t` for which `filter_fn(t)` is false (PTools');
how many.
"""
function dequeue_worker_task(filter_fn::Function)
    n = 0
    for t in unique(e[1] for e in queued_entries())
        filter_fn(t) || (dequeue_worker_task(t) && (n += 1))
    end
    n
end

# An entry's key: (library id, queue kind, pid, host).
const EntryKey = Tuple{UInt64,Int32,Int32,String}
const SEEN = Tuple{EntryKey,Float64}[]
const NEW_PRIORITY = Dict{EntryKey,Float64}()

entry_key(i::CAPI.TaskInfo) = (i.id, i.queue, i.pid, i.host == C_NULL ? "" : unsafe_string(i.host))

# Library callbacks, run inside cluster_taskqueue_set_priorities: they only
# copy or look up (no task switch), NaN leaving an entry as it is.
function see_entry(::Ptr{Cvoid}, info::Ptr{CAPI.TaskInfo})::Float64
    try
        i = unsafe_load(info)
        push!(SEEN, (entry_key(i), i.priority))
    catch
    end
    NaN
end

function new_priority(::Ptr{Cvoid}, info::Ptr{CAPI.TaskInfo})::Float64
    try
        get(NEW_PRIORITY, entry_key(unsafe_load(info)), NaN)
    catch
        NaN
    end
end

"The queued entries: `(task, target key, priority)`, the key as PTools' `calc_prio` gets it."
function queued_entries()
    tq = the_queue()
    empty!(SEEN)
    CAPI.check(CAPI.cluster_taskqueue_set_priorities(tq, @cfunction(see_entry, Float64, (Ptr{Cvoid}, Ptr{CAPI.TaskInfo})), C_NULL))
    out = Tuple{QueuedWorkerTask,Any,Float64,EntryKey}[]
    for (k, prio) in SEEN
        t = get(TASKS, k[1], nothing)
        t === nothing && continue
        target = k[2] == CAPI.CLUSTER_QUEUE_ANY ? :wrkr_any : k[2] == CAPI.CLUSTER_QUEUE_PID ? Int(k[3]) : k[4]
        push!(out, (t, target, prio, k))
    end
    empty!(SEEN)
    out
end

"""
    set_priorities(calc_prio::Function)

Sets each queued entry's priority to `calc_prio(target, t, priority)`
(PTools'): `target` the entry's queue (a pid, a host, or `:wrkr_any`), `t`
its `QueuedWorkerTask`, `priority` its priority now (`Inf` unless set).
Lower values run first; among equals, the oldest.
"""
function set_priorities(calc_prio::Function)
    entries = queued_entries()
    empty!(NEW_PRIORITY)
    for (t, target, prio, k) in entries
        NEW_PRIORITY[k] = Float64(calc_prio(target, t, prio))
    end
    try
        CAPI.check(CAPI.cluster_taskqueue_set_priorities(the_queue(),
            @cfunction(new_priority, Float64, (Ptr{Cvoid}, Ptr{CAPI.TaskInfo})), C_NULL))
    finally
        empty!(NEW_PRIORITY)
    end
    nothing
end
