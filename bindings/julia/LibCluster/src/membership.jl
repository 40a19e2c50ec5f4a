# Membership: process ids, adding and removing Julia workers, and the worker
# lifecycle callbacks (DistributedNext's names).

"""
    myid()

The id of this process: 1 on the head, 2, 3, ... on workers in the order they
were added. In a `PTools.pfork` child, its parent's id.
"""
function myid()
    IN_FORK_CHILD[] && return max(RT.myid, 1)
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

"Every live process => the host name it reported when it joined (`cluster_hosts`)."
function process_hosts()
    buf = CAPI.Buffer()
    CAPI.check(CAPI.cluster_hosts(context(), buf))
    Dict{Int,String}(p => String(b) for (p, b) in CAPI.parts(CAPI.take_buffer!(buf)))
end

"""
    procs(pid)

All processes on the same host as `pid` (by the host name each process
reported when it joined; Distributed compares bind addresses), sorted.
"""
function procs(pid::Integer)
    hosts = process_hosts()
    h = get(hosts, Int(pid), nothing)
    h === nothing && throw(ArgumentError("procs: no process with id $pid in the cluster"))
    sort!([p for (p, n) in hosts if n == h])
end

"`procs(pid)` without this process (DistributedNext)."
other_procs(pid::Integer) = filter(!=(myid()), procs(pid))

"The workers on the same host as `pid`, without this process (DistributedNext)."
other_workers(pid::Integer) = filter(p -> p != 1 && p != myid(), procs(pid))

# --------------------------------------------------------------- cookie

# Distributed's cookie length: a cookie set by `cluster_cookie(c)` is
# padded to it, as there.
const HDR_COOKIE_LEN = 16

# Set by `cluster_cookie(c)` before the cluster starts; `init` uses it.
const COOKIE = Ref{Union{Nothing,String}}(nothing)

"""
    cluster_cookie() -> String

The cluster's cookie: the secret its processes prove they hold before any
message is read (workers get it on their standard input).
"""
cluster_cookie() = CAPI.read_string(CAPI.cluster_cookie, context())

"""
    cluster_cookie(cookie) -> cookie

Sets the cookie of the cluster this process will start, as Distributed's
(ASCII, at most 16 characters, padded with spaces to 16), and returns it.
The library keeps a cluster's cookie for its whole life, so once this
process's cluster is running only its own cookie is accepted here.
"""
function cluster_cookie(cookie::AbstractString)
    @assert isascii(cookie)
    @assert length(cookie) <= HDR_COOKIE_LEN
    cookie = rpad(cookie, HDR_COOKIE_LEN)
    lock(INIT_LOCK) do
        if RT.ctx == C_NULL
            COOKIE[] = cookie
        elseif cookie != cluster_cookie()
            error("cluster_cookie: this process's cluster is running with another cookie; " *
                  "set it before the cluster starts (its first use, or LibCluster.init)")
        end
    end
    cookie
end

# ----------------------------------------------------------- lifecycle

"""
    WorkerState

The final state passed to worker-exited callbacks:
`WorkerState_terminated` for a worker that left when asked (`rmprocs`,
shutdown), `WorkerState_exterminated` for one that died.
"""
@enum WorkerState WorkerState_terminated WorkerState_exterminated

"""
    ClusterManager

What `add_worker_starting_callback` callbacks receive as their manager:
`LocalManager` (`addprocs(n)`), `SSHManager` (`addprocs(machines)`) or
[`SlurmManager`](@ref). LibCluster's own type, not Distributed's: it is
no interface to implement (workers are started by the library).
"""
abstract type ClusterManager end

"The manager of `addprocs(n)`: `np` workers on this machine."
struct LocalManager <: ClusterManager
    np::Int
end

const STARTING_CBS = Dict{Any,Any}()
const STARTED_CBS = Dict{Any,Any}()
const EXITING_CBS = Dict{Any,Any}()
const EXITED_CBS = Dict{Any,Any}()

# As DistributedNext: a callback that cannot take the arguments it will get
# is refused here, not when a worker has started.
function add_callback(f, key, dict, argtypes)
    key === nothing && (key = Symbol(gensym(), nameof(f)))
    if !hasmethod(f, argtypes)
        sig = "f(" * join(["::$(t)" for t in argtypes.parameters], ", ") * ")"
        throw(ArgumentError("Callback function is invalid, it must be able to be called with these argument types: $sig"))
    end
    haskey(dict, key) && throw(ArgumentError("A callback function with key '$(key)' already exists"))
    dict[key] = f
    key
