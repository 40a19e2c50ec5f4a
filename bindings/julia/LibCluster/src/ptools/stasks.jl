# PTools' server tasks: one long-lived Julia task per worker, serving the
# calls of `pmap_stasks` one after another, so that what a call keeps in
# `task_local_storage` is there for the next.
#
# On each process a server task reads a local Channel of requests. A call
# reaches it as a plain LibCluster remotecall of `stask_call` (which runs in
# a task of its own there, queues the request and waits for the server
# task's answer): replies, remote errors and a dead worker's
# ProcessExitedException then come back by the paths of any remotecall,
# and nothing waits on a process that is gone.

export start_stasks, count_stasks, pmap_stasks, stop_stasks

"""
    STasks

The handle [`start_stasks`](@ref) returns: the server tasks, one per
process of `pids`, in task order.
"""
mutable struct STasks
    key::Tuple{Int,Int}     # (the starting process, a number): names the tasks on each process
    pids::Vector{Int}
    running::Bool
end

Base.show(io::IO, h::STasks) =
    print(io, "STasks(", length(h.pids), " tasks on ", h.pids, h.running ? "" : ", stopped", ")")

const NEXT_STASKS = Ref(0)

# ------------------------------------------------------ on the serving side

struct ServerTask
    inbox::Channel{Any}     # (f, args, reply channel)
    task::Task
end

"The server tasks this process runs, by handle key."
const SERVER_TASKS = Dict{Tuple{Int,Int},ServerTask}()

"A call's failure in a server task, with its worker and backtrace (unwrapped on arrival)."
struct STaskError <: Exception
    pid::Int
    err::Any
    frames::Vector{Any}
end
Base.showerror(io::IO, e::STaskError) = (print(io, "in the server task on process ", e.pid, ": "); showerror(io, e.err))

"The frames of `bt` above the server task's loop."
function task_frames(bt)
    frames = LibCluster.portable_backtrace(bt)
    cut = findfirst(fr -> fr isa Tuple && first(fr) isa Base.StackTraces.StackFrame && first(fr).func === :serve_stask,
                    frames)
    cut === nothing || (frames = frames[1:cut-1])
    while !isempty(frames) && occursin("invokelatest", String(first(frames[end]).func))
        pop!(frames)
    end
    frames
end

function serve_stask(inbox::Channel{Any})
    for (f, args, reply) in inbox
        out = try
            # Functions defined after the task started: the latest world.
            (true, Base.invokelatest(f, args...))
        catch err
            (false, STaskError(myid(), err, task_frames(catch_backtrace())))
        end
        put!(reply, out)
    end
end

"Starts the server task `key` on this process."
function stask_start(key::Tuple{Int,Int})
    haskey(SERVER_TASKS, key) && error("server task $key runs already on process $(myid())")
    inbox = Channel{Any}(Inf)
    t = @async serve_stask(inbox)
    SERVER_TASKS[key] = ServerTask(inbox, t)
    nothing
end

"Runs `f(args...)` in server task `key` of this process, after the calls queued before it."
function stask_call(key::Tuple{Int,Int}, f, args::Tuple)
    s = get(SERVER_TASKS, key, nothing)
    s === nothing && error("no server task $key on process $(myid()) (stopped?)")
    reply = Channel{Any}(1)
    bind(reply, s.task)        # the task's end closes it: no wait outlives the task
    put!(s.inbox, (f, args, reply))
    ok, v = take!(reply)
    ok ? v : throw(v)
end

"Stops server task `key` of this process once the calls queued before have run."
function stask_stop(key::Tuple{Int,Int})
    s = pop!(SERVER_TASKS, key, nothing)
    s === nothing || close(s.inbox)
    nothing
end

"Run in each server task: its views of the segments, in its task-local storage."
function stask_bind(specs::Vector{Tuple{Symbol,Any}}, prefix::String)
    for (name, T) in specs
        task_local_storage(name, view_of(name, prefix, T))
    end
    nothing
end

# ------------------------------------------------------ on the caller's side

"A failure as the caller sees it: a server task's error named by its worker, with its own backtrace."
function stask_failure(err)
    if err isa RemoteException && err.captured.ex isa STaskError
        e = err.captured.ex
        return RemoteException(e.pid, CapturedException(e.err, e.frames))
    end
    err
end

