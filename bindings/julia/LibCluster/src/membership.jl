# Membership: process ids, adding and removing Julia workers, and the worker
# lifecycle callbacks (DistributedNext's names).

"""
    myid()

The id of this process: 1 on the head, 2, 3, ... on workers in the order they
were added.
"""
function myid()
    context()
    RT.myid
end

"Number of processes, this one included."
function nprocs()
    n = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_nprocs(context(), n))
    Int(n[])
end

"Number of workers (1 when the head is alone, as Distributed)."
function nworkers()
    n = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_nworkers(context(), n))
    Int(n[])
end

"All process ids, sorted, 1 included."
procs() = CAPI.read_ids(CAPI.cluster_procs, context())

"All worker ids (`[1]` when the head is alone)."
workers() = CAPI.read_ids(CAPI.cluster_workers, context())

"`procs()` without this process."
other_procs() = CAPI.read_ids(CAPI.cluster_other_procs, context())

"`workers()` without this process."
other_workers() = CAPI.read_ids(CAPI.cluster_other_workers, context())

"""
    procs(pid)

All processes on the same host as `pid`. Every LibCluster worker is launched
on this machine, so this is `procs()`.
"""
procs(pid::Integer) = procs()

# ----------------------------------------------------------- lifecycle

"""
    WorkerState

The final state passed to worker-exited callbacks:
`WorkerState_terminated` for a worker that left when asked (`rmprocs`,
shutdown), `WorkerState_exterminated` for one that died.
"""
@enum WorkerState WorkerState_terminated WorkerState_exterminated

"What `add_worker_starting_callback` callbacks receive as their manager."
struct LocalManager
    np::Int
end

const STARTING_CBS = Dict{Any,Any}()
const STARTED_CBS = Dict{Any,Any}()
const EXITING_CBS = Dict{Any,Any}()
const EXITED_CBS = Dict{Any,Any}()

function add_callback(f, key, dict)
    key === nothing && (key = gensym("callback"))
    haskey(dict, key) && throw(ArgumentError("A callback function with key '$(key)' already exists"))
    dict[key] = f
    key
end

"""
    add_worker_starting_callback(f; key=nothing) -> key

`f(manager, params)` runs on the head just before `addprocs` starts workers;
`params` is a `Dict{Symbol,Any}` of the `addprocs` keywords. An exception
stops `addprocs`.
"""
add_worker_starting_callback(f::Base.Callable; key = nothing) = add_callback(f, key, STARTING_CBS)
"`f(pid)` runs on the head for each worker `addprocs` added; an exception is rethrown by `addprocs`."
add_worker_started_callback(f::Base.Callable; key = nothing) = add_callback(f, key, STARTED_CBS)
"`f(pid)` runs on the head just before `rmprocs` removes worker `pid`."
add_worker_exiting_callback(f::Base.Callable; key = nothing) = add_callback(f, key, EXITING_CBS)
"""
`f(pid, state::WorkerState)` runs on the head when a worker has exited, asked
to (`WorkerState_terminated`) or not (`WorkerState_exterminated`). Exceptions
are caught and printed.
"""
add_worker_exited_callback(f::Base.Callable; key = nothing) = add_callback(f, key, EXITED_CBS)

remove_worker_starting_callback(key) = (delete!(STARTING_CBS, key); nothing)
remove_worker_started_callback(key) = (delete!(STARTED_CBS, key); nothing)
remove_worker_exiting_callback(key) = (delete!(EXITING_CBS, key); nothing)
remove_worker_exited_callback(key) = (delete!(EXITED_CBS, key); nothing)

"Runs the callbacks concurrently; rethrows the first failure unless `catch_all`."
function run_callbacks(what, cbs, args...; catch_all = false)
    isempty(cbs) && return
    # Compiled only when there are callbacks to run.
    Base.invokelatest(run_callbacks_now, what, cbs, args, catch_all)
end

function run_callbacks_now(what, cbs, args, catch_all)
    tasks = [(k, @async f(args...)) for (k, f) in collect(cbs)]
    for (k, t) in tasks
        try
            wait(t)
        catch err
            ex = err isa TaskFailedException ? err.task.exception : err
            if catch_all
                @error "Error in $what callback '$k'" exception = ex
            else
                throw(ex)
            end
        end
    end
end

# Called by the event loop for CLUSTER_EVENT_WORKER.
function on_lifecycle(pid::Int, what::Int32)
    if what == CAPI.CLUSTER_WORKER_EXITED || what == CAPI.CLUSTER_WORKER_DIED
        RT.dead[pid] = what == CAPI.CLUSTER_WORKER_EXITED ? :exited : :died
        forget_process(pid)
        state = what == CAPI.CLUSTER_WORKER_EXITED ? WorkerState_terminated : WorkerState_exterminated
        isempty(EXITED_CBS) || @async run_callbacks("worker-exited", EXITED_CBS, pid, state; catch_all = true)
    end
    nothing