end

"""
    add_worker_starting_callback(f; key=nothing) -> key

`f(manager, params)` runs on the head just before `addprocs` starts workers;
`params` is a `Dict{Symbol,Any}` of the `addprocs` keywords and defaults. A
failure stops `addprocs` (a `TaskFailedException`).
"""
add_worker_starting_callback(f::Base.Callable; key = nothing) =
    add_callback(f, key, STARTING_CBS, Tuple{ClusterManager,Dict{Symbol,Any}})
"""
    add_worker_started_callback(f; key=nothing) -> key

`f(pid)` runs on the head for each worker `addprocs` added, concurrently; a
failure is rethrown by `addprocs` as a `TaskFailedException` (the workers
are up). Callbacks still running after `callback_warning_interval` seconds
(an `addprocs` keyword, default 10) are named in a warning, and again at
each interval.
"""
add_worker_started_callback(f::Base.Callable; key = nothing) = add_callback(f, key, STARTED_CBS, Tuple{Int})
"""
    add_worker_exiting_callback(f; key=nothing) -> key

`f(pid)` runs on the head just before `rmprocs` removes worker `pid`.
`rmprocs` waits for these callbacks at most `callback_timeout` seconds (a
keyword, default 10), then warns and removes the workers anyway.
"""
add_worker_exiting_callback(f::Base.Callable; key = nothing) = add_callback(f, key, EXITING_CBS, Tuple{Int})
"""
    add_worker_exited_callback(f; key=nothing) -> key

`f(pid, state::WorkerState)` runs on the head when a worker has exited, asked
to (`WorkerState_terminated`) or not (`WorkerState_exterminated`). Exceptions
are caught and logged: for the workers `rmprocs` removed, by the task that
called `rmprocs` (before it returns), else by the task that noticed.
"""
add_worker_exited_callback(f::Base.Callable; key = nothing) =
    add_callback(f, key, EXITED_CBS, Tuple{Int,WorkerState})

remove_worker_starting_callback(key) = (delete!(STARTING_CBS, key); nothing)
remove_worker_started_callback(key) = (delete!(STARTED_CBS, key); nothing)
remove_worker_exiting_callback(key) = (delete!(EXITING_CBS, key); nothing)
remove_worker_exited_callback(key) = (delete!(EXITED_CBS, key); nothing)

"""
    run_callbacks(what, cbs, arglist; catch_all=false, warn_every=10, timeout=nothing)

Runs every callback of `cbs` on every argument tuple of `arglist`
concurrently and waits for them, as DistributedNext does: a warning names
those still running every `warn_every` seconds; after `timeout` seconds it
warns and stops waiting. A failure is rethrown as a `TaskFailedException`
unless `catch_all`, which logs it. Warnings and errors are logged from the
calling task (its logger sees them); an exception thrown into the wait
(an interrupt) propagates.
"""
function run_callbacks(what, cbs, arglist; catch_all = false, warn_every = 10, timeout = nothing)
    isempty(cbs) && return
    # Compiled only when there are callbacks to run.
    Base.invokelatest(run_callbacks_now, what, collect(cbs), arglist, catch_all, warn_every, timeout)
end

function run_callbacks_now(what, cbs, arglist, catch_all, warn_every, timeout)
    events = Channel{Symbol}(Inf)
    tasks = Tuple{Any,Task}[]
    for args in arglist, (k, f) in cbs
        t = Task(() -> try
                     f(args...)
                 finally
                     put!(events, :done)
                 end)
        schedule(t)
        push!(tasks, (k, t))
    end
    running() = join(["'$k'" for (k, t) in tasks if !istaskdone(t)], ", ")
    ticker = warn_every === nothing || warn_every <= 0 ? nothing :
             Timer(_ -> put!(events, :slow), warn_every; interval = warn_every)
    deadline = timeout === nothing ? nothing : Timer(_ -> put!(events, :timeout), timeout)
    left = length(tasks)
    try
        while left > 0
            ev = take!(events)
            if ev === :done
                left -= 1
            elseif ev === :slow
                r = running()
                isempty(r) || @warn "Waiting for these $what callbacks to finish: $r"
            else
                @warn "Some $what callbacks have not yet finished, continuing to remove workers anyway. " *
                      "These are the callbacks still running: $(running())"
                break
            end
        end
    finally
        ticker === nothing || close(ticker)
        deadline === nothing || close(deadline)
    end
    for (k, t) in tasks
        (istaskdone(t) && istaskfailed(t)) || continue
        catch_all || throw(TaskFailedException(t))
        @error "Error when running $what callback '$k'" exception = TaskFailedException(t)
    end