"""
    pmap_stasks(h::STasks, f, lsts...)

Runs `f(lsts[1][i], lsts[2][i], ...)` in server task `i`, for every task at
once, and returns as PTools: `(:ok, responses)` when every call returned,
otherwise `(statuses, responses)`; both in task order, `statuses[i]`
`:ok` or `:err`. A failed call's response is its exception: a
`RemoteException` naming the worker (the task keeps serving), or a
`ProcessExitedException` when the worker is gone. Every list must have one
element per task ([`count_stasks`](@ref)). State a call keeps with
`task_local_storage` is there for the task's next calls.
"""
function pmap_stasks(h::STasks, f, lsts...)
    h.running || error("pmap_stasks: $h was stopped")
    n = length(h.pids)
    for (j, l) in enumerate(lsts)
        length(l) == n || throw(DimensionMismatch("pmap_stasks: $n server tasks, but list $j has $(length(l)) " *
                                                  "elements (one per task: see count_stasks)"))
    end
    lists = map(l -> l isa AbstractArray ? l : collect(l), lsts)
    futures = Vector{Any}(undef, n)
    for (i, p) in enumerate(h.pids)
        args = map(l -> l[firstindex(l) + i - 1], lists)
        futures[i] = try
            remotecall(stask_call, p, h.key, f, args)
        catch err
            err     # e.g. the worker is gone already
        end
    end
    statuses = Vector{Symbol}(undef, n)
    responses = Vector{Any}(undef, n)
    for i in 1:n
        fu = futures[i]
        try
            fu isa Exception && throw(fu)
            responses[i] = fetch(fu)
            statuses[i] = :ok
        catch err
            responses[i] = stask_failure(err)
            statuses[i] = :err
        end
    end
    all(==(:ok), statuses) ? (:ok, responses) : (statuses, responses)
end

"""
    count_stasks(h::STasks) -> Int

The number of server tasks: the length `pmap_stasks` wants of each list.
"""
count_stasks(h::STasks) = length(h.pids)

"""
    start_stasks(shmcfg = false, shmpfx = false) -> STasks

Starts one long-lived server task on each worker (on process 1 when it is
alone), as PTools. With `shmcfg` (a [`ShmCfg`](@ref) or an array of them),
first creates those segments (replacing segments of the same names, as
[`pmap_shm_create`](@ref)) and binds each array to its name in the
task-local storage of every server task and of the calling task
(`task_local_storage(:svar1)`). `shmpfx` is the segments' prefix (`false`:
none).
"""
function start_stasks(shmcfg = false, shmpfx = false)
    pids = length(procs()) > 1 ? workers() : [myid()]
    NEXT_STASKS[] += 1
    h = STasks((myid(), NEXT_STASKS[]), pids, true)
    started = Int[]
    try
        futures = [(p, remotecall(stask_start, p, h.key)) for p in pids]
        for (p, f) in futures
            fetch(f)
            push!(started, p)
        end
        if !(shmcfg === false || shmcfg === nothing)
            cfgs = cfg_list(shmcfg)
            prefix = prefix_of(shmpfx)
            specs = Tuple{Symbol,Any}[(c.sname, c.stype) for c in cfgs]
            create_segments(cfgs, prefix)
            try
                status, resp = pmap_stasks(h, stask_bind, fill(specs, length(pids)), fill(prefix, length(pids)))
                if status !== :ok
                    i = findfirst(==(:err), status)
                    throw(resp[i])
                end
                stask_bind(specs, prefix)       # and in the caller's task
            catch
                unlink_shm(specs_names(specs), prefix)
                rethrow()
            end
        end
    catch
        h.pids = started
        stop_tasks!(h)
        rethrow()
    end
    h
end

specs_names(specs) = Symbol[first(s) for s in specs]

function stop_tasks!(h::STasks)
    h.running = false
    on_each_live(stask_stop, filter(in(procs()), h.pids), h.key)
end

"""
    stop_stasks(h::STasks, shmcfg = false, shmpfx = false)

Stops the server tasks (each once the calls queued before have run) and,
with `shmcfg`, unlinks those segments ([`unlink_shm`](@ref)).
"""
function stop_stasks(h::STasks, shmcfg = false, shmpfx = false)
    h.running && stop_tasks!(h)
    shmcfg === false || shmcfg === nothing || unlink_shm(shmcfg, prefix_of(shmpfx))
    nothing
end