end

# ------------------------------------------------------------- addprocs

const TOPOLOGY = Ref(:all_to_all)

"""
    addprocs(n=Sys.CPU_THREADS; exeflags=``, env=[], dir=pwd(), topology=:all_to_all,
             exename=<this julia>) -> Vector{Int}

Starts `n` Julia worker processes on this machine with the same Julia binary,
project and load path as this one, each running [`LibCluster.serve`](@ref),
and returns their ids once every one is ready. Only process 1 may add workers.

- `exeflags`: extra command-line flags for `julia` (a `Cmd`, string or vector).
- `env`: extra environment variables, as pairs or `"NAME=value"` strings.
- `dir`: the workers' working directory.
- `topology`: `:all_to_all` (the default: workers call each other,
  connecting on first use) or `:master_worker` (workers talk only to the
  head); fixed once workers exist.
"""
function addprocs(n::Integer = Sys.CPU_THREADS; exeflags = ``, env = [], dir::AbstractString = pwd(),
                  topology::Union{Symbol,Nothing} = nothing, exename = nothing, kwargs...)
    n >= 0 || throw(ArgumentError("addprocs: n must be >= 0"))
    check_head()
    if !isempty(STARTING_CBS)
        params = Dict{Symbol,Any}(:np => n, :exeflags => exeflags, :env => env, :dir => dir,
                                  :topology => something(topology, TOPOLOGY[]), :exename => exename)
        for (k, v) in kwargs
            params[k] = v
        end
        run_callbacks("worker-starting", STARTING_CBS, LocalManager(n), params)
    end
    n == 0 && return Int[]
    program, args = worker_command(exename, exeflags)
    launched = Ref(false)
    # Compile the call path while the workers start, if a core is free for it.
    (WARMED_UP[] || Sys.CPU_THREADS <= n) || @async warmup(until = () -> launched[])
    ids = try
        lock(RT.pid_lock) do
            topology === nothing || set_topology(topology)
            launch(n, program, args, worker_env(env), dir)
        end
    finally
        launched[] = true
    end
    if !isempty(STARTED_CBS)
        for id in ids
            run_callbacks("worker-started", STARTED_CBS, id)
        end
    end
    ids
end

"""
    addprocs_exec(n, cmd::Cmd; env=[], dir=pwd()) -> Vector{Int}

Starts `n` workers running `cmd`, any program that joins a libcluster
cluster (e.g. a C worker calling `cluster_init` and `cluster_serve`). Call
its functions with [`remotecall_fetch_raw`](@ref).
"""
function addprocs_exec(n::Integer, cmd::Cmd; env = [], dir::AbstractString = pwd())
    check_head()
    exec = collect(String, cmd.exec)
    isempty(exec) && throw(ArgumentError("addprocs_exec: empty command"))
    program = Sys.which(exec[1])
    program === nothing && (program = exec[1])
    lock(RT.pid_lock) do
        launch(n, program, exec[2:end], env_strings(env), dir)
    end
end

function check_head()
    context()
    RT.role === :head || error("Only process 1 can add and remove workers")
    nothing
end

function set_topology(t::Symbol)
    code = topology_code(t)
    if t !== TOPOLOGY[]
        if nprocs() > 1 || !isempty(RT.dead)
            error("Workers with Topology $(TOPOLOGY[]) already exist. Requested Topology $(t) cannot be set.")
        end
        CAPI.check(CAPI.cluster_set_topology(context(), code))
        TOPOLOGY[] = t
    end
end

function launch(n::Integer, program::AbstractString, args::Vector{String}, env::Vector{String}, dir::AbstractString)
    ctx = context()
    argv = Ptr{UInt8}[pointer(a) for a in args]
    push!(argv, C_NULL)
    envp = Ptr{UInt8}[pointer(e) for e in env]
    push!(envp, C_NULL)
    prog = String(program)
    d = String(dir)
    ids = zeros(Int32, n)
    opts = Ref(CAPI.LaunchOptions(pointer(prog), pointer(argv), pointer(envp), pointer(d)))
    GC.@preserve args env argv envp prog d ids opts begin
        try
            CAPI.blocking(CAPI.OP_ADDPROCS, ctx, n, Base.unsafe_convert(Ptr{CAPI.LaunchOptions}, opts), pointer(ids))
        catch err
            err isa CAPI.ClusterError || rethrow()
            err.status == CAPI.CLUSTER_ERR_NOT_HEAD && error("Only process 1 can add and remove workers")
            error("addprocs: " * err.msg)
        end
    end
    Int.(ids)