end

# The workers whose exited callbacks `rmprocs` runs itself, and those whose
# exited callbacks have run: they run once, from one place.
const REMOVING = Set{Int}()
const EXITED_RUN = Set{Int}()

# Called by the event loop for CLUSTER_EVENT_WORKER.
function on_lifecycle(pid::Int, what::Int32)
    if what == CAPI.CLUSTER_WORKER_EXITED || what == CAPI.CLUSTER_WORKER_DIED
        RT.dead[pid] = what == CAPI.CLUSTER_WORKER_EXITED ? :exited : :died
        forget_process(pid)
        if !(pid in REMOVING) && !(pid in EXITED_RUN)
            push!(EXITED_RUN, pid)
            state = what == CAPI.CLUSTER_WORKER_EXITED ? WorkerState_terminated : WorkerState_exterminated
            isempty(EXITED_CBS) || @async run_callbacks("worker-exited", EXITED_CBS, [(pid, state)]; catch_all = true)
        end
    end
    nothing
end

# ------------------------------------------------------------- addprocs

# The topology as Distributed sees it: of the workers running, changed only
# while there are none (`nprocs() == 1`). The library fixes its own once it
# has had workers (`cluster_set_topology` refuses from then on), so it is
# left all_to_all unless `init` chose otherwise, and a master_worker asked of
# `addprocs` is kept by LibCluster's workers themselves (see ENFORCE_MASTER_WORKER).
const TOPOLOGY = Ref(:all_to_all)
const DEFAULT_TOPOLOGY = Ref(:all_to_all)   # a plain addprocs's: init's
const LIBRARY_TOPOLOGY = Ref(:all_to_all)   # what the library enforces
const LAZY = Ref{Union{Bool,Nothing}}(nothing)

"""
    addprocs(n=Sys.CPU_THREADS; exeflags=``, env=[], dir=pwd(), topology=:all_to_all,
             lazy=true, enable_threaded_blas=false, callback_warning_interval=10,
             exename=<this julia>) -> Vector{Int}

Starts `n` Julia worker processes on this machine with the same Julia binary,
project and load path as this one, each running [`LibCluster.serve`](@ref),
and returns their ids once every one is ready. Only process 1 may add workers.

- `exeflags`: extra command-line flags for `julia` (a `Cmd`, string or vector).
- `env`: extra environment variables, as pairs or `"NAME=value"` strings.
- `dir`: the workers' working directory.
- `topology`: `:all_to_all` (workers call each other, connecting on first
  use) or `:master_worker` (workers talk only to the head), a Symbol or a
  String. As in Distributed it can change only while no worker runs; the
  default is `:all_to_all`, or what `LibCluster.init(topology=...)` chose.
- `lazy`: with `:all_to_all`, `false` connects every new worker to the
  others now instead of on first use; as in Distributed it cannot change
  while workers run.
- `enable_threaded_blas`: `false` (as Distributed) runs the workers' BLAS
  on one thread.
- `callback_warning_interval`: see `add_worker_started_callback`.
"""
function addprocs(n::Integer = Sys.CPU_THREADS; exeflags = ``, env = [], dir::AbstractString = pwd(),
                  topology = nothing, lazy::Bool = true, enable_threaded_blas::Bool = false,
                  callback_warning_interval::Real = 10, exename = nothing, kwargs...)
    n >= 0 || throw(ArgumentError("addprocs: n must be >= 0"))
    check_head()
    topo = topology === nothing ? DEFAULT_TOPOLOGY[] : Symbol(topology)
    if !isempty(STARTING_CBS)
        params = Dict{Symbol,Any}(:np => n, :exeflags => exeflags, :env => env, :dir => dir,
                                  :topology => topo, :lazy => lazy, :enable_threaded_blas => enable_threaded_blas,
                                  :callback_warning_interval => callback_warning_interval, :exename => exename)
        for (k, v) in kwargs
            params[k] = v
        end
        run_callbacks("worker-starting", STARTING_CBS, [(LocalManager(n), params)];
                      warn_every = callback_warning_interval)
    end
    n == 0 && return Int[]
    program, args = worker_command(exename, exeflags)
    # Compile the call path while the workers start, if a core is free for it.
    start_workers(topo, lazy, callback_warning_interval; warm = Sys.CPU_THREADS > n) do
        launch(n, program, args, worker_env(env; threaded_blas = enable_threaded_blas), dir)
    end
end

"""
    start_workers(launch, topology, lazy, callback_warning_interval; warm) -> ids

What every `addprocs` form does around its launch: under the process lock,
Distributed's topology checks, `launch()` (which returns the new ids),
the connections of a `lazy = false` cluster; then the worker-started
callbacks. With `warm`, the call path compiles meanwhile.
"""
function start_workers(launch::F, topo::Symbol, lazy::Bool, callback_warning_interval::Real; warm::Bool = true) where {F}
    launched = Ref(false)
    (WARMED_UP[] || !warm) || @async warmup(until = () -> launched[])
    ids = try
        lock(RT.pid_lock) do
            eager = set_topology(topo, lazy)
            ids = launch()
            eager && connect_workers(ids)
            ids
        end
    finally
        launched[] = true
    end
    run_callbacks("worker-started", STARTED_CBS, [(id,) for id in ids]; warn_every = callback_warning_interval)
    ids
end

"""
Applies Distributed's checks of `topology` and `lazy` (`addprocs_locked`):
either may change only while no worker runs. Returns whether the new
workers are to be connected to the others at once (`lazy = false`).
"""
function set_topology(t::Symbol, lazy::Bool = true)
    topology_code(t)
    if t !== TOPOLOGY[]
        nprocs() == 1 ||
            error("Workers with Topology $(TOPOLOGY[]) already exist. Requested Topology $(t) cannot be set.")
        if t === :all_to_all && LIBRARY_TOPOLOGY[] === :master_worker
            st = CAPI.cluster_set_topology(context(), topology_code(t))
            st == CAPI.CLUSTER_OK || error(
                "Requested Topology all_to_all cannot be set: this cluster was started with topology " *
                "master_worker (LibCluster.init) and libcluster keeps it once workers were added " *
                "($(CAPI.last_error(st).msg))")
            LIBRARY_TOPOLOGY[] = t
        end
        TOPOLOGY[] = t
    end
    t === :all_to_all || (lazy = false)
    if LAZY[] === nothing || nprocs() == 1
        LAZY[] = lazy
    elseif LAZY[] != lazy
        throw(ArgumentError(string("Active workers with lazy=", LAZY[], ". Cannot set lazy=", lazy)))
    end
    t === :all_to_all && !lazy
end

"Connects each of the new workers `ids` to every worker before it (`lazy = false`)."
function connect_workers(ids::Vector{Int})
    all = workers()
    futs = [remotecall(connect_to, id, Int[p for p in all if p < id]) for id in ids]
    foreach(wait, futs)
end

"Runs on a worker: a call to each of `pids` opens its connection now."
function connect_to(pids::Vector{Int})
    @sync for p in pids
        @async remotecall_fetch(myid, p)
    end
    nothing
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

function launch(n::Integer, program::AbstractString, args::Vector{String}, env::Vector{String}, dir::AbstractString)
    ctx = context()
    argv = Ptr{UInt8}[pointer(a) for a in args]
    push!(argv, C_NULL)
    envp = Ptr{UInt8}[pointer(e) for e in env]
    push!(envp, C_NULL)
    prog = String(program)
    d = String(dir)
    opts = Ref(CAPI.LaunchOptions(pointer(prog), pointer(argv), pointer(envp), pointer(d)))
    # The options are copied before cluster_addprocs_async returns.
    ids = GC.@preserve args env argv envp prog d opts await_ids(out -> CAPI.cluster_addprocs_async(ctx, Csize_t(n), opts, out))
    length(ids) == n || error("addprocs: the library returned $(length(ids)) ids for $n")
    ids
end

"""
    await_ids(start) -> Vector{Int}

Starts an addprocs future with `start(out) -> status` and waits for it in
this task (the others run): its value is the new ids. A failure is an
`ErrorException` with the library's message.
"""
function await_ids(start::F) where {F}
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = start(out)
    # A dynamic call: the code that waits compiles once the workers start,
    # not before (compiling a method compiles its static callees first).
    Base.invokelatest(await_ids, st, out[])::Vector{Int}
end

"Waits for the addprocs future `h` its start returned with status `st`."
function await_ids(st::Int32, h::Ptr{Cvoid})
    bytes = try
        CAPI.check(st)
        await_op(h)
    catch err
        err isa CAPI.ClusterError || rethrow()
        err.status == CAPI.CLUSTER_ERR_NOT_HEAD && error("Only process 1 can add and remove workers")
        error("addprocs: " * err.msg)
    end
    Int[ltoh(x) for x in reinterpret(Int32, bytes)]
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