end

"The program and arguments that start a Julia worker."
function worker_command(exename, exeflags)
    exec = Base.julia_cmd().exec
    program = exename === nothing ? exec[1] : String(exename)
    args = String[exec[i] for i in 2:length(exec)]
    has_project = false
    for f in flag_strings(exeflags)
        push!(args, f)
        has_project |= startswith(f, "--project")
    end
    proj = Base.active_project()
    if proj !== nothing && !has_project
        push!(args, "--project=" * proj)
    end
    push!(args, "-e", WORKER_CODE)
    (program, args)
end

flag_strings(f::Cmd) = f.exec
flag_strings(f::AbstractString) = String[String(x) for x in Base.shell_split(f)]
flag_strings(f) = String[String(x) for x in f]

# What a Julia worker runs (finds this package even if the project lacks it).
# Its Main gets the Distributed names, as a Distributed worker's does, so
# that closures sent to it can call `myid()`, `remotecall_fetch`...
const WORKER_CODE = "let d = $(repr(CAPI.PKG_ROOT)); " *
                    "Base.find_package(\"LibCluster\") === nothing && push!(LOAD_PATH, d); end; " *
                    "using LibCluster, LibCluster.API; LibCluster.serve()"

function env_strings(env)
    out = String[]
    for e in env
        push!(out, e isa Pair ? string(first(e), "=", last(e)) : String(e))
    end
    out
end

"Environment for Julia workers: the caller's, plus what keeps them like this process."
function worker_env(env)
    out = env_strings(env)
    given(name) = any(e -> startswith(e, name * "="), out)
    sep = Sys.iswindows() ? ";" : ":"
    given("JULIA_LOAD_PATH") || push!(out, "JULIA_LOAD_PATH=" * join(LOAD_PATH, sep))
    given("JULIA_DEPOT_PATH") || push!(out, "JULIA_DEPOT_PATH=" * join(DEPOT_PATH, sep))
    given("LIBCLUSTER_PATH") || push!(out, "LIBCLUSTER_PATH=" * CAPI.LIB_PATH[])
    out
end

# -------------------------------------------------------------- rmprocs

"""
    rmprocs(pids...; waitfor=typemax(Int))

Stops the given workers: asks them to leave, then terminates, then kills
them, within `waitfor` seconds; raises an `ErrorException` if some are
still running then. Process 1 is never removed (a warning). With
`waitfor=0` it returns at once a `Task` doing the removal. Returns a `Task`
(already done) otherwise, as Distributed.
"""
function rmprocs(pids...; waitfor::Real = typemax(Int))
    check_head()
    ids = Int[p for p in vcat(pids...)]
    if waitfor == 0
        t = @async _rmprocs(ids, typemax(Int))
        yield()
        return t
    end
    _rmprocs(ids, waitfor)
    return @async nothing
end

function _rmprocs(ids::Vector{Int}, waitfor::Real)
    lock(RT.pid_lock) do
        targets = Int32[]
        for p in ids
            if p == 1
                @warn "rmprocs: process 1 not removed"
            elseif p in procs()
                push!(targets, p)
            end
        end
        isempty(targets) && return nothing
        for p in targets
            run_callbacks("worker-exiting", EXITING_CBS, Int(p); catch_all = true)
        end
        ms = waitfor >= typemax(Int64) / 1000 ? Int64(-1) : round(Int64, waitfor * 1000)
        GC.@preserve targets begin
            try
                CAPI.blocking(CAPI.OP_RMPROCS, context(), pointer(targets), length(targets), ms)
            catch err
                err isa CAPI.ClusterError || rethrow()
                if err.status == CAPI.CLUSTER_ERR_TIMEOUT
                    error("rmprocs: pids $(Int.(filter(p -> p in procs(), targets))) not terminated after $waitfor seconds.")
                end
                throw(library_exception(err))
            end
        end
        for p in targets
            RT.dead[Int(p)] = get(RT.dead, Int(p), :exited)
        end
        nothing
    end
end

# ------------------------------------------------------------- interrupt

"""
    interrupt(pids::AbstractVector=workers())
    interrupt(pids::Integer...)

Cancels the calls running on those processes: each fails with a
`RemoteException` wrapping an `InterruptException`. A task blocked in a
wait, `sleep` or I/O is interrupted at once; a computation that never yields
finishes first and its result is discarded. An idle process ignores it.
"""
function interrupt(pids::AbstractVector = workers())
    ids = Int32[p for p in pids]
    isempty(ids) && return nothing
    check_call(CAPI.cluster_interrupt(context(), ids, Csize_t(length(ids))))
    nothing
end
interrupt(pids::Integer...) = interrupt([pids...])