"""
Environment for Julia workers: the caller's, plus what keeps them like this
process, and what `serve` applies there: one BLAS thread unless
`threaded_blas`, a master_worker topology the library does not enforce
(`TOPOLOGY`), this head's `max_message_bytes`.
"""
function worker_env(env; threaded_blas::Bool = false)
    out = env_strings(env)
    given(name) = any(e -> startswith(e, name * "="), out)
    sep = Sys.iswindows() ? ";" : ":"
    given("JULIA_LOAD_PATH") || push!(out, "JULIA_LOAD_PATH=" * join(LOAD_PATH, sep))
    given("JULIA_DEPOT_PATH") || push!(out, "JULIA_DEPOT_PATH=" * join(DEPOT_PATH, sep))
    given("LIBCLUSTER_PATH") || push!(out, "LIBCLUSTER_PATH=" * CAPI.LIB_PATH[])
    threaded_blas && push!(out, "LIBCLUSTER_JULIA_THREADED_BLAS=1")
    if TOPOLOGY[] === :master_worker && LIBRARY_TOPOLOGY[] !== :master_worker
        push!(out, "LIBCLUSTER_JULIA_TOPOLOGY=master_worker")
    end
    MAX_MESSAGE[] === nothing || push!(out, "LIBCLUSTER_JULIA_MAX_MESSAGE_BYTES=$(MAX_MESSAGE[])")
    out
end

# -------------------------------------------------------------- rmprocs

"""
    rmprocs(pids...; waitfor=typemax(Int), callback_timeout=10)

Stops the given workers: runs the worker-exiting callbacks (waiting for them
at most `callback_timeout` seconds, as DistributedNext), asks the workers to
leave, then terminates, then kills them, within `waitfor` seconds; raises an
`ErrorException` if some are still running then. The worker-exited
callbacks of the removed workers run before it returns. Process 1 is never
removed (a warning). With `waitfor=0` it returns at once a `Task` doing the
removal. Returns a `Task` (already done) otherwise, as Distributed.
"""
function rmprocs(pids...; waitfor::Real = typemax(Int), callback_timeout::Real = 10)
    check_head()
    ids = Int[p for p in vcat(pids...)]
    if waitfor == 0
        t = @async _rmprocs(ids, typemax(Int), callback_timeout)
        yield()
        return t
    end
    _rmprocs(ids, waitfor, callback_timeout)
    return @async nothing
end

function _rmprocs(ids::Vector{Int}, waitfor::Real, callback_timeout::Real)
    gone = Tuple{Int,WorkerState}[]
    try
        lock(RT.pid_lock) do
            remove_locked(ids, waitfor, callback_timeout, gone)
        end
    finally
        # Out of the lock (a callback may add workers), in this task: its
        # logger sees the failures.
        run_callbacks("worker-exited", EXITED_CBS, gone; catch_all = true)
    end
    nothing
end

function remove_locked(ids::Vector{Int}, waitfor::Real, callback_timeout::Real, gone)
    targets = Int32[]
    for p in ids
        if p == 1
            @warn "rmprocs: process 1 not removed"
        elseif p in procs()
            push!(targets, p)
        end
    end
    isempty(targets) && return
    run_callbacks("worker-exiting", EXITING_CBS, [(Int(p),) for p in targets];
                  catch_all = true, warn_every = nothing, timeout = callback_timeout)
    ms = waitfor >= typemax(Int64) / 1000 ? Int64(-1) : round(Int64, waitfor * 1000)
    union!(REMOVING, targets)
    try
        try
            # The ids are read before cluster_rmprocs_async returns; this
            # task waits for the future, the others run.
            run_op(out -> CAPI.cluster_rmprocs_async(context(), targets, Csize_t(length(targets)), ms, out))
        catch err
            err isa CAPI.ClusterError || rethrow()
            if err.status == CAPI.CLUSTER_ERR_TIMEOUT
                error("rmprocs: pids $(Int.(filter(p -> p in procs(), targets))) not terminated after $waitfor seconds.")
            end
            throw(library_exception(err))
        end
    finally
        live = procs()
        for p in targets
            (p in live || p in EXITED_RUN) && continue
            push!(EXITED_RUN, p)
            RT.dead[Int(p)] = get(RT.dead, Int(p), :exited)
            push!(gone, (Int(p), RT.dead[Int(p)] === :died ? WorkerState_exterminated : WorkerState_terminated))
        end
        setdiff!(REMOVING, targets)
    end
    nothing
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
